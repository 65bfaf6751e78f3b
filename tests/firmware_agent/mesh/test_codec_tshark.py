"""tshark is the judge of the mesh codecs: a capture of every multi-hop message kind must decode
layer by layer (wpan → 6lowpan → ipv6 → icmpv6 RPL / udp) with good FCS and checksums, no
malformed packets and no expert warnings, and Wireshark's 6LoWPAN reassembly must rebuild the
fragmented datagram from our fragments (which checks the uncompressed-offset arithmetic).

tshark runs through hil.tshark (checksum validation, strict RFC 6554 source-route checks,
stderr read for damage), like every capture test.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from drivers.pcap import PcapWriter
from firmware_agent.mesh import frames, ipv6, rpl
from firmware_agent.mesh.adaptation import LowpanAdaptation, rpl_packet, udp_packet
from hil import tshark

pytestmark = pytest.mark.skipif(not tshark.available(), reason="tshark not installed")

PREFIX = bytes.fromhex("fd00007a00010000")  # fd00:7a:1::/64
GW = bytes.fromhex("02124b0000000001")
N1, N2, N3, N4 = (bytes.fromhex(f"0212 4b00 0000 0a0{i}".replace(" ", "")) for i in range(1, 5))
BROADCAST = b"\xff\xff"
PAN = 0xABCD
PSDU_MAX = 127


def g(mac: bytes) -> bytes:
    return ipv6.address_in_prefix(PREFIX, mac)


class _Capture:
    """Frames of a small multi-hop exchange, built with the production codecs."""

    def __init__(self) -> None:
        self.psdus: list[bytes] = []
        self.kinds: list[str] = []
        self.more: list[bool] = []  # a fragment that is not the datagram's last one
        self._seq = 0
        self._lowpan: dict[tuple[bytes, int], LowpanAdaptation] = {}  # own tags per sender

    def send(self, kind: str, src_mac: bytes, dst_mac: bytes, packet: ipv6.Ipv6Packet) -> None:
        template = frames.Frame(
            frames.FrameType.DATA,
            0,
            dst_pan=PAN,
            dst=dst_mac,
            src=src_mac,
            ack_request=dst_mac != BROADCAST,
        )
        room = frames.payload_room(template, PSDU_MAX)
        lowpan = self._lowpan.setdefault((src_mac, room), LowpanAdaptation(room, first_tag=0x5A00))
        payloads = lowpan.encode(packet, src_mac, dst_mac)
        for n, payload in enumerate(payloads, 1):
            self._seq = (self._seq + 1) & 0xFF
            frame = frames.Frame(
                frames.FrameType.DATA,
                self._seq,
                dst_pan=PAN,
                dst=dst_mac,
                src=src_mac,
                ack_request=dst_mac != BROADCAST,
                payload=payload,
            )
            self.add(kind, frames.encode(frame), more=n < len(payloads))

    def add(self, kind: str, psdu: bytes, *, more: bool = False) -> None:
        assert len(psdu) <= PSDU_MAX
        self.psdus.append(psdu)
        self.kinds.append(kind)
        self.more.append(more)

    def last(self, kind: str) -> int:
        """Index of the last frame of ``kind``: where a fragmented message is decoded."""
        return len(self.kinds) - 1 - self.kinds[::-1].index(kind)

    def write(self, path: Path) -> None:
        writer = PcapWriter.open(path, "wpan")
        for i, psdu in enumerate(self.psdus):
            writer.write(1_700_000_000 + i * 0.01, psdu)
        writer.close()


METER_REPLY = bytes(range(256)) * 2 + bytes(range(40))  # 552 bytes: a 600-byte datagram


def _scenario() -> _Capture:
    cap = _Capture()
    ll = ipv6.link_local
    cap.send("dis", N1, BROADCAST, rpl_packet(ll(N1), rpl.ALL_RPL_NODES, rpl.Dis()))
    dio = rpl.Dio(
        1,
        2,
        rpl.root_rank(),
        g(GW),
        dtsn=4,
        config=rpl.DodagConfig(),
        prefixes=(rpl.PrefixInfo(PREFIX + bytes(8), 64),),
    )
    cap.send("dio", GW, BROADCAST, rpl_packet(ll(GW), rpl.ALL_RPL_NODES, dio))
    dao = rpl.Dao(
        1,
        9,
        (
            rpl.Target(g(N2)),
            rpl.Transit(5, 120, g(N1), path_control=0xC0),
            rpl.Transit(5, 120, g(N3), path_control=0x30),
        ),
        dodag_id=g(GW),
    )
    cap.send("dao", N1, GW, rpl_packet(g(N2), g(GW), dao, hop_limit=63))  # forwarded by N1
    ack = rpl.DaoAck(1, 9, 0, g(GW))
    cap.send("dao-ack", GW, N1, rpl_packet(g(GW), g(N2), ack, route=[g(N1)]))
    get = bytes.fromhex("0001 0001 0001 000d c001c1 0003 0100010800ff 0200")
    request = udp_packet(g(GW), g(N4), 4059, 4059, get, route=[g(N1), g(N2), g(N3)])
    cap.send("udp-srh", GW, N1, request)
    reply = udp_packet(g(N4), g(GW), 4059, 4059, METER_REPLY, hop_limit=61)
    cap.send("fragment", N1, GW, reply)
    data = frames.decode(cap.psdus[-1])
    cap.add("enh-ack", frames.encode(frames.ack_for(data, rsl_dbm=-83.0)))
    return cap


FIELDS = (
    "frame.protocols",
    "wpan.fcs_ok",
    "wpan.frame_type",
    "wpan.version",
    "wpan.seq_no",
    "wisun.rslie.rsl",
    "icmpv6.code",
    "icmpv6.checksum.status",
    "udp.checksum.status",
    "icmpv6.rpl.dio.rank",
    "icmpv6.rpl.dio.flag.mop",
    "icmpv6.rpl.dio.dagid",
    "icmpv6.rpl.opt.target.prefix",
    "icmpv6.rpl.opt.transit.parent",
    "icmpv6.rpl.daoack.sequence",
    "ipv6.src",
    "ipv6.dst",
    "ipv6.plen",
    "ipv6.routing.segleft",
    "ipv6.routing.rpl.addr_count",
    "ipv6.routing.rpl.full_address",
    "udp.dstport",
    "udp.length",
    "data.data",
    "6lowpan.frag.offset",
    "6lowpan.reassembled.length",
    "6lowpan.fragment.count",
)


@dataclass
class Decoded:
    cap: _Capture
    pcap: Path
    rows: list[dict[str, str]]

    def last(self, kind: str) -> dict[str, str]:
        return self.rows[self.cap.last(kind)]


@pytest.fixture(scope="module")
def decoded(tmp_path_factory: pytest.TempPathFactory) -> Decoded:
    """The scenario's capture, written once and read by tshark once for all fields."""
    cap = _scenario()
    pcap = tmp_path_factory.mktemp("codec") / "mesh.pcap"
    cap.write(pcap)
    rows = [dict(zip(FIELDS, r, strict=True)) for r in tshark.fields(pcap, *FIELDS)]
    assert len(rows) == len(cap.kinds)
    return Decoded(cap, pcap, rows)


