"""The emulated meter's IC 18 image transfer object: the state machine driven directly, and its
attributes read by gurux's real client through our DLMS server (GET) and decoded by gurux's own
GXDLMSImageTransfer."""

from __future__ import annotations

import hashlib
import random
from typing import Any

import pytest
from gurux_dlms import GXReplyData
from gurux_dlms.objects import GXDLMSData, GXDLMSImageTransfer

from firmware_agent.clock import ManualClock
from firmware_agent.collector import obis
from firmware_agent.collector.firmware import TransferStatus
from firmware_agent.collector.session import DlmsSession
from hil.meter import axdr
from hil.meter.dlms_server import MeterServer
from hil.meter.image import (
    ACTIVE_FIRMWARE_ID,
    ImageTransferObject,
    bit_string,
    image_objects,
    seal,
)
from hil.meter.model import MeterModel
from hil.meter.objects import OTHER_REASON, TEMPORARY_FAILURE, AccessError, build_directory
from hil.meter.rig import drive

NOW = 1_700_000_000.0
V = axdr.Value


def initiate_params(identifier: bytes, size: int) -> axdr.Value:
    return V(axdr.STRUCTURE, [V(axdr.OCTET_STRING, identifier), V(axdr.DOUBLE_LONG_UNSIGNED, size)])


def block_params(n: int, data: bytes) -> axdr.Value:
    return V(axdr.STRUCTURE, [V(axdr.DOUBLE_LONG_UNSIGNED, n), V(axdr.OCTET_STRING, data)])


ZERO = V(axdr.INTEGER, 0)


