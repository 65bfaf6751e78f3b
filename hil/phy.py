"""The PHY arithmetic of the emulated Wi-SUN mesh: noise floor, path loss, 2-FSK packet errors,
airtime and channel frequencies. Pure functions, so each formula can be checked by hand.

The bit-error curve is the textbook one for noncoherent binary FSK, BER = ½·exp(−Eb/2N0), with
Eb/N0 = SINR·B/Rb. A real receiver does worse than that ideal curve; the gap is one number, the
implementation loss, which :class:`PhyConfig` calibrates so that the curve meets a datasheet
sensitivity. We chose −105 dBm at 1 % PER for a 20-byte PSDU (Wi-SUN mode 1b, 50 kbps 2-FSK):
chip datasheets quote a few dB better, but a meter's module loses some of that to its antenna,
matching and self-noise, and −105 dBm lands the implementation loss at ≈3.5 dB, a typical figure
for a noncoherent FSK demodulator. Sensitivity is stated for a 20-byte PSDU because that is the
length 802.15.4 uses for its receiver sensitivity definition.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

#: Thermal noise density at 290 K.
THERMAL_NOISE_DBM_PER_HZ = -174.0
SPEED_OF_LIGHT_M_S = 299_792_458.0
#: Wi-SUN FAN FCC channel plan 1: 902.2 MHz + 200 kHz × n, n = 0..128.
CHANNEL_0_HZ = 902.2e6
CHANNEL_SPACING_HZ = 0.2e6
CHANNEL_COUNT = 129
#: The reference distance of the log-distance model.
REFERENCE_DISTANCE_M = 1.0
#: Where the reference loss is quoted when no channel is given (the plan's middle).
REFERENCE_FREQUENCY_HZ = 915e6


def thermal_noise_floor_dbm(bandwidth_hz: float, noise_figure_db: float) -> float:
    """kTB plus the receiver's noise figure: the floor every SINR is measured against."""
    if bandwidth_hz <= 0:
        raise ValueError(f"bandwidth must be positive, got {bandwidth_hz} Hz")
    return THERMAL_NOISE_DBM_PER_HZ + 10 * math.log10(bandwidth_hz) + noise_figure_db


def channel_frequency_hz(channel: int) -> float:
    """Centre frequency of a channel of the 129-channel 902–928 MHz plan."""
    if not 0 <= channel < CHANNEL_COUNT:
        raise ValueError(f"channel {channel} is outside 0..{CHANNEL_COUNT - 1}")
    return CHANNEL_0_HZ + CHANNEL_SPACING_HZ * channel


def free_space_loss_db(distance_m: float, frequency_hz: float) -> float:
    """Friis free-space loss 20·log10(4π·d·f/c): the loss at the reference distance."""
    if distance_m <= 0 or frequency_hz <= 0:
        raise ValueError(f"distance and frequency must be positive ({distance_m}, {frequency_hz})")
    return 20 * math.log10(4 * math.pi * distance_m * frequency_hz / SPEED_OF_LIGHT_M_S)


def path_loss_db(
    distance_m: float,
    exponent: float,
    frequency_hz: float = REFERENCE_FREQUENCY_HZ,
    reference_m: float = REFERENCE_DISTANCE_M,
) -> float:
    """Log-distance path loss PL(d) = PL(d0) + 10·n·log10(d/d0), PL(d0) in free space.
    Closer than d0 counts as d0: the model says nothing about the near field."""
    distance = max(distance_m, reference_m)
    return free_space_loss_db(reference_m, frequency_hz) + 10 * exponent * math.log10(
        distance / reference_m
    )


def ebn0_db(sinr_db: float, bandwidth_hz: float, bitrate_bps: float, loss_db: float) -> float:
    """Eb/N0 = SINR·B/Rb (the noise is measured over B, a bit lasts 1/Rb), less the
    implementation loss."""
    return sinr_db + 10 * math.log10(bandwidth_hz / bitrate_bps) - loss_db


def ber_2fsk_noncoherent(ebn0_db_value: float) -> float:
    """Bit error rate of noncoherent binary FSK: ½·exp(−Eb/(2·N0))."""
    return 0.5 * math.exp(-(10 ** (ebn0_db_value / 10)) / 2)


def per_from_ber(ber: float, psdu_bytes: int) -> float:
    """A frame survives only if all its 8·L bits do: PER = 1 − (1 − BER)^(8·L)."""
    if not 0.0 <= ber <= 1.0:
        raise ValueError(f"a bit error rate is a probability, got {ber}")
    if ber >= 1.0:
        return 1.0 if psdu_bytes > 0 else 0.0
    # expm1/log1p keep tiny error rates exact instead of rounding 1 − (1 − ε) to 0.
    return -math.expm1(8 * psdu_bytes * math.log1p(-ber))