def test_every_message_kind_decodes_cleanly_in_tshark(decoded: Decoded) -> None:
    cap, rows = decoded.cap, decoded.rows
    kinds = cap.kinds
    assert kinds.count("fragment") == 7  # 600 bytes through 104-byte frame payloads
    assert kinds.count("dao") == 2  # a DAO with DODAGID and two transits needs 128 bytes
    expected = {
        "dis": "wpan:6lowpan:ipv6:icmpv6",
        "dio": "wpan:6lowpan:ipv6:icmpv6",
        "dao": "wpan:6lowpan:ipv6:icmpv6",
        "dao-ack": "wpan:6lowpan:ipv6:ipv6.routing:icmpv6",
        "udp-srh": "wpan:6lowpan:ipv6:ipv6.routing:udp:data",
        "fragment": "wpan:6lowpan:ipv6:udp:data",
        "enh-ack": "wpan",
    }
    codes = {"dis": "0", "dio": "1", "dao": "2", "dao-ack": "3"}
    for kind, more, row in zip(kinds, cap.more, rows, strict=True):
        assert row["wpan.fcs_ok"] in ("1", "True"), (kind, row)
        if more:  # Wireshark shows a fragment's bytes as data until the datagram is complete
            assert (row["frame.protocols"], row["icmpv6.code"]) == ("wpan:6lowpan:data", "")
            continue
        assert row["frame.protocols"] == expected[kind], kind
        assert row["icmpv6.code"] == codes.get(kind, ""), kind

    # Nothing malformed, no expert info at warning level or above anywhere.
    assert tshark.problems(decoded.pcap) == ""

    # Checksums: every UDP and ICMPv6 checksum verified good (1), none unverified or bad.
    udp = [r["udp.checksum.status"] for r in rows if r["udp.checksum.status"]]
    icmp = [r["icmpv6.checksum.status"] for r in rows if r["icmpv6.checksum.status"]]
    assert udp == ["1", "1"] and icmp == ["1"] * 4


