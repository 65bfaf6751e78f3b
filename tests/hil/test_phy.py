"""The PHY formulas against points computed by hand (the arithmetic is in each comment)."""

from __future__ import annotations

import math

import pytest

from hil import phy


def test_thermal_noise_floor() -> None:
    # -174 + 10·log10(200 000) + 6 = -174 + 53.0103 + 6 = -114.9897 dBm
    assert phy.thermal_noise_floor_dbm(200e3, 6.0) == pytest.approx(-114.9897, abs=1e-4)
    # 1 MHz, NF 0: -174 + 60 = -114 dBm
    assert phy.thermal_noise_floor_dbm(1e6, 0.0) == pytest.approx(-114.0)
    with pytest.raises(ValueError, match="bandwidth"):
        phy.thermal_noise_floor_dbm(0, 6)


def test_channel_plan() -> None:
    # 902.2 MHz + 0.2 MHz × n: n = 0 → 902.2, n = 64 → 915.0, n = 128 → 927.8 MHz
    assert phy.channel_frequency_hz(0) == pytest.approx(902.2e6)
    assert phy.channel_frequency_hz(64) == pytest.approx(915.0e6)
    assert phy.channel_frequency_hz(128) == pytest.approx(927.8e6)
    for bad in (-1, 129):
        with pytest.raises(ValueError, match=f"channel {bad} is outside 0..128"):
            phy.channel_frequency_hz(bad)


def test_free_space_reference_loss_and_log_distance() -> None:
    # λ = c/f = 299 792 458 / 915e6 = 0.327642 m; 4π·1 m/λ = 38.3535; 20·log10 = 31.676 dB
    assert phy.free_space_loss_db(1.0, 915e6) == pytest.approx(31.676, abs=1e-3)
    # At 902.2 MHz: 20·log10(4π·902.2e6/c) = 31.554 dB (0.12 dB less than at 915 MHz)
    assert phy.free_space_loss_db(1.0, 902.2e6) == pytest.approx(31.554, abs=1e-3)
    # n = 3, d = 100 m: 31.676 + 10·3·2 = 91.676 dB; n = 3.5, d = 1 km: 31.676 + 105 = 136.676
    assert phy.path_loss_db(100.0, 3.0) == pytest.approx(91.676, abs=1e-3)
    assert phy.path_loss_db(1000.0, 3.5) == pytest.approx(136.676, abs=1e-3)
    # Inside the reference distance the loss is the reference loss.
    assert phy.path_loss_db(0.2, 3.0) == pytest.approx(31.676, abs=1e-3)


def test_ebn0_and_ber() -> None:
    # B/Rb = 200k/50k = 4 → +6.0206 dB; SINR 10 dB, loss 3 dB: 10 + 6.0206 - 3 = 13.0206 dB
    assert phy.ebn0_db(10.0, 200e3, 50e3, 3.0) == pytest.approx(13.0206, abs=1e-4)
    # Eb/N0 = 10 dB = 10: BER = ½·exp(-10/2) = ½·e^-5 = 0.0033690
    assert phy.ber_2fsk_noncoherent(10.0) == pytest.approx(0.0033690, rel=1e-4)
    # Eb/N0 = 0 dB = 1: BER = ½·e^-0.5 = 0.30327
    assert phy.ber_2fsk_noncoherent(0.0) == pytest.approx(0.30327, rel=1e-4)
    assert phy.ebn0_db_for_ber(0.0033690) == pytest.approx(10.0, abs=1e-3)


def test_per_from_ber() -> None:
    # BER 1e-4, 20 bytes = 160 bits: 1 - 0.9999^160 = 1 - e^(160·ln 0.9999) = 0.015873
    assert phy.per_from_ber(1e-4, 20) == pytest.approx(0.015873, rel=1e-4)
    # BER 1e-12 over 127 bytes: ≈ 1016e-12, not rounded to 0
    assert phy.per_from_ber(1e-12, 127) == pytest.approx(1.016e-9, rel=1e-6)
    assert phy.per_from_ber(0.0, 50) == 0.0 and phy.per_from_ber(1.0, 5) == 1.0
    assert phy.ber_for_per(0.015873, 20) == pytest.approx(1e-4, rel=1e-3)
    with pytest.raises(ValueError, match="probability"):
        phy.per_from_ber(1.5, 10)


def test_airtime_mode_1b() -> None:
    # (8 preamble + 2 SFD + 2 PHR + 20 PSDU) × 8 bit / 50 kbps = 256 / 50 000 = 5.12 ms
    assert phy.airtime_s(20) == pytest.approx(5.12e-3)
    # 127-byte PSDU: 139 × 8 / 50 000 = 22.24 ms; an Imm-Ack (5 bytes): 17 × 8 / 50 000 = 2.72 ms
    assert phy.airtime_s(127) == pytest.approx(22.24e-3)
    assert phy.PhyConfig().airtime_s(5) == pytest.approx(2.72e-3)


def test_calibration_meets_the_chosen_sensitivity() -> None:
    # Chosen point: -105 dBm, 1 % PER, 20-byte PSDU, noise floor -114.9897 dBm.
    # BER for 1 % over 160 bits: 1 - 0.99^(1/160) = 6.2813e-5
    # Ideal Eb/N0 for that BER: -2·ln(2·6.2813e-5) = 17.9644 → 12.5441 dB
    # Available Eb/N0 at -105 dBm: (−105 + 114.9897) + 6.0206 = 16.0103 dB
    # Implementation loss = 16.0103 - 12.5441 = 3.4662 dB
    config = phy.PhyConfig()
    assert config.noise_floor_dbm == pytest.approx(-114.9897, abs=1e-4)
    assert config.implementation_loss_db == pytest.approx(3.4662, abs=1e-3)
    snr_at_sensitivity = -105.0 - config.noise_floor_dbm
    assert config.per(snr_at_sensitivity, 20) == pytest.approx(0.01, rel=1e-9)
    assert config.sinr_for_per(0.01, 20) == pytest.approx(snr_at_sensitivity, abs=1e-9)
    # 3 dB better: Eb/N0 = 15.5441 dB = 35.843 → BER = ½·e^-17.92 = 8.2e-9 → PER ≈ 1.3e-6
    assert config.per(snr_at_sensitivity + 3, 20) == pytest.approx(1.3e-6, rel=0.05)
    # 3 dB worse: Eb/N0 = 9.5441 dB = 9.0035 → BER = ½·e^-4.5017 = 0.005545 → PER = 0.589
    assert config.per(snr_at_sensitivity - 3, 20) == pytest.approx(0.589, abs=0.002)
    # Longer frames fail more often at the same SINR.
    assert config.per(snr_at_sensitivity, 127) > config.per(snr_at_sensitivity, 20)


def test_a_different_datasheet_point_moves_the_loss() -> None:
    # 5 dB better sensitivity on the same noise floor needs 5 dB less implementation loss.
    base = phy.PhyConfig()
    better = phy.PhyConfig(sensitivity_dbm=-110.0)
    assert base.implementation_loss_db - better.implementation_loss_db == pytest.approx(5.0)
    assert math.isclose(better.per(-110.0 - better.noise_floor_dbm, 20), 0.01, rel_tol=1e-9)
