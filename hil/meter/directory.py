"""One place that builds a whole emulated meter, so `hil meter serve`, the meters on the
simulated mesh and the tests serve the same object directory.

``full_directory`` is the standard directory (clock, identity, instantaneous registers, load
profile) plus image transfer (IC 18) with the active firmware identifier it updates, and the push
setup (IC 40) the meter's notifications name. ``scenario_keys`` derives a meter's suite 0 key set
from a scenario seed, so a simulated mesh can run secured meters and the gateway can be given the
same keys (``key_file_text``) without anything random outside the seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from firmware_agent.clock import Clock
from firmware_agent.collector.keys import MeterKeys

from .dlms_server import MeterServer, ServerSecurity
from .faults import Fault, FaultyMeter
from .image import ImageTransferObject, image_objects
from .model import MeterModel
from .objects import CosemObject, DataObject, build_directory
from .push import PushSetupObject, PushSource

DEFAULT_FIRMWARE_ID = b"EMU-FW-1.0"


def full_directory(
    model: MeterModel,
    *,
    firmware_id: bytes = DEFAULT_FIRMWARE_ID,
    push_destination: str = "",
    verify_delay_s: float = 0.0,
    activate_delay_s: float = 0.0,
) -> dict[str, CosemObject]:
    """The standard directory plus image transfer, active firmware identifier and push setup."""
    objects, _, _ = _directory(
        model, firmware_id, push_destination, verify_delay_s, activate_delay_s
    )
    return objects


def _directory(
    model: MeterModel,
    firmware_id: bytes,
    push_destination: str,
    verify_delay_s: float,
    activate_delay_s: float,
) -> tuple[dict[str, CosemObject], ImageTransferObject, DataObject]:
    objects = build_directory(model)
    image, firmware = image_objects(
        firmware_id, verify_delay_s=verify_delay_s, activate_delay_s=activate_delay_s
    )
    for obj in (image, firmware, PushSetupObject(push_destination)):
        objects[obj.logical_name] = obj
    return objects, image, firmware


def scenario_keys(seed: int | str, meter_id: str) -> MeterKeys:
    """A meter's suite 0 keys and system title, a pure function of the scenario seed and the
    meter id (the system title: "EMU" + 5 bytes of the same stream, as unique as the ids)."""
    rng = random.Random(f"suite0:{seed}:{meter_id}")
    ek, ak = rng.randbytes(16), rng.randbytes(16)
    return MeterKeys(meter_id, ek, ak, b"EMU" + rng.randbytes(5))


def key_file_text(keys: list[MeterKeys]) -> str:
    """The YAML the gateway's key file holds for ``keys`` (write it with mode 0600)."""
    lines = []
    for k in keys:
        lines += [
            f"{k.meter_id}:",
            f"  block_cipher_key: {k.block_cipher_key.hex().upper()}",
            f"  authentication_key: {k.authentication_key.hex().upper()}",
            f"  system_title: {k.system_title.hex().upper()}",
        ]
    return "\n".join(lines) + "\n"


@dataclass
class EmulatedMeterParts:
    """What one emulated meter is made of; ``meter`` is what an edge serves (the faulty layer,
    which serves normally while no fault is queued)."""

    model: MeterModel
    server: MeterServer
    meter: FaultyMeter
    pushes: PushSource
    image: ImageTransferObject
    firmware: DataObject


def build_meter(
    meter_id: str,
    clock: Clock,
    rng: random.Random,
    *,
    profile_period_s: float = 900.0,
    server_wport: int = 1,
    max_pdu: int = 1024,
    keys: MeterKeys | None = None,
    faults: list[Fault] | None = None,
    firmware_id: bytes = DEFAULT_FIRMWARE_ID,
) -> EmulatedMeterParts:
    """A meter with the full directory; suite 0 when ``keys`` are given; its own pushes. The
    randomness of the model, StoC challenges and faults is drawn from ``rng`` in a fixed order."""
    model = MeterModel(
        meter_id, random.Random(rng.getrandbits(64)), profile_period_s=profile_period_s
    )
    objects, image, firmware = _directory(model, firmware_id, "", 0.0, 0.0)
    security = None
    if keys is not None:
        security = ServerSecurity(
            keys.suite(), keys.system_title, random.Random(rng.getrandbits(64))
        )
    server = MeterServer(
        model, clock, server_wport=server_wport, max_pdu=max_pdu, objects=objects, security=security
    )
    faulty = FaultyMeter(server, random.Random(rng.getrandbits(64)), faults or ())
    pushes = PushSource(meter_id, server_wport=server_wport)
    return EmulatedMeterParts(model, server, faulty, pushes, image, firmware)