def ber_for_per(per: float, psdu_bytes: int) -> float:
    """The bit error rate that gives ``per`` over ``psdu_bytes`` (the inverse of
    :func:`per_from_ber`)."""
    if not 0.0 < per < 1.0 or psdu_bytes <= 0:
        raise ValueError(f"need 0 < PER < 1 and a positive length, got {per}, {psdu_bytes}")
    return -math.expm1(math.log1p(-per) / (8 * psdu_bytes))


def ebn0_db_for_ber(ber: float) -> float:
    """The ideal noncoherent 2-FSK Eb/N0 for a bit error rate (inverse of the BER curve)."""
    if not 0.0 < ber < 0.5:
        raise ValueError(f"noncoherent 2-FSK reaches BERs in (0, 0.5), got {ber}")
    return 10 * math.log10(-2 * math.log(2 * ber))


def airtime_s(
    psdu_bytes: int,
    bitrate_bps: float = 50e3,
    preamble_bytes: int = 8,
    sfd_bytes: int = 2,
    phr_bytes: int = 2,
) -> float:
    """How long a frame occupies the channel: SHR (preamble + SFD), PHR and PSDU, 8 bits a byte."""
    if psdu_bytes < 0:
        raise ValueError(f"a PSDU cannot have {psdu_bytes} bytes")
    return (preamble_bytes + sfd_bytes + phr_bytes + psdu_bytes) * 8 / bitrate_bps


def implementation_loss_db(
    sensitivity_dbm: float,
    per: float,
    psdu_bytes: int,
    noise_floor_dbm: float,
    bandwidth_hz: float,
    bitrate_bps: float,
) -> float:
    """The loss that moves the ideal 2-FSK curve onto a datasheet point: at ``sensitivity_dbm``
    (noise only) the PER of a ``psdu_bytes`` frame is exactly ``per``."""
    needed = ebn0_db_for_ber(ber_for_per(per, psdu_bytes))
    available = ebn0_db(sensitivity_dbm - noise_floor_dbm, bandwidth_hz, bitrate_bps, 0.0)
    return available - needed


@dataclass(frozen=True)
class PhyConfig:
    """One PHY mode and its calibration (defaults: Wi-SUN FAN mode 1b, 50 kbps 2-FSK, FCC)."""

    bandwidth_hz: float = 200e3
    bitrate_bps: float = 50e3
    noise_figure_db: float = 6.0
    #: The datasheet point the implementation loss is calibrated to (see the module docstring).
    sensitivity_dbm: float = -105.0
    sensitivity_per: float = 0.01
    sensitivity_psdu_bytes: int = 20
    preamble_bytes: int = 8
    sfd_bytes: int = 2
    phr_bytes: int = 2

    @cached_property
    def noise_floor_dbm(self) -> float:
        return thermal_noise_floor_dbm(self.bandwidth_hz, self.noise_figure_db)

    @cached_property
    def implementation_loss_db(self) -> float:
        return implementation_loss_db(
            self.sensitivity_dbm,
            self.sensitivity_per,
            self.sensitivity_psdu_bytes,
            self.noise_floor_dbm,
            self.bandwidth_hz,
            self.bitrate_bps,
        )

    @cached_property
    def _spreading_gain_db(self) -> float:
        return 10 * math.log10(self.bandwidth_hz / self.bitrate_bps)

    def per(self, sinr_db: float, psdu_bytes: int) -> float:
        """Packet error rate of a ``psdu_bytes`` frame received at ``sinr_db``: the same
        arithmetic as ``per_from_ber(ber_2fsk_noncoherent(ebn0_db(...)))``, in one step,
        because the medium asks for it for every frame at every receiver near the cliff."""
        ebn0 = sinr_db + self._spreading_gain_db - self.implementation_loss_db
        ber = 0.5 * math.exp(-(10 ** (ebn0 / 10)) / 2)
        return -math.expm1(8 * psdu_bytes * math.log1p(-ber))

    def sinr_for_per(self, per: float, psdu_bytes: int) -> float:
        """The SINR (dB) at which a ``psdu_bytes`` frame has error rate ``per``."""
        needed = ebn0_db_for_ber(ber_for_per(per, psdu_bytes))
        return (
            needed
            - 10 * math.log10(self.bandwidth_hz / self.bitrate_bps)
            + self.implementation_loss_db
        )

    def airtime_s(self, psdu_bytes: int) -> float:
        return airtime_s(
            psdu_bytes, self.bitrate_bps, self.preamble_bytes, self.sfd_bytes, self.phr_bytes
        )
