import numpy as np
import pandas as pd
import pytest

from synthehr.constraints import (
    EQUATIONS,
    base_excess_from_hco3_ph,
    constraint_mae,
    hco3_from_base_excess_ph,
    hco3_from_ph_paco2,
    henderson_hasselbalch_ph,
    paco2_from_ph_hco3,
    pao2_from_spo2,
    ph_from_base_excess_hco3,
    severinghaus_spo2,
)

RNG = np.random.default_rng(0)
HCO3 = RNG.uniform(8, 45, 200)
PACO2 = RNG.uniform(20, 90, 200)
PH = RNG.uniform(6.9, 7.7, 200)
BE = RNG.uniform(-20, 20, 200)
PAO2 = np.geomspace(5, 600, 200)


def test_henderson_hasselbalch_normal_gas():
    assert henderson_hasselbalch_ph(24, 40) == pytest.approx(7.40, abs=0.01)
    assert isinstance(henderson_hasselbalch_ph(24, 40), float)


def test_base_excess_normal_gas_is_near_zero():
    assert base_excess_from_hco3_ph(24, 7.40) == pytest.approx(0.9287 * 24 + 13.77 * 7.40 - 124.58)
    assert abs(base_excess_from_hco3_ph(24, 7.40)) < 1.0


def test_severinghaus_at_100_mmhg_is_about_98_percent():
    assert 97.7 <= severinghaus_spo2(100.0) <= 98.0
    assert np.all(np.diff(severinghaus_spo2(PAO2)) > 0)  # monotone


def test_henderson_hasselbalch_inverses_round_trip():
    ph = henderson_hasselbalch_ph(HCO3, PACO2)
    np.testing.assert_allclose(hco3_from_ph_paco2(ph, PACO2), HCO3, rtol=1e-9)
    np.testing.assert_allclose(paco2_from_ph_hco3(ph, HCO3), PACO2, rtol=1e-9)


def test_base_excess_inverses_round_trip():
    be = base_excess_from_hco3_ph(HCO3, PH)
    np.testing.assert_allclose(ph_from_base_excess_hco3(be, HCO3), PH, rtol=1e-9)
    np.testing.assert_allclose(hco3_from_base_excess_ph(be, PH), HCO3, rtol=1e-9)


def test_severinghaus_inverse_round_trips_both_ways():
    np.testing.assert_allclose(pao2_from_spo2(severinghaus_spo2(PAO2)), PAO2, rtol=1e-9)
    spo2 = np.linspace(0.5, 99.9, 300)
    np.testing.assert_allclose(severinghaus_spo2(pao2_from_spo2(spo2)), spo2, rtol=1e-9)


def test_out_of_domain_gives_nan_not_error():
    assert np.all(np.isnan(pao2_from_spo2([0.0, 100.0, -1.0, 120.0, np.nan])))
    assert np.isnan(henderson_hasselbalch_ph(-1.0, 40.0))
    assert np.isnan(severinghaus_spo2(0.0))


def test_series_keep_their_index():
    s = pd.Series([24.0, 30.0], index=[10, 20])
    out = henderson_hasselbalch_ph(s, 40.0)
    assert isinstance(out, pd.Series) and list(out.index) == [10, 20]


def test_registry_and_exact_solvers():
    assert {n: c.target for n, c in EQUATIONS.items()} == {
        "henderson_hasselbalch": "ph", "base_excess": "base_excess", "severinghaus": "spo2"
    }
    table = pd.DataFrame({"hco3": HCO3, "paco2": PACO2, "pao2": PAO2})
    table["ph"] = henderson_hasselbalch_ph(table["hco3"], table["paco2"])
    table["base_excess"] = base_excess_from_hco3_ph(table["hco3"], table["ph"])
    table["spo2"] = severinghaus_spo2(table["pao2"])
    for eq in EQUATIONS.values():
        for feature in eq.features:
            np.testing.assert_allclose(eq.solve(feature, table), table[feature], rtol=1e-9)


def test_constraint_mae_measures_offsets_and_skips_absent_equations():
    table = pd.DataFrame({"hco3": HCO3, "paco2": PACO2})
    table["ph"] = henderson_hasselbalch_ph(table["hco3"], table["paco2"]) + 0.05
    table.loc[0, "hco3"] = np.nan  # incomplete row is skipped
    mae = constraint_mae(table)
    assert set(mae) == {"henderson_hasselbalch"}
    assert mae["henderson_hasselbalch"]["mae"] == pytest.approx(0.05)
    assert mae["henderson_hasselbalch"]["n_rows"] == len(table) - 1


def test_constraint_mae_pools_last_bins_slots():
    wide = pd.DataFrame({f"{f}__t{k}": v for k in range(2) for f, v in (("hco3", HCO3), ("paco2", PACO2))})
    for k, offset in ((0, 0.02), (1, -0.04)):
        wide[f"ph__t{k}"] = henderson_hasselbalch_ph(wide[f"hco3__t{k}"], wide[f"paco2__t{k}"]) + offset
    wide["phosphate"] = 1.0  # shares the "ph" prefix but is no slot
    mae = constraint_mae(wide)["henderson_hasselbalch"]
    assert mae["mae"] == pytest.approx(0.03) and mae["n_rows"] == 2 * len(wide)
    assert EQUATIONS["henderson_hasselbalch"].column_suffixes(wide.columns) == ["__t0", "__t1"]