def push_blocks(obj: ImageTransferObject, image: bytes, skip: frozenset[int] = frozenset()) -> None:
    bs = obj.block_size
    for n in range(-(-len(image) // bs)):
        if n not in skip:
            obj.action(2, block_params(n, image[n * bs : (n + 1) * bs]), NOW)


def test_bit_string_is_msb_first_with_bit_length() -> None:
    assert bit_string([True, False, True]) == bytes([4, 3, 0b1010_0000])
    assert bit_string([False] * 8 + [True]) == bytes([4, 9, 0, 0x80])
    assert bit_string([]) == bytes([4, 0])


def test_full_transfer_verifies_activates_and_changes_firmware_identifier() -> None:
    image_obj, firmware = image_objects(b"FW-1.0", block_size=64)
    image = seal(random.Random(1).randbytes(1000))
    assert image_obj.action(1, initiate_params(b"FW-2.0", len(image)), NOW) is None
    assert image_obj.status == TransferStatus.INITIATED and image_obj.block_count == 17
    push_blocks(image_obj, image)
    assert image_obj.first_missing() == 17
    image_obj.action(3, ZERO, NOW)
    assert image_obj.status == TransferStatus.VERIFICATION_SUCCESSFUL
    assert image_obj.get(7, None, NOW) == axdr.array(
        [
            axdr.structure(
                axdr.u32(len(image)),
                axdr.octets(b"FW-2.0"),
                axdr.octets(hashlib.sha256(image).digest()),
            )
        ]
    )
    assert firmware.get(2, None, NOW) == axdr.octets(b"FW-1.0")
    image_obj.action(4, ZERO, NOW)
    assert image_obj.status == TransferStatus.ACTIVATION_SUCCESSFUL
    assert firmware.get(2, None, NOW) == axdr.octets(b"FW-2.0")
    assert firmware.logical_name == ACTIVE_FIRMWARE_ID


def test_missing_blocks_fail_verification_and_are_reported() -> None:
    obj, _ = image_objects(block_size=100)
    image = seal(bytes(range(256)) * 3)  # 800 bytes: 8 blocks
    obj.action(1, initiate_params(b"X", len(image)), NOW)
    push_blocks(obj, image, skip=frozenset({2, 5}))
    assert obj.get(3, None, NOW) == bytes([4, 8, 0b1101_1011])
    assert obj.get(4, None, NOW) == axdr.u32(2)
    with pytest.raises(AccessError) as err:
        obj.action(3, ZERO, NOW)
    assert err.value.result == OTHER_REASON and "2 blocks missing" in err.value.detail
    assert obj.status == TransferStatus.VERIFICATION_FAILED
    with pytest.raises(AccessError):  # cannot activate an unverified image
        obj.action(4, ZERO, NOW)
    # the missing blocks are sent, verification then passes
    obj.action(2, block_params(2, image[200:300]), NOW)
    obj.action(2, block_params(5, image[500:600]), NOW)
    assert obj.get(4, None, NOW) == axdr.u32(8)
    obj.action(3, ZERO, NOW)
    assert obj.status == TransferStatus.VERIFICATION_SUCCESSFUL


def test_corrupted_image_fails_verification_by_digest() -> None:
    obj, firmware = image_objects(block_size=100)
    image = bytearray(seal(b"a" * 500))
    image[123] ^= 0xFF
    obj.action(1, initiate_params(b"BAD", len(image)), NOW)
    push_blocks(obj, bytes(image))
    with pytest.raises(AccessError, match="digest"):
        obj.action(3, ZERO, NOW)
    assert obj.status == TransferStatus.VERIFICATION_FAILED
    assert firmware.value == axdr.octets(b"EMU-FW-1.0")


@pytest.mark.parametrize(
    ("method", "params", "match"),
    [
        (2, block_params(0, b"x" * 100), "while NOT_INITIATED"),
        (1, V(axdr.INTEGER, 0), "structure of 2"),
        (1, initiate_params(b"X", 0), "outside"),
        (9, None, "no method 9"),
    ],
)
def test_bad_invocations_are_refused_with_a_reason(
    method: int, params: axdr.Value | None, match: str
) -> None:
    obj, _ = image_objects()
    with pytest.raises(AccessError, match=match):
        obj.action(method, params, NOW)


def test_block_number_and_length_are_checked() -> None:
    obj, _ = image_objects(block_size=100)
    obj.action(1, initiate_params(b"X", 250), NOW)
    with pytest.raises(AccessError, match=r"outside 0\.\.2"):
        obj.action(2, block_params(3, b"x" * 100), NOW)
    with pytest.raises(AccessError, match="is 99 bytes, not 100"):
        obj.action(2, block_params(0, b"x" * 99), NOW)
    obj.action(2, block_params(2, b"x" * 50), NOW)  # the short last block
    assert obj.received_blocks == 1


def test_initiate_restarts_and_disabled_transfer_is_refused() -> None:
    obj, _ = image_objects(block_size=100)
    obj.action(1, initiate_params(b"A", 300), NOW)
    obj.action(2, block_params(0, b"x" * 100), NOW)
    obj.action(1, initiate_params(b"B", 300), NOW)
    assert obj.blocks == {} and obj.identifier == b"B"
    obj.set(5, V(axdr.BOOLEAN, False), NOW)
    assert obj.get(5, None, NOW) == axdr.boolean(False)
    with pytest.raises(AccessError) as err:
        obj.action(1, initiate_params(b"C", 300), NOW)
    assert err.value.result == TEMPORARY_FAILURE
    with pytest.raises(AccessError, match="read-only"):
        obj.set(2, V(axdr.DOUBLE_LONG_UNSIGNED, 50), NOW)


def test_slow_verification_and_activation_answer_temporary_failure_then_finish() -> None:
    obj, firmware = image_objects(b"OLD", block_size=64, verify_delay_s=5.0, activate_delay_s=2.0)
    image = seal(b"z" * 200)
    obj.action(1, initiate_params(b"NEW", len(image)), NOW)
    push_blocks(obj, image)
    with pytest.raises(AccessError) as err:
        obj.action(3, ZERO, NOW)
    assert err.value.result == TEMPORARY_FAILURE
    assert obj.get(6, None, NOW + 4.9) == axdr.enum(TransferStatus.VERIFICATION_INITIATED)
    assert obj.get(6, None, NOW + 5.0) == axdr.enum(TransferStatus.VERIFICATION_SUCCESSFUL)
    with pytest.raises(AccessError):
        obj.action(4, ZERO, NOW + 5.0)
    assert obj.get(6, None, NOW + 6.0) == axdr.enum(TransferStatus.ACTIVATION_INITIATED)
    assert firmware.value == axdr.octets(b"OLD")
    assert obj.get(6, None, NOW + 7.0) == axdr.enum(TransferStatus.ACTIVATION_SUCCESSFUL)
    assert firmware.value == axdr.octets(b"NEW")


# ---------------------------------------------------------------------- gurux's client reads it



def gurux_read(server: MeterServer, session: DlmsSession, obj: Any, attribute: int) -> None:
    client = session.client
    (request,) = client.read(obj, attribute)
    reply_frame = server.handle(bytes(request))
    assert reply_frame is not None, server.last_fault
    reply = GXReplyData()
    assert client.getData(reply_frame, reply, None)
    assert not reply.error, reply.error
    client.updateValue(obj, attribute, reply.value)


def test_gurux_client_reads_every_image_transfer_attribute() -> None:
    clock = ManualClock(NOW)
    model = MeterModel("MTR-9", random.Random(3))
    objects = build_directory(model)
    image_obj, firmware = image_objects(b"FW-1", block_size=128)
    objects[image_obj.logical_name] = image_obj
    objects[firmware.logical_name] = firmware
    server = MeterServer(model, clock, objects=objects)
    image = seal(b"q" * 600)  # 632 bytes: 5 blocks
    image_obj.action(1, initiate_params(b"FW-2", len(image)), NOW)
    push_blocks(image_obj, image, skip=frozenset({1, 3}))

    session = DlmsSession()
    drive(server, session.associate())
    it = GXDLMSImageTransfer(obis.IMAGE_TRANSFER)
    for attribute in range(1, 8):
        gurux_read(server, session, it, attribute)
    assert it.logicalName == obis.IMAGE_TRANSFER
    assert it.imageBlockSize == 128
    assert str(it.imageTransferredBlocksStatus) == "10101"
    assert it.imageFirstNotTransferredBlockNumber == 1
    assert it.imageTransferEnabled is True
    assert int(it.imageTransferStatus) == TransferStatus.INITIATED
    (info,) = it.imageActivateInfo
    assert (info.size, bytes(info.identification)) == (len(image), b"FW-2")

    fw = GXDLMSData(ACTIVE_FIRMWARE_ID)
    gurux_read(server, session, fw, 2)
    assert bytes(fw.value) == b"FW-1"