def test_rpl_fields_as_wireshark_reads_them(decoded: Decoded) -> None:
    gw, n1, n2, n3 = (ipv6.format_address(g(m)) for m in (GW, N1, N2, N3))
    dio = decoded.last("dio")
    assert (dio["icmpv6.rpl.dio.rank"], dio["icmpv6.rpl.dio.flag.mop"]) == ("256", "0x01")
    assert dio["icmpv6.rpl.dio.dagid"] == gw
    dao = decoded.last("dao")
    assert dao["icmpv6.rpl.opt.target.prefix"] == n2
    assert dao["icmpv6.rpl.opt.transit.parent"] == f"{n1},{n3}"
    assert dao["6lowpan.reassembled.length"] == "128"
    ack = decoded.last("dao-ack")
    assert ack["icmpv6.rpl.daoack.sequence"] == "9"
    assert (ack["ipv6.dst"], ack["ipv6.routing.rpl.full_address"]) == (n1, n2)


def test_source_route_and_reassembly_as_wireshark_reads_them(decoded: Decoded) -> None:
    n1, n2, n3, n4 = (ipv6.format_address(g(m)) for m in (N1, N2, N3, N4))
    srh = decoded.last("udp-srh")
    assert srh["ipv6.dst"] == n1
    assert (srh["ipv6.routing.segleft"], srh["ipv6.routing.rpl.addr_count"]) == ("3", "3")
    assert srh["ipv6.routing.rpl.full_address"] == f"{n2},{n3},{n4}"
    assert srh["udp.dstport"] == "4059"

    whole = decoded.last("fragment")
    assert whole["6lowpan.reassembled.length"] == "600"
    assert whole["6lowpan.fragment.count"] == "7"
    assert (whole["ipv6.plen"], whole["udp.length"]) == ("560", "560")
    assert whole["ipv6.src"] == ipv6.format_address(g(N4))
    assert bytes.fromhex(whole["data.data"]) == METER_REPLY
    offsets = [
        r["6lowpan.frag.offset"]
        for k, r in zip(decoded.cap.kinds, decoded.rows, strict=True)
        if k == "fragment"
    ]
    # Wireshark shows offsets in octets of the uncompressed datagram; FRAG1 has none.
    assert offsets == ["", "104", "200", "296", "392", "488", "584"]


def test_enh_ack_rsl_ie_as_wireshark_reads_it(decoded: Decoded) -> None:
    ack = decoded.rows[-1]
    assert (ack["wpan.frame_type"], ack["wpan.version"]) == ("0x0002", "2")
    assert ack["wisun.rslie.rsl"] == str(-83 + 174)  # the field holds the byte, shown as dBm
    assert ack["wpan.seq_no"] == str(frames.decode(decoded.cap.psdus[-2]).seq)
    shown = tshark.run(decoded.pcap, "-V", "-Y", "wpan.frame_type == 2")
    assert "Received Signal Level: -83 dBm" in shown


def test_payload_ies_decode_in_tshark(tmp_path: Path) -> None:
    src, dst = g(N1), g(GW)
    packet = udp_packet(src, dst, 4059, 4059, b"push")
    lowpan = LowpanAdaptation(90)
    [payload] = lowpan.encode(packet, N1, GW)
    frame = frames.Frame(
        frames.FrameType.DATA,
        1,
        dst_pan=PAN,
        dst=GW,
        src=N1,
        header_ies=(frames.rsl_ie(-70),),
        payload_ies=(frames.PayloadIE(0x2, bytes.fromhex("0050c2") + b"v1"),),
        payload=payload,
    )
    cap = _Capture()
    cap.add("data", frames.encode(frame))
    pcap = tmp_path / "ies.pcap"
    cap.write(pcap)
    [row] = tshark.fields(
        pcap,
        "wisun.rslie.rsl",
        "wpan.header_ie.ht1",
        "wpan.payload_ie.id",
        "wpan.payload_ie.termination",
        "udp.checksum.status",
        "frame.protocols",
    )
    assert row[0] == str(-70 + 174) and row[4] == "1"
    assert row[5].endswith("6lowpan:ipv6:udp:data")
    assert row[2].split(",") == ["0x0002", "0x000f"]  # vendor IE, then the payload termination
    assert tshark.problems(pcap) == ""
