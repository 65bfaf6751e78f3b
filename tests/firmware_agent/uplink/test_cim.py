"""CIM MeterStatusData codec: the seed 003 template (as printed, typographic quotes and all) filled
in and parsed, our messages round-tripped, errors that name the element, hostile XML refused,
big replies split under the byte cap with every meter exactly once."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_agent.uplink import cim

# The seed 003 document's message format, verbatim ("AMI Request and Response messages").
SEED_TEMPLATE = """<?xml version=\u201d1.0\u201d encoding=\u201dUTF-8\u201d?>
<Message>
<Header>
<Verb>\u2026</Verb>
<Noun>\u2026</Noun>
<Timestamp>\u2026</Timestamp>
[<RespondByTimestamp>\u2026</RespondByTimestamp>]
[<CorrelationID>\u2026</CorrelationID>]
</Header>
[<Reply>
<ReplyCode>\u2026</ReplyCode>
</Reply>]
<Payload>
<EndDeviceEvents>
[<EndDeviceEvent>
<category>\u2026</category>
<createdDateTime>\u2026</createdDateTime>
[<description>\u2026</description>]
<Assets>
[<mRID>\u2026</mRID>
<mRID\u2026/> \u2026]
</Assets>
</EndDeviceEvent>
<EndDeviceEvent\u2026/> \u2026]
</EndDeviceEvents>
</Payload>
</Message>
"""


def fill(template: str, values: dict[str, str], *, drop: tuple[str, ...] = ()) -> bytes:
    """The seed template with its optional parts kept (brackets removed) or dropped, its
    repetition markers removed, and each ``…`` replaced by the value for that element."""
    lines = []
    for line in template.splitlines():
        if re.fullmatch(r"<(mRID|EndDeviceEvent)\u2026/> \u2026\]", line.strip()):
            continue
        if any(f"<{name}" in line or f"</{name}>" in line for name in drop):
            continue
        line = line.replace("[<", "<").replace(">]", ">")
        m = re.search(r"<(\w+)>\u2026</\1>", line)
        if m:
            line = line.replace("\u2026", values[m.group(1)])
        lines.append(line)
    return "\n".join(lines).encode("utf-8")


GET_VALUES = {
    "Verb": "GET",
    "Noun": "MeterStatusData",
    "Timestamp": "2010-04-18T13:31:23Z",
    "RespondByTimestamp": "2010-04-18T13:36:23Z",
    "CorrelationID": "4711",
    "category": "0.0.0.0",
    "createdDateTime": "2010-04-18T13:31:23Z",
    "mRID": "MTR-0001",
}


def test_the_seeds_get_template_parses_as_printed() -> None:
    data = fill(SEED_TEMPLATE, GET_VALUES, drop=("Reply", "description"))
    assert "\u201d".encode() in data  # the seed's typographic quotes are still in there
    req = cim.parse_get(data)
    assert req.correlation_id == "4711"
    assert req.meters == ("MTR-0001",)
    assert req.category == "0.0.0.0"
    assert req.timestamp == 1271597483.0
    assert req.respond_by == 1271597483.0 + 300


def test_the_seeds_reply_template_parses_with_every_element() -> None:
    values = dict(GET_VALUES, Verb="REPLY", ReplyCode="0.0", category="3.26.0.47",
                  description="power down")  # fmt: skip
    msg = cim.parse_message(fill(SEED_TEMPLATE, values))
    assert (msg.verb, msg.noun, msg.reply_code, msg.correlation_id) == (
        "REPLY", "MeterStatusData", "0.0", "4711",
    )  # fmt: skip
    assert msg.events == (
        cim.EndDeviceEvent("3.26.0.47", "2010-04-18T13:31:23Z", ("MTR-0001",), "power down"),
    )
    # an unsolicited REPLY: no CorrelationID, no RespondByTimestamp
    bare = cim.parse_message(fill(SEED_TEMPLATE, values, drop=("CorrelationID", "RespondBy")))
    assert bare.correlation_id is None and bare.respond_by is None


def test_our_reply_round_trips_and_keeps_the_seeds_element_order() -> None:
    events = (
        cim.EndDeviceEvent("3.26.0.47", "2024-05-01T07:00:00Z", ("A", "B"), "power down"),
        cim.EndDeviceEvent("3.26.0.216", "2024-05-01T07:00:00Z", ("C",), "power up"),
        cim.EndDeviceEvent("0.0.0.0", "2024-05-01T07:00:00Z", ("D",), cim.RESPONSE_TIMED_OUT),
    )
    msg = cim.CimMessage("REPLY", cim.NOUN, "2024-05-01T07:00:05Z", events, "req-9", None, "0.0")
    data = cim.build_message(msg)
    assert data.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n<Message><Header><Verb>')
    assert cim.parse_message(data) == msg
    root = ET.fromstring(data)
    assert [c.tag for c in root] == ["Header", "Reply", "Payload"]
    assert [c.tag for c in root[0]] == ["Verb", "Noun", "Timestamp", "CorrelationID"]
    first = root.find("Payload/EndDeviceEvents/EndDeviceEvent")
    assert first is not None
    assert [c.tag for c in first] == ["category", "createdDateTime", "description", "Assets"]
    assert data.isascii()


def test_namespaced_iec_61968_100_style_messages_parse_too() -> None:
    data = b"""<?xml version="1.0"?>
    <m:RequestMessage xmlns:m="http://iec.ch/TC57/2011/schema/message">
      <m:Header><m:Verb>get</m:Verb><m:Noun>MeterStatusData</m:Noun>
        <m:Timestamp>2024-05-01T07:00:00+02:00</m:Timestamp>
        <m:CorrelationID>abc</m:CorrelationID></m:Header>
      <m:Payload><EndDeviceEvents xmlns="urn:x"><EndDeviceEvent><category>1.2.3.4</category>
        <Assets><mRID> M1 </mRID><mRID>M2</mRID><mRID>M1</mRID></Assets>
      </EndDeviceEvent></EndDeviceEvents></m:Payload>
    </m:RequestMessage>"""
    req = cim.parse_get(data)
    assert req.meters == ("M1", "M2")  # stripped, duplicates dropped, order kept
    assert req.timestamp == 1714539600.0 and req.respond_by is None


def _get(**over: str) -> bytes:
    return fill(SEED_TEMPLATE, dict(GET_VALUES, **over), drop=("Reply", "descr"))


@pytest.mark.parametrize(
    ("data", "where", "words"),
    [
        (b"", "Message", "not XML"),
        (b"<Message><Header>", "Message", "not well-formed"),
        (b"\xff\xfe<\x00M\x00", "Message", "not XML"),
        (b"<Foo/>", "Foo", "root element"),
        (_get(Verb="PUT"), "Header/Verb", "expected 'GET'"),
        (_get(Verb="REPLY"), "Message/Reply", "required on REPLY"),
        (_get(Noun="MeterReadings"), "Header/Noun", "MeterReadings"),
        (_get(Timestamp="2010-04-18T13:31:23"), "Header/Timestamp", "no time zone"),
        (_get(Timestamp="yesterday"), "Header/Timestamp", "not an ISO 8601"),
        (_get(RespondByTimestamp="soon"), "Header/RespondByTimestamp", "not an ISO"),
        (_get(CorrelationID="0"), "Header/CorrelationID", "0 is not"),
        (_get(CorrelationID=" "), "Header/CorrelationID", "missing"),
        (_get(category="3.26.47"), "category", "#1.#2.#3.#4"),
        (_get(mRID=""), "Assets/mRID[0]", "empty mRID"),
        (_get().replace(b"<Verb>GET</Verb>", b""), "Header/Verb", "missing"),
        (_get().replace(b"<Header>", b"<Header><Verb>GET</Verb>"), "Header/Verb", "2 times"),
        (_get().replace(b"</Assets>", b"<x>1</x></Assets>"), "Assets/x[1]", "only mRID"),
        (
            _get().replace(
                b"</EndDeviceEvents>",
                b"<EndDeviceEvent><category>1.1.1.1</category>"
                b"<Assets><mRID>Z</mRID></Assets></EndDeviceEvent></EndDeviceEvents>",
            ),
            "EndDeviceEvents",
            "exactly one",
        ),
        (
            _get()
            .replace(b"<Payload>", b"<Payload><Bogus/>")
            .replace(b"</Payload>", b"</Payload>")
            .replace(b"<EndDeviceEvents>", b"<EndDeviceEvents><Odd/>"),
            "EndDeviceEvents/EndDeviceEvent[0]",
            "unexpected element 'Odd'",
        ),
        (
            _get().replace(b"<Message>", b'<!DOCTYPE m [<!ENTITY a "aaaa">]><Message>'),
            "Message",
            "DOCTYPE",
        ),
    ],
)
def test_malformed_gets_raise_errors_naming_the_element(
    data: bytes, where: str, words: str
) -> None:
    with pytest.raises(cim.CimError) as info:
        cim.parse_get(data)
    assert info.value.where.endswith(where), info.value
    assert words in str(info.value)


def test_billion_laughs_is_refused_before_parsing() -> None:
    lol = (
        b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "lol">'
        + b"".join(b'<!ENTITY a%d "&a%d;&a%d;&a%d;&a%d;">' % (i + 1, i, i, i, i) for i in range(12))
        + b"]><Message>&a12;</Message>"
    )
    with pytest.raises(cim.CimError, match="DOCTYPE"):
        cim.parse_message(lol)


def test_size_cap_and_meter_cap() -> None:
    many = _get().replace(
        b"<mRID>MTR-0001</mRID>", b"".join(b"<mRID>M%d</mRID>" % i for i in range(50))
    )
    assert len(cim.parse_get(many).meters) == 50
    with pytest.raises(cim.CimError, match="at most 49") as info:
        cim.parse_get(many, max_meters=49)
    assert info.value.where == "Assets"
    with pytest.raises(cim.CimError, match="more than the limit"):
        cim.parse_get(many, max_bytes=100)


def test_description_limit_and_long_descriptions() -> None:
    values = dict(GET_VALUES, Verb="REPLY", ReplyCode="0.0", description="x" * 513)
    with pytest.raises(cim.CimError, match="513 characters"):
        cim.parse_message(fill(SEED_TEMPLATE, values))
    values["description"] = "  " + "x" * 512 + "  "  # surrounding white space is ignored
    assert cim.parse_message(fill(SEED_TEMPLATE, values)).events[0].description == "x" * 512


def test_build_refuses_what_the_seed_forbids() -> None:
    with pytest.raises(cim.CimError, match="category"):
        cim.build_message(cim.CimMessage("REPLY", cim.NOUN, "2024-05-01T07:00:00Z",
                                         (cim.EndDeviceEvent("3.26", None, ("A",)),),
                                         None, None, "0.0"))  # fmt: skip
    with pytest.raises(cim.CimError, match="required on REPLY"):
        cim.build_message(cim.CimMessage("REPLY", cim.NOUN, "2024-05-01T07:00:00Z"))
    with pytest.raises(cim.CimError, match="mRID"):
        cim.build_replies([cim.EndDeviceEvent("1.1.1.1", None, ())], timestamp=0,
                          correlation_id=None)  # fmt: skip


def test_non_ascii_ids_go_out_as_character_references_and_come_back() -> None:
    ev = cim.EndDeviceEvent("3.26.0.216", "2024-05-01T07:00:00Z", ("Zähler-1", "計器"), "on")
    [data] = cim.build_replies([ev], timestamp=1714546800, correlation_id="é")
    assert data.isascii() and b"&#" in data
    msg = cim.parse_message(data)
    assert msg.events == (ev,) and msg.correlation_id == "é"


def test_big_replies_split_under_the_cap_with_each_meter_once() -> None:
    events = [
        cim.EndDeviceEvent("3.26.0.47", "2024-05-01T07:00:00Z",
                           tuple(f"MTR-{i:05d}" for i in range(3000)), "power down"),
        cim.EndDeviceEvent("3.26.0.216", "2024-05-01T07:00:00Z",
                           tuple(f"MTR-{i:05d}" for i in range(3000, 3500)), "power up"),
    ]  # fmt: skip
    limit = 20_000
    parts = cim.build_replies(events, timestamp=1714546800, correlation_id="big", max_bytes=limit)
    assert len(parts) == 4  # 3500 x 22-byte mRID elements: 77 kB in 20 kB messages
    assert all(len(p) > 0.95 * limit for p in parts[:-1])  # packed, not one group per message
    seen: dict[str, str] = {}
    for p in parts:
        assert len(p) <= limit
        msg = cim.parse_message(p)
        assert msg.correlation_id == "big" and msg.reply_code == cim.REPLY_OK
        for ev in msg.events:
            for m in ev.assets:
                assert m not in seen
                seen[m] = ev.category
    assert len(seen) == 3500
    assert seen["MTR-00000"] == "3.26.0.47" and seen["MTR-03499"] == "3.26.0.216"
    for cap in (1500, 4096, 7777):
        sizes = [len(p) for p in cim.build_replies(events, timestamp=0, correlation_id="c",
                                                   max_bytes=cap)]  # fmt: skip
        assert max(sizes) <= cap and min(sizes[:-1]) > cap - 200, (cap, sizes)
    # one that just fits is not split
    whole = cim.build_replies(events[1:], timestamp=0, correlation_id="x", max_bytes=10**6)
    assert len(whole) == 1
    with pytest.raises(cim.CimError, match="does not fit"):
        cim.build_replies(events, timestamp=0, correlation_id="x", max_bytes=200)


def test_error_reply_carries_code_and_reason() -> None:
    data = cim.error_reply("77", cim.REPLY_BAD_REQUEST, "Header/Verb: missing", timestamp=0)
    msg = cim.parse_message(data)
    assert (msg.verb, msg.reply_code, msg.correlation_id) == ("REPLY", "5.1", "77")
    assert msg.error == "Header/Verb: missing" and msg.events == ()
    assert cim.correlation_of(b"<Message><Header><CorrelationID>9</CorrelationID>") is None
    assert cim.correlation_of(_get(Verb="PUT")) == "4711"


_ID = (
    st.text(
        st.characters(min_codepoint=0x21, max_codepoint=0x2FFF, exclude_categories=("Cs", "Cc")),
        min_size=1,
        max_size=20,
    )
    .map(str.strip)
    .filter(bool)
)


@settings(max_examples=60, deadline=None)
@given(
    groups=st.lists(
        st.tuples(
            st.tuples(*[st.integers(0, 999)] * 4).map(lambda t: ".".join(map(str, t))),
            st.lists(_ID, min_size=1, max_size=8),
            st.none() | _ID,
        ),
        min_size=0,
        max_size=4,
    ),
    corr=st.none() | _ID,
    when=st.integers(0, 4_000_000_000),
)
def test_round_trip_property(
    groups: list[tuple[str, list[str], str | None]], corr: str | None, when: int
) -> None:
    events = tuple(
        cim.EndDeviceEvent(cat, cim.cim_time(when), tuple(ids), desc) for cat, ids, desc in groups
    )
    msg = cim.CimMessage("REPLY", cim.NOUN, cim.cim_time(when), events, corr, None, "0.0")
    assert cim.parse_message(cim.build_message(msg)) == msg
