"""OBIS codes the collector reads, and their 6-byte wire form.

One table shared by the reader (what to ask for), the record normaliser (which OBIS fills which
head-end field) and the emulated meter (what to serve), so the three cannot drift apart.
"""

from __future__ import annotations

CLOCK = "0.0.1.0.0.255"
DEVICE_ID = "0.0.96.1.0.255"
LOGICAL_DEVICE_NAME = "0.0.42.0.0.255"
INVOCATION_COUNTER = "0.0.43.1.0.255"
ACTIVE_ENERGY_IMPORT = "1.0.1.8.0.255"
LOAD_PROFILE = "1.0.99.1.0.255"
VOLTAGE_L1 = "1.0.32.7.0.255"
CURRENT_L1 = "1.0.31.7.0.255"
POWER_FACTOR = "1.0.13.7.0.255"
ACTIVE_POWER_IMPORT = "1.0.1.7.0.255"
APPARENT_POWER = "1.0.9.7.0.255"
# Load as a percentage of the meter's rated power. OBIS has no standard code for it, so it takes a
# manufacturer-specific one (value group E in 128..254 is reserved for manufacturers).
LOAD_PERCENT = "1.0.1.7.128.255"
IMAGE_TRANSFER = "0.0.44.0.0.255"

# COSEM physical units (Blue Book, "Enumerated values for physical units").
UNIT_W = 27
UNIT_VA = 28
UNIT_WH = 30
UNIT_A = 33
UNIT_V = 35
UNIT_PERCENT = 56
UNIT_NONE = 255

# Interface classes (IC) used here.
IC_DATA = 1
IC_REGISTER = 3
IC_PROFILE_GENERIC = 7
IC_CLOCK = 8
IC_IMAGE_TRANSFER = 18


def obis_to_bytes(obis: str) -> bytes:
    """'1.0.1.8.0.255' -> bytes 01 00 01 08 00 ff; raises ValueError on a malformed code."""
    parts = obis.split(".")
    if len(parts) != 6:
        raise ValueError(f"OBIS code {obis!r} must have 6 groups")
    try:
        groups = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"OBIS code {obis!r} has a non-numeric group") from None
    if any(not 0 <= g <= 255 for g in groups):
        raise ValueError(f"OBIS code {obis!r} has a group outside 0..255")
    return bytes(groups)


def bytes_to_obis(raw: bytes) -> str:
    """The dotted form of a 6-byte logical name; raises ValueError if it is not 6 bytes."""
    if len(raw) != 6:
        raise ValueError(f"a logical name is 6 bytes, got {len(raw)}")
    return ".".join(str(b) for b in raw)
