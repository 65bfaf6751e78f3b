"""Board discovery, pure part: candidates, the labgrid-style matcher, the hotplug tracker.

Fed with udev data shaped like real dumps (tests/drivers/udev_boards.json): a CP2102N bridge,
a TI XDS110 LaunchPad with two CDC ACM ttys, an nRF52840 dongle running an OpenThread RCP,
a Raspberry Pi spidev node and an on-board 16550 UART that is not a radio.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.discover import (
    KNOWN_USB_RADIOS,
    BoardAppeared,
    BoardCandidate,
    BoardGone,
    BoardMatch,
    HotplugTracker,
    InvalidMatch,
    NoBoardMatched,
    SeveralBoardsMatched,
    UdevNode,
    candidate_from_udev,
    format_boards,
    suggest_match,
    url_with_device,
)
from drivers.transceiver import RadioError

FIXTURES = json.loads((Path(__file__).with_name("udev_boards.json")).read_text())["boards"]
XDS_SERIAL = "L4100A7B"
CP_SERIAL = "9a4c3f1e2b7de81190b3a1c2d4e5f607"


def _node(data: dict[str, Any]) -> UdevNode:
    return UdevNode(data["sys_path"], data["subsystem"], data["properties"], data["attributes"])


def board(name: str, *, with_ancestors: bool = True) -> BoardCandidate:
    entry = FIXTURES[name]
    ancestors = [_node(a) for a in entry["ancestors"]] if with_ancestors else []
    return candidate_from_udev(_node(entry["device"]), ancestors)


def everything() -> list[BoardCandidate]:
    names = ["cp210x", "xds110_if00", "xds110_if03", "nrf52840_dongle", "rpi_spidev0_0", "ttyS0"]
    return [board(n) for n in names]


# --- candidates -------------------------------------------------------------------------------


def test_cp210x_candidate_carries_what_identifies_it() -> None:
    c = board("cp210x")
    assert c.device_node == "/dev/ttyUSB0"
    assert c.subsystem == "tty"
    assert (c.vendor_id, c.model_id) == ("10c4", "ea60")
    assert c.vendor == "Silicon Labs" and c.model == "CP210x UART Bridge"
    assert c.serial == CP_SERIAL
    assert c.id_path == "pci-0000:00:14.0-usb-0:2:1.0"
    assert c.interface_num == "00" and c.driver == "cp210x"
    assert c.by_id == (
        f"/dev/serial/by-id/usb-Silicon_Labs_CP2102N_USB_to_UART_Bridge_Controller_{CP_SERIAL}"
        "-if00-port0",
    )
    assert c.by_path == ("/dev/serial/by-path/pci-0000:00:14.0-usb-0:2:1.0-port0",)
    assert c.stable_path() == c.by_id[0]
    assert c.properties["ID_USB_INTERFACES"] == ":ff0000:"
    assert c.is_board
    known = c.known_radio()
    assert known is not None and "CP210x" in known.label


def test_without_udev_database_identity_comes_from_sysfs_attributes() -> None:
    """A container with /sys and /dev but no /run/udev still finds the board by serial."""
    c = board("cp210x_no_udev_db")
    assert c.device_node == "/dev/ttyUSB0"  # kernel DEVNAME is relative
    assert c.serial == CP_SERIAL and (c.vendor_id, c.model_id) == ("10c4", "ea60")
    assert c.interface_num == "00" and c.driver == "cp210x"
    assert c.vendor == "Silicon Labs" and c.id_path is None and c.by_id == ()
    assert c.is_board
    assert BoardMatch({"ID_SERIAL_SHORT": CP_SERIAL}).select([c]) is c
    assert not BoardMatch({"ID_PATH": "*"}).matches(c)  # nothing derives ID_PATH


def test_xds110_has_two_ttys_and_only_if00_is_the_radio_uart() -> None:
    if00, if03 = board("xds110_if00"), board("xds110_if03")
    assert (if00.device_node, if03.device_node) == ("/dev/ttyACM0", "/dev/ttyACM1")
    assert if00.serial == if03.serial == XDS_SERIAL
    assert (if00.interface_num, if03.interface_num) == ("00", "03")
    assert if00.driver == if03.driver == "cdc_acm"
    assert if00.vendor == "Texas Instruments, Inc."  # hwdb name first
    assert if00.model == "XDS110 (03.00.00.26) Embed with CMSIS-DAP"  # ID_MODEL_ENC unescaped
    assert if00.known_radio() is not None
    assert if03.known_radio() is None


def test_spidev_is_a_candidate_and_an_onboard_uart_is_not() -> None:
    spi, uart = board("rpi_spidev0_0"), board("ttyS0")
    assert spi.is_board and spi.subsystem == "spidev" and spi.driver == "spidev"
    assert spi.vendor_id is None and spi.stable_path() == "/dev/spidev0.0"
    assert not uart.is_board


def test_remove_event_without_ancestors_is_still_a_usb_tty() -> None:
    gone = board("nrf52840_dongle", with_ancestors=False)
    assert gone.is_board  # ID_BUS=usb from the event's properties
    bare = replace(gone, properties={"DEVNAME": "/dev/ttyACM2"})
    assert bare.is_board  # the kernel name alone says USB


def test_device_without_devname_is_a_typed_error() -> None:
    with pytest.raises(RadioError, match="no DEVNAME"):
        candidate_from_udev(UdevNode("/sys/devices/virtual/tty/x", "tty", {}))


def test_known_radio_table_has_unique_lowercase_hex_ids() -> None:
    keys = [(r.vendor_id, r.model_id, r.interface) for r in KNOWN_USB_RADIOS]
    assert len(keys) == len(set(keys))
    for vendor, model, _ in keys:
        assert len(vendor) == len(model) == 4
        int(vendor, 16), int(model, 16)
        assert vendor == vendor.lower() and model == model.lower()


# --- the matcher ------------------------------------------------------------------------------


def test_serial_selects_the_cp210x() -> None:
    assert BoardMatch({"ID_SERIAL_SHORT": CP_SERIAL}).select(everything()).device_node == (
        "/dev/ttyUSB0"
    )


def test_xds110_serial_alone_is_ambiguous_and_lists_both_ttys() -> None:
    match = BoardMatch({"ID_SERIAL_SHORT": XDS_SERIAL})
    with pytest.raises(SeveralBoardsMatched) as info:
        match.select(everything())
    text = str(info.value)
    assert "/dev/ttyACM0" in text and "/dev/ttyACM1" in text and "ID_USB_INTERFACE_NUM" in text
    assert [c.device_node for c in info.value.matched] == ["/dev/ttyACM0", "/dev/ttyACM1"]


def test_interface_number_narrows_the_xds110() -> None:
    match = BoardMatch({"ID_SERIAL_SHORT": XDS_SERIAL, "ID_USB_INTERFACE_NUM": "00"})
    assert match.select(everything()).device_node == "/dev/ttyACM0"


def test_at_key_matches_on_an_ancestor_not_on_the_device() -> None:
    port = "pci-0000:00:14.0-usb-0:1.3"  # the USB device's port path (behind a hub)
    on_parent = BoardMatch({"@ID_PATH": port})
    assert [c.device_node for c in on_parent.match(everything())] == [
        "/dev/ttyACM0",
        "/dev/ttyACM1",
    ]
    assert BoardMatch({"ID_PATH": port}).match(everything()) == []  # tty's own is port:1.x
    assert [c.device_node for c in BoardMatch({"ID_PATH": port + ":1.3"}).match(everything())] == [
        "/dev/ttyACM1"
    ]
    # sysfs attributes work too, as labgrid looks them up after properties
    nrf = BoardMatch({"@idVendor": "1915", "@product": "nRF528xx*"}).select(everything())
    assert nrf.device_node == "/dev/ttyACM2"


def test_globs_and_missing_keys() -> None:
    assert BoardMatch({"ID_SERIAL_SHORT": "L41*"}).match(everything())[0].serial == XDS_SERIAL
    assert BoardMatch({"ID_VENDOR_ID": "1915", "ID_MODEL_ID": "ca[f]e"}).select(everything())
    # a key the device lacks never matches, not even "*": the spidev node has no serial
    serials = BoardMatch({"ID_SERIAL_SHORT": "*"}).match(everything())
    assert "/dev/spidev0.0" not in [c.device_node for c in serials]
    assert len(serials) == 4
    # globs are case-sensitive, as udev's own are
    assert BoardMatch({"ID_SERIAL_SHORT": "l4100a7b"}).match(everything()) == []


def test_no_match_lists_what_was_seen_but_not_non_boards() -> None:
    with pytest.raises(NoBoardMatched) as info:
        BoardMatch({"ID_SERIAL_SHORT": "NOPE"}).select(everything())
    text = str(info.value)
    assert "ID_SERIAL_SHORT=NOPE" in text
    for node in ("/dev/ttyUSB0", "/dev/ttyACM0", "/dev/ttyACM1", "/dev/ttyACM2", "/dev/spidev0.0"):
        assert node in text
    assert "/dev/ttyS0" not in text
    assert len(info.value.seen) == 5
    with pytest.raises(NoBoardMatched, match="no USB serial or spidev"):
        BoardMatch({"ID_SERIAL_SHORT": "NOPE"}).select([])


def test_a_non_board_is_never_selected_even_when_named() -> None:
    with pytest.raises(NoBoardMatched):
        BoardMatch({"DEVNAME": "/dev/ttyS0"}).select(everything())


def test_empty_match_selects_the_only_board() -> None:
    assert BoardMatch({}).select([board("nrf52840_dongle"), board("ttyS0")]).serial
    with pytest.raises(SeveralBoardsMatched):
        BoardMatch({}).select(everything())


@pytest.mark.parametrize(
    ("properties", "message"),
    [
        ({"ID_USB_INTERFACE_NUM": 0}, "must be a string"),
        ({"": "x"}, "non-empty"),
        ({"@": "x"}, "non-empty"),
        (["ID_SERIAL_SHORT"], "mapping"),
    ],
)
def test_bad_matches_are_typed_errors(properties: Any, message: str) -> None:
    with pytest.raises(InvalidMatch, match=message):
        BoardMatch(properties)


def test_match_equality_and_text() -> None:
    a = BoardMatch({"ID_SERIAL_SHORT": "X", "@ID_PATH": "p"})
    assert a == BoardMatch({"@ID_PATH": "p", "ID_SERIAL_SHORT": "X"})
    assert hash(a) == hash(BoardMatch({"@ID_PATH": "p", "ID_SERIAL_SHORT": "X"}))
    assert str(a) == "{ID_SERIAL_SHORT=X, @ID_PATH=p}"


def test_suggested_match_selects_exactly_that_board() -> None:
    boards = [c for c in everything() if c.is_board]
    for c in boards:
        assert BoardMatch(suggest_match(c, boards)).select(boards) is c
    xds = board("xds110_if00")
    assert suggest_match(xds, boards) == {
        "ID_SERIAL_SHORT": XDS_SERIAL,
        "ID_USB_INTERFACE_NUM": "00",
    }
    assert suggest_match(board("cp210x"), boards) == {"ID_SERIAL_SHORT": CP_SERIAL}
    assert suggest_match(board("rpi_spidev0_0"), boards) == {"DEVNAME": "/dev/spidev0.0"}


def test_format_boards_names_each_board_and_its_match() -> None:
    boards = [c for c in everything() if c.is_board]
    text = format_boards(boards)
    assert "TI XDS110" in text and "ID_SERIAL_SHORT: 'L4100A7B'" in text
    assert "/dev/serial/by-id/usb-Nordic_Semiconductor" in text
    assert format_boards([]) == "no USB serial or spidev boards found"


def test_url_with_device_keeps_options() -> None:
    url = "spinel+uart:///dev/ttyACM0?baudrate=921600&rtscts=1"
    assert url_with_device(url, "/dev/ttyACM3") == (
        "spinel+uart:///dev/ttyACM3?baudrate=921600&rtscts=1"
    )
    assert url_with_device("spinel+spi:///dev/x", "/dev/spidev0.0") == "spinel+spi:///dev/spidev0.0"
    with pytest.raises(InvalidMatch, match="spinel\\+pty"):
        url_with_device("spinel+pty://?seed=1", "/dev/ttyACM0")


# --- hotplug ----------------------------------------------------------------------------------


def _replugged_as(c: BoardCandidate, tty: str) -> BoardCandidate:
    """The same board back on the same port with a new tty number (old fd still open)."""
    old = c.device_node.rsplit("/", 1)[1]
    props = {k: v.replace(old, tty) for k, v in c.properties.items()}
    return replace(
        c, device_node=f"/dev/{tty}", sys_path=c.sys_path.replace(old, tty), properties=props
    )


def test_seed_reports_present_board_and_replug_reattaches() -> None:
    tracker = HotplugTracker(
        BoardMatch({"ID_SERIAL_SHORT": XDS_SERIAL, "ID_USB_INTERFACE_NUM": "00"})
    )
    events = tracker.seed(everything())
    assert events == [BoardAppeared(board("xds110_if00"))]
    assert events[0].device_node == "/dev/ttyACM0"
    assert tracker.current == board("xds110_if00")

    # unplug: the remove event has no ancestors any more; tracked by sysfs path
    assert tracker.feed("remove", board("xds110_if03", with_ancestors=False)) == []
    gone = tracker.feed("remove", board("xds110_if00", with_ancestors=False))
    assert gone == [BoardGone(board("xds110_if00"))] and gone[0].device_node == "/dev/ttyACM0"
    assert tracker.current is None and tracker.present == ()
    assert tracker.feed("remove", board("xds110_if00", with_ancestors=False)) == []

    # plug back: the agent still held ttyACM0, so the kernel hands out ttyACM3
    back = _replugged_as(board("xds110_if00"), "ttyACM3")
    assert tracker.feed("add", _replugged_as(board("xds110_if03"), "ttyACM4")) == []
    appeared = tracker.feed("add", back)
    assert appeared == [BoardAppeared(back)] and appeared[0].device_node == "/dev/ttyACM3"
    assert tracker.current is back


def test_at_id_path_match_survives_a_replug() -> None:
    tracker = HotplugTracker(BoardMatch({"@ID_PATH": "pci-0000:00:14.0-usb-0:4"}))
    assert tracker.seed(everything()) == [BoardAppeared(board("nrf52840_dongle"))]
    assert tracker.feed("remove", board("nrf52840_dongle", with_ancestors=False)) == [
        BoardGone(board("nrf52840_dongle"))
    ]
    assert tracker.feed("add", board("nrf52840_dongle")) == [
        BoardAppeared(board("nrf52840_dongle"))
    ]


def test_second_matching_board_is_reported_ambiguous() -> None:
    tracker = HotplugTracker(BoardMatch({"ID_VENDOR_ID": "0451"}))
    first = tracker.feed("add", board("xds110_if00"))
    second = tracker.feed("add", board("xds110_if03"))
    assert first == [BoardAppeared(board("xds110_if00"), ambiguous=False)]
    assert second == [BoardAppeared(board("xds110_if03"), ambiguous=True)]
    assert tracker.current is None and len(tracker.present) == 2
    tracker.feed("remove", board("xds110_if03", with_ancestors=False))
    assert tracker.current == board("xds110_if00")


def test_change_move_and_unknown_actions() -> None:
    cp = board("cp210x")
    tracker = HotplugTracker(BoardMatch({"ID_SERIAL_SHORT": CP_SERIAL}))
    assert tracker.feed("online", cp) == []
    assert tracker.feed("change", cp) == [BoardAppeared(cp)]  # first seen on change: appeared
    assert tracker.feed("change", cp) == []  # refresh only
    relabelled = replace(cp, properties={**cp.properties, "ID_SERIAL_SHORT": "other"})
    assert tracker.feed("change", relabelled) == [BoardGone(cp)]  # no longer fits
    assert tracker.feed("add", cp) == [BoardAppeared(cp)]
    moved_path = cp.sys_path.replace("ttyUSB0", "ttyUSB7")
    moved = replace(
        cp,
        sys_path=moved_path,
        device_node="/dev/ttyUSB7",
        properties={**cp.properties, "DEVPATH_OLD": cp.sys_path.removeprefix("/sys")},
    )
    assert tracker.feed("move", moved) == [BoardGone(cp), BoardAppeared(moved)]
    assert tracker.current is moved
    assert tracker.feed("unbind", moved) == [BoardGone(moved)]


def test_a_non_board_never_appears_even_for_an_empty_match() -> None:
    tracker = HotplugTracker(BoardMatch({}))
    assert tracker.feed("add", board("ttyS0")) == []
    assert tracker.feed("add", board("rpi_spidev0_0")) == [BoardAppeared(board("rpi_spidev0_0"))]


_NAMES = ["cp210x", "xds110_if00", "xds110_if03", "nrf52840_dongle", "rpi_spidev0_0", "ttyS0"]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["add", "remove", "change"]), st.sampled_from(_NAMES))),
    st.sampled_from(
        [{"ID_SERIAL_SHORT": XDS_SERIAL}, {"@ID_PATH": "pci-0000:00:14.0-usb-0:*"}, {}]
    ),
)
def test_tracker_agrees_with_a_model_of_what_is_plugged_in(
    script: list[tuple[str, str]], properties: dict[str, str]
) -> None:
    match = BoardMatch(properties)
    tracker = HotplugTracker(match)
    plugged: set[str] = set()
    for action, name in script:
        candidate = board(name, with_ancestors=action != "remove")
        before = set(c.sys_path for c in tracker.present)
        events = tracker.feed(action, candidate)
        if action == "remove":
            plugged.discard(name)
        elif match.matches(candidate) and candidate.is_board:
            plugged.add(name)
        after = {c.sys_path for c in tracker.present}
        assert after == {board(n).sys_path for n in plugged}
        appeared = {e.candidate.sys_path for e in events if isinstance(e, BoardAppeared)}
        went = {e.candidate.sys_path for e in events if isinstance(e, BoardGone)}
        assert appeared == after - before and went == before - after
