"""The emulated meter's image transfer object (IC 18, 0.0.44.0.0.255): firmware arrives in blocks.

Layouts follow the Blue Book (IEC 62056-6-2, image transfer, version 0) and gurux's
``GXDLMSImageTransfer``, the client-side conformance peer:

- attributes: 2 image_block_size (double-long-unsigned), 3 image_transferred_blocks_status
  (bit-string, bit n = block n, first bit is the MSB of the first byte), 4
  image_first_not_transferred_block_number (double-long-unsigned), 5 image_transfer_enabled
  (boolean, the only writable one), 6 image_transfer_status (enum 0..7), 7 image_to_activate_info
  (array of structure {size double-long-unsigned, identification octet-string, signature
  octet-string});
- methods: 1 image_transfer_initiate (structure {identifier octet-string, size
  double-long-unsigned}), 2 image_block_transfer (structure {block number double-long-unsigned,
  block value octet-string}), 3 image_verify (integer 0), 4 image_activate (integer 0).

Blocks are numbered from 0. Verification checks that every block arrived and that the assembled
image's SHA-256 matches the digest its last 32 bytes carry (``seal``: the emulator's stand-in for a
vendor signature, so a block corrupted on the way is caught); the digest of the whole image is then
published as the entry's signature. Verification and activation may be told to take time: the
method then answers temporary-failure and attribute 6 moves on when the meter's clock has passed,
as a real meter that checks a flash image in the background does. Activation replaces the value of
the meter's "active firmware identifier" object (1.0.0.2.0.255).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from firmware_agent.collector import obis
from firmware_agent.collector.firmware import TransferStatus
from firmware_agent.collector.obis import IC_IMAGE_TRANSFER

from . import axdr
from .objects import (
    OBJECT_UNAVAILABLE,
    OTHER_REASON,
    READ_WRITE_DENIED,
    TEMPORARY_FAILURE,
    TYPE_UNMATCHED,
    AccessError,
    CosemObject,
    DataObject,
    Selection,
)

ACTIVE_FIRMWARE_ID = "1.0.0.2.0.255"
DIGEST_LEN = 32


def seal(payload: bytes) -> bytes:
    """An image the emulated meter accepts: the payload followed by its SHA-256."""
    return payload + hashlib.sha256(payload).digest()


def bit_string(bits: list[bool]) -> bytes:
    """A-XDR bit-string: tag 4, length in bits, bits packed MSB first."""
    packed = bytearray((len(bits) + 7) // 8)
    for i, bit in enumerate(bits):
        if bit:
            packed[i // 8] |= 0x80 >> (i % 8)
    return bytes([axdr.BIT_STRING]) + axdr.length(len(bits)) + bytes(packed)


@dataclass
class _Pending:
    """A verification or activation that finishes at ``due`` (meter time)."""

    due: float
    outcome: TransferStatus


class ImageTransferObject(CosemObject):
    """IC 18 on the server side; pair it with the firmware identifier object it updates."""

    class_id = IC_IMAGE_TRANSFER

    def __init__(
        self,
        firmware: DataObject,
        *,
        logical_name: str = obis.IMAGE_TRANSFER,
        block_size: int = 200,
        max_image_size: int = 1 << 20,
        verify_delay_s: float = 0.0,
        activate_delay_s: float = 0.0,
        enabled: bool = True,
    ) -> None:
        super().__init__(logical_name)
        if block_size < 1:
            raise ValueError(f"block_size must be positive, got {block_size}")
        self.firmware = firmware
        self.block_size = block_size
        self.max_image_size = max_image_size
        self.verify_delay_s = verify_delay_s
        self.activate_delay_s = activate_delay_s
        self.enabled = enabled
        self.status = TransferStatus.NOT_INITIATED
        self.identifier = b""
        self.size = 0
        self.signature = b""
        self.blocks: dict[int, bytes] = {}
        self.received_blocks = 0  # every block transfer accepted, repeats included
        self.activations = 0
        self._pending: _Pending | None = None

    # ------------------------------------------------------------------ state

    @property
    def block_count(self) -> int:
        return -(-self.size // self.block_size) if self.size else 0

    def first_missing(self) -> int:
        """image_first_not_transferred_block_number: the lowest block not yet received."""
        for n in range(self.block_count):
            if n not in self.blocks:
                return n
        return self.block_count

    def image(self) -> bytes:
        return b"".join(self.blocks[n] for n in range(self.block_count) if n in self.blocks)

    def _settle(self, now: float) -> None:
        pending = self._pending
        if pending is not None and now >= pending.due:
            self._pending = None
            self._finish(pending.outcome)

    def _finish(self, outcome: TransferStatus) -> None:
        self.status = outcome
        if outcome == TransferStatus.ACTIVATION_SUCCESSFUL:
            self.firmware.value = axdr.octets(self.identifier)
            self.activations += 1

    # ------------------------------------------------------------------ attributes

    def read(self, attribute: int, selection: Selection | None, now: float) -> bytes:
        self._settle(now)
        if attribute == 2:
            return axdr.u32(self.block_size)
        if attribute == 3:
            return bit_string([n in self.blocks for n in range(self.block_count)])
        if attribute == 4:
            return axdr.u32(self.first_missing())
        if attribute == 5:
            return axdr.boolean(self.enabled)
        if attribute == 6:
            return axdr.enum(int(self.status))
        if attribute == 7:
            if self.status == TransferStatus.NOT_INITIATED:
                return axdr.array([])
            entry = axdr.structure(
                axdr.u32(self.size), axdr.octets(self.identifier), axdr.octets(self.signature)
            )
            return axdr.array([entry])
        return super().read(attribute, selection, now)

    def set(self, attribute: int, value: axdr.Value, now: float) -> None:
        if attribute != 5:
            raise AccessError(READ_WRITE_DENIED, f"IC 18 attribute {attribute} is read-only")
        if value.tag != axdr.BOOLEAN or not isinstance(value.value, bool):
            raise AccessError(TYPE_UNMATCHED, "image_transfer_enabled takes a boolean")
        self.enabled = value.value

    # ------------------------------------------------------------------ methods

    def action(self, method: int, params: axdr.Value | None, now: float) -> bytes | None:
        self._settle(now)
        if method == 1:
            self._initiate(params)
        elif method == 2:
            self._block(params)
        elif method == 3:
            self._verify(now)
        elif method == 4:
            self._activate(now)
        else:
            raise AccessError(OBJECT_UNAVAILABLE, f"IC 18 has no method {method}")
        return None

    def _initiate(self, params: axdr.Value | None) -> None:
        if not self.enabled:
            raise AccessError(TEMPORARY_FAILURE, "image transfer is disabled (attribute 5)")
        identifier, size = _fields(params, "image_transfer_initiate")
        if not isinstance(identifier, bytes | str) or not isinstance(size, int):
            raise AccessError(TYPE_UNMATCHED, "initiate takes {octet-string, double-long-unsigned}")
        if not 0 < size <= self.max_image_size:
            raise AccessError(OTHER_REASON, f"image size {size} outside 1..{self.max_image_size}")
        self.identifier = identifier.encode() if isinstance(identifier, str) else identifier
        self.size = size
        self.blocks = {}
        self.signature = b""
        self._pending = None
        self.status = TransferStatus.INITIATED

    def _block(self, params: axdr.Value | None) -> None:
        if self.status not in (TransferStatus.INITIATED, TransferStatus.VERIFICATION_FAILED):
            raise AccessError(TEMPORARY_FAILURE, f"block transfer while {self.status.name}")
        number, data = _fields(params, "image_block_transfer")
        if not isinstance(number, int) or not isinstance(data, bytes):
            raise AccessError(TYPE_UNMATCHED, "block transfer takes {number, octet-string}")
        if not 0 <= number < self.block_count:
            raise AccessError(OTHER_REASON, f"block {number} outside 0..{self.block_count - 1}")
        expected = min(self.block_size, self.size - number * self.block_size)
        if len(data) != expected:
            raise AccessError(OTHER_REASON, f"block {number} is {len(data)} bytes, not {expected}")
        self.blocks[number] = data
        self.received_blocks += 1
        self.status = TransferStatus.INITIATED

    def _verify(self, now: float) -> None:
        if self.status in (
            TransferStatus.VERIFICATION_SUCCESSFUL,
            TransferStatus.VERIFICATION_FAILED,
        ):
            self.status = TransferStatus.INITIATED  # verify again (e.g. after missing blocks came)
        if self.status == TransferStatus.VERIFICATION_INITIATED:
            raise AccessError(TEMPORARY_FAILURE, "verification in progress")
        if self.status != TransferStatus.INITIATED:
            raise AccessError(TEMPORARY_FAILURE, f"verify while {self.status.name}")
        missing = self.block_count - len(self.blocks)
        image = self.image()
        ok = missing == 0 and _sealed(image)
        if ok:
            self.signature = hashlib.sha256(image).digest()
        outcome = (
            TransferStatus.VERIFICATION_SUCCESSFUL if ok else TransferStatus.VERIFICATION_FAILED
        )
        if self.verify_delay_s > 0:
            self.status = TransferStatus.VERIFICATION_INITIATED
            self._pending = _Pending(now + self.verify_delay_s, outcome)
            raise AccessError(TEMPORARY_FAILURE, "verification started")
        self._finish(outcome)
        if not ok:
            why = f"{missing} blocks missing" if missing else "image digest does not match"
            raise AccessError(OTHER_REASON, f"verification failed: {why}")

    def _activate(self, now: float) -> None:
        if self.status == TransferStatus.ACTIVATION_INITIATED:
            raise AccessError(TEMPORARY_FAILURE, "activation in progress")
        if self.status != TransferStatus.VERIFICATION_SUCCESSFUL:
            raise AccessError(TEMPORARY_FAILURE, f"activate while {self.status.name}")
        if self.activate_delay_s > 0:
            self.status = TransferStatus.ACTIVATION_INITIATED
            self._pending = _Pending(
                now + self.activate_delay_s, TransferStatus.ACTIVATION_SUCCESSFUL
            )
            raise AccessError(TEMPORARY_FAILURE, "activation started")
        self._finish(TransferStatus.ACTIVATION_SUCCESSFUL)


def _sealed(image: bytes) -> bool:
    body, digest = image[:-DIGEST_LEN], image[-DIGEST_LEN:]
    return len(image) > DIGEST_LEN and hashlib.sha256(body).digest() == digest


def _fields(params: axdr.Value | None, what: str) -> tuple[object, object]:
    if (
        params is None
        or params.tag != axdr.STRUCTURE
        or not isinstance(params.value, list)
        or len(params.value) != 2
    ):
        raise AccessError(TYPE_UNMATCHED, f"{what} takes a structure of 2")
    return params.value[0].value, params.value[1].value


def image_objects(
    firmware_id: bytes = b"EMU-FW-1.0",
    *,
    block_size: int = 200,
    verify_delay_s: float = 0.0,
    activate_delay_s: float = 0.0,
) -> tuple[ImageTransferObject, DataObject]:
    """The image transfer object and the active firmware identifier it updates, ready to add to
    a meter's object directory (``objects[o.logical_name] = o`` for both)."""
    firmware = DataObject(ACTIVE_FIRMWARE_ID, axdr.octets(firmware_id))
    image = ImageTransferObject(
        firmware,
        block_size=block_size,
        verify_delay_s=verify_delay_s,
        activate_delay_s=activate_delay_s,
    )
    return image, firmware
