"""Enforcing equations and clinician bounds while generating (InterGenEHR Sec. V-A, Tables V-VI)."""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from synthehr.constraints import (
    EQUATIONS,
    Bound,
    ConstrainedGenerator,
    base_excess_from_hco3_ph,
    constraint_mae,
    generate_with_constraints,
    hco3_from_ph_paco2,
    henderson_hasselbalch_ph,
    impute_with_constraints,
    parse_bound,
    resolve_bounds,
    severinghaus_spo2,
)
from synthehr.constraints.cli import add_generate_options, generate_from_args, register_cli, report_lines
from synthehr.errors import ConditioningError
from synthehr.models import IndependentMarginals, MultivariateGaussian, TableSchema

TOL = 1e-9
RANGES = {"ph": (6.5, 8.0), "paco2": (5, 200), "hco3": (2, 60), "base_excess": (-40, 40), "pao2": (10, 800),
          "spo2": (0, 100), "heart_rate": (0, 300), "temperature": (30, 45)}


def blood_gas_table(n: int = 5000, seed: int = 0) -> pd.DataFrame:
    """Realistic-ish arterial blood gases: the equations hold up to measurement noise, as in real data."""
    rng = np.random.default_rng(seed)
    z = rng.multivariate_normal([0.0, 0.0], [[1.0, 0.5], [0.5, 1.0]], n)  # metabolic compensation
    hco3 = np.clip(24 + 4 * z[:, 0], 5, None)
    paco2 = np.clip(45 + 12 * z[:, 1], 10, None)
    ph = henderson_hasselbalch_ph(hco3, paco2) + rng.normal(0, 0.02, n)
    base_excess = base_excess_from_hco3_ph(hco3, ph) + rng.normal(0, 1.5, n)
    pao2 = np.exp(rng.normal(np.log(90), 0.35, n))
    spo2 = np.clip(severinghaus_spo2(pao2) + rng.normal(0, 1, n), 50, 100)
    heart_rate = 80 + 0.6 * (paco2 - 45) + rng.normal(0, 8, n)  # hypercapnia -> tachycardia
    temperature = rng.normal(37, 0.6, n)  # unrelated
    return pd.DataFrame({"hco3": hco3, "paco2": paco2, "ph": ph, "base_excess": base_excess, "pao2": pao2,
                         "spo2": spo2, "heart_rate": heart_rate, "temperature": temperature})


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    return blood_gas_table()


@pytest.fixture(scope="module")
def schema(data) -> TableSchema:
    return TableSchema.infer(data, ranges=RANGES)


@pytest.fixture(scope="module")
def gaussian(data, schema) -> MultivariateGaussian:
    return MultivariateGaussian().fit(data, schema)


@pytest.fixture(scope="module")
def marginals(data, schema) -> IndependentMarginals:
    return IndependentMarginals().fit(data, schema)


def maes(table: pd.DataFrame) -> dict[str, float]:
    return {k: v["mae"] for k, v in constraint_mae(table).items()}


# ------------------------------------------------------------------ equations hold exactly, selectively
def test_training_data_and_plain_model_violate_the_equations(data, gaussian):
    for table in (data, gaussian.sample(2000, seed=0)):
        m = maes(table)
        assert m["henderson_hasselbalch"] > 0.005 and m["base_excess"] > 0.5 and m["severinghaus"] > 0.3


@pytest.mark.parametrize("model_name", ["gaussian", "marginals"])
def test_all_three_enforced_gives_zero_mae(model_name, request):
    model = request.getfixturevalue(model_name)
    out = generate_with_constraints(model, 2000, seed=1, equations="all")
    assert list(out.columns) == model.schema_.names and len(out) == 2000
    for name, mae in maes(out).items():
        assert mae < TOL, name
    rep = out.attrs["constraint_report"]["equations"]
    assert all(r["enforced"] and r["max_abs_error"] < TOL for r in rep.values())
    assert out.notna().all().all()


@pytest.mark.parametrize("name", sorted(EQUATIONS))
def test_one_enforced_leaves_the_others_at_model_error(gaussian, name):
    """Table VI: forcing one equation does not force the others."""
    out = generate_with_constraints(gaussian, 2000, seed=2, equations=[name])
    m = maes(out)
    assert m[name] < TOL
    for other, mae in m.items():
        if other != name:
            assert mae > 1e-3, other


def test_equations_given_as_list_or_comma_string_are_the_same(gaussian):
    a = generate_with_constraints(gaussian, 50, seed=3, equations="henderson_hasselbalch, base_excess")
    b = generate_with_constraints(gaussian, 50, seed=3, equations=["base_excess", "Henderson-Hasselbalch"])
    c = generate_with_constraints(gaussian, 50, seed=3, equations=["henderson_hasselbalch", "base_excess"])
    pd.testing.assert_frame_equal(a, c)
    assert maes(b)["henderson_hasselbalch"] < TOL and maes(b)["base_excess"] < TOL


def test_same_seed_same_records(gaussian):
    kw = dict(equations="all", bounds=["ph < 7.3"])
    pd.testing.assert_frame_equal(generate_with_constraints(gaussian, 300, 7, **kw),
                                  generate_with_constraints(gaussian, 300, 7, **kw))
    other = generate_with_constraints(gaussian, 300, 8, **kw)
    assert not other.equals(generate_with_constraints(gaussian, 300, 7, **kw))


# ------------------------------------------------------------------ conditioned, not overwritten
def test_bound_conditions_the_other_features_like_the_closed_form_gaussian(gaussian):
    n = 3000
    out = generate_with_constraints(gaussian, n, seed=4, bounds=["paco2 in [70, 80]"])
    paco2 = out["paco2"].to_numpy()
    assert ((paco2 >= 70) & (paco2 <= 80)).all()

    names, mu, cov = gaussian.conditional_mean_cov({})  # unconditional moments, raw units
    i, j = names.index("heart_rate"), names.index("paco2")
    beta = cov[i, j] / cov[j, j]
    cond_sd = np.sqrt(cov[i, i] - beta * cov[i, j])
    assert beta > 0.3  # the fitted model links heart rate to paco2

    # paco2 itself is a draw from the model's marginal truncated to the bound, not uniform or clipped
    sd = np.sqrt(cov[j, j])
    trunc = stats.truncnorm((70 - mu[j]) / sd, (80 - mu[j]) / sd, loc=mu[j], scale=sd)
    assert abs(paco2.mean() - trunc.mean()) < 4 * trunc.std() / np.sqrt(n)

    def gap(table: pd.DataFrame) -> float:
        """Mean of heart_rate minus its closed-form conditional mean E[hr | paco2], in standard errors."""
        predicted = mu[i] + beta * (table["paco2"].to_numpy() - mu[j])
        return abs((table["heart_rate"].to_numpy() - predicted).mean()) / (cond_sd / np.sqrt(len(table)))

    assert gap(out) < 4.0
    assert out["heart_rate"].mean() > mu[i] + 10  # shifted towards tachycardia

    # negative control: sample unconstrained, then overwrite paco2 with in-bound values
    naive = gaussian.sample(n, seed=4)
    naive["paco2"] = paco2
    assert gap(naive) > 20.0
    assert abs(naive["heart_rate"].mean() - mu[i]) < 1.0  # left at its marginal mean


def test_equation_targets_condition_the_rest_too(gaussian):
    """With ph observed and HH enforced, hco3/paco2 are drawn given ph, so they move with it."""
    acid = generate_with_constraints(gaussian, 1000, 5, observed={"ph": 7.15}, equations="henderson_hasselbalch")
    base = generate_with_constraints(gaussian, 1000, 5, observed={"ph": 7.55}, equations="henderson_hasselbalch")
    for out, ph in ((acid, 7.15), (base, 7.55)):
        assert (out["ph"] == ph).all()
        assert maes(out)["henderson_hasselbalch"] < TOL
    assert acid["paco2"].mean() > base["paco2"].mean() + 5
    assert acid["heart_rate"].mean() > base["heart_rate"].mean() + 3  # via paco2


def test_bounds_on_equation_features_and_free_features_together(gaussian):
    bounds = ["ph < 7.3", "spo2 >= 99", "heart_rate > 100", "50 <= pao2 <= 400"]
    out = generate_with_constraints(gaussian, 300, 6, equations="all", bounds=bounds)
    assert (out["ph"] < 7.3).all() and (out["spo2"] >= 99).all() and (out["heart_rate"] > 100).all()
    assert out["pao2"].between(50, 400).all()
    assert all(v < TOL for v in maes(out).values())
    assert all(r["n_outside"] == 0 for r in out.attrs["constraint_report"]["bounds"].values())


# ------------------------------------------------------------------ observed values and inverses
def test_observed_ph_and_paco2_give_hco3_from_the_inverse_exactly(gaussian):
    out = generate_with_constraints(gaussian, 20, 0, observed={"ph": 7.1, "paco2": 60},
                                    equations="henderson_hasselbalch,base_excess")
    assert (out["ph"] == 7.1).all() and (out["paco2"] == 60).all()
    assert (out["hco3"] == hco3_from_ph_paco2(7.1, 60)).all()
    assert np.allclose(out["base_excess"], base_excess_from_hco3_ph(out["hco3"], 7.1), rtol=0, atol=1e-12)
    assert out["heart_rate"].nunique() > 1  # the rest is still generated


def test_square_system_is_solved_jointly(gaussian):
    """paco2 and base_excess fixed under HH + base excess: hco3 and ph follow from both at once."""
    out = generate_with_constraints(gaussian, 10, 0, observed={"paco2": 50, "base_excess": -5},
                                    equations=["henderson_hasselbalch", "base_excess"])
    assert (out["paco2"] == 50).all() and (out["base_excess"] == -5).all()
    m = maes(out)
    assert m["henderson_hasselbalch"] < TOL and m["base_excess"] < TOL


def test_consistent_fully_observed_equation_is_accepted(gaussian):
    ph = henderson_hasselbalch_ph(24.0, 40.0)
    out = generate_with_constraints(gaussian, 5, 0, observed={"ph": ph, "hco3": 24.0, "paco2": 40.0},
                                    equations="henderson_hasselbalch")
    assert (out["ph"] == ph).all()


def test_impute_with_row_specific_observations(gaussian):
    table = pd.DataFrame({"ph": [7.2, np.nan, np.nan, np.nan], "paco2": [np.nan, 50.0, np.nan, 35.0],
                          "hco3": [np.nan, 20.0, np.nan, np.nan], "spo2": [np.nan, np.nan, 95.0, np.nan]})
    out = impute_with_constraints(gaussian, table, seed=0, equations="all")
    assert out.loc[0, "ph"] == 7.2 and out.loc[1, "paco2"] == 50.0 and out.loc[1, "hco3"] == 20.0
    assert out.loc[2, "spo2"] == 95.0 and out.loc[3, "paco2"] == 35.0
    assert all(v < TOL for v in maes(out).values())
    wrapped = ConstrainedGenerator(gaussian, "all").impute(table, seed=0)
    pd.testing.assert_frame_equal(out, wrapped)


def test_constrained_generator_behaves_like_a_generator(gaussian):
    gen = ConstrainedGenerator(gaussian, equations="all", bounds="heart_rate >= 0")
    a = gen.sample(100, seed=1)
    b = gen.condition({"ph": 7.2}, n=100, seed=1)
    assert all(v < TOL for v in maes(a).values()) and (b["ph"] == 7.2).all()
    assert gen.schema_ is gaussian.schema_
    assert set(gen.report(b)["equations"]) == set(EQUATIONS)


def test_last_bins_layout_is_enforced_in_every_slot():
    rng = np.random.default_rng(0)
    cols = {}
    for t in range(2):
        hco3, paco2 = rng.normal(24, 3, 800), rng.normal(42, 6, 800)
        cols |= {f"hco3__t{t}": hco3, f"paco2__t{t}": paco2,
                 f"ph__t{t}": henderson_hasselbalch_ph(hco3, paco2) + rng.normal(0, 0.02, 800)}
    model = MultivariateGaussian().fit(pd.DataFrame(cols))
    out = generate_with_constraints(model, 200, 0, equations="henderson_hasselbalch")
    for t in range(2):
        res = out[f"ph__t{t}"] - henderson_hasselbalch_ph(out[f"hco3__t{t}"], out[f"paco2__t{t}"])
        assert res.abs().max() < TOL


# ------------------------------------------------------------------ clear errors
def test_contradictory_observed_values_are_refused(gaussian):
    with pytest.raises(ConditioningError, match="contradictory") as e:
        generate_with_constraints(gaussian, 10, 0, observed={"ph": 7.4, "hco3": 24, "paco2": 60},
                                  equations="henderson_hasselbalch")
    assert "ph" in str(e.value)
    # over-determined through a chain: HH gives hco3, then base excess is fixed twice
    with pytest.raises(ConditioningError, match="contradictory"):
        generate_with_constraints(gaussian, 10, 0, observed={"ph": 7.4, "paco2": 40, "base_excess": 10},
                                  equations="all")
    with pytest.raises(ConditioningError, match="contradictory"):
        generate_with_constraints(gaussian, 10, 0, observed={"ph": 7.4}, bounds=["ph < 7.2"])
    with pytest.raises(ConditioningError, match="contradictory bounds"):
        generate_with_constraints(gaussian, 10, 0, bounds=["ph < 7.2", "ph > 7.3"])


def test_infeasible_fixed_values_are_refused(gaussian):
    with pytest.raises(ConditioningError, match="infeasible.*hco3"):
        generate_with_constraints(gaussian, 10, 0, observed={"ph": 7.6, "base_excess": -30}, equations="all")


def test_bound_outside_plausible_range_is_infeasible(gaussian):
    with pytest.raises(ConditioningError, match="infeasible.*pao2"):
        generate_with_constraints(gaussian, 10, 0, bounds=["pao2 in [900, 1000]"])


def test_too_unlikely_bound_is_refused_with_acceptance_rate(gaussian):
    with pytest.raises(ConditioningError, match="too unlikely") as e:
        generate_with_constraints(gaussian, 20, 0, bounds=["paco2 >= 150"], max_proposals=20_000)
    assert "paco2 >= 150" in str(e.value) and "acceptance rate" in str(e.value)


@pytest.mark.parametrize("text", ["pao2 about 50", "pao2 in [50 60]", "in [1, 2]", "50 < pao2 > 60", ""])
def test_unparseable_bound_names_the_text(gaussian, text):
    with pytest.raises(ConditioningError, match="cannot parse bound") as e:
        generate_with_constraints(gaussian, 5, 0, bounds=[text])
    assert repr(text) in str(e.value)


def test_bound_errors_name_the_feature(gaussian):
    with pytest.raises(ConditioningError, match="unknown feature 'lactate'"):
        resolve_bounds(["lactate > 2"], gaussian.schema_)
    with pytest.raises(ConditioningError, match="empty interval"):
        resolve_bounds(["pao2 in [60, 50]"], gaussian.schema_)
    with pytest.raises(ConditioningError, match="empty interval"):
        resolve_bounds(["pao2 in [60, 60)"], gaussian.schema_)


def test_unknown_equation_lists_valid_names(gaussian):
    with pytest.raises(ConditioningError, match="unknown equation 'henderson'") as e:
        generate_with_constraints(gaussian, 5, 0, equations=["henderson"])
    for name in [*EQUATIONS, "all"]:
        assert name in str(e.value)


def test_schema_missing_a_feature_is_named(data):
    model = MultivariateGaussian().fit(data.drop(columns=["spo2"]))
    with pytest.raises(ConditioningError, match="severinghaus.*'spo2'"):
        generate_with_constraints(model, 5, 0, equations="severinghaus")
    out = generate_with_constraints(model, 50, 0, equations="all")  # "all" = every equation that applies
    assert set(maes(out)) == {"henderson_hasselbalch", "base_excess"}
    assert all(v < TOL for v in maes(out).values())


# ------------------------------------------------------------------ bound parsing
@pytest.mark.parametrize("text, expected", [
    ("pao2 in [50, 60]", Bound("pao2", 50, 60, True, True)),
    ("pao2 in (50,60]", Bound("pao2", 50, 60, False, True)),
    ("map >= 120", Bound("map", lower=120)),
    ("map ≥ 120", Bound("map", lower=120)),
    ("ph < 7.2", Bound("ph", upper=7.2, upper_inclusive=False)),
    ("ph<=7.2", Bound("ph", upper=7.2)),
    ("50 <= pao2 <= 60", Bound("pao2", 50, 60, True, True)),
    ("60 > pao2 > 50", Bound("pao2", 50, 60, False, False)),
    ("120 <= map", Bound("map", lower=120)),
    ("pao2 between 50 and 60", Bound("pao2", 50, 60)),
    ("base_excess > -5", Bound("base_excess", lower=-5, lower_inclusive=False)),
    ("pao2 = 55", Bound("pao2", 55, 55)),
])
def test_parse_bound(text, expected):
    b = parse_bound(text)
    assert (b.feature, b.lower, b.upper, b.lower_inclusive, b.upper_inclusive) == (
        expected.feature, expected.lower, expected.upper, expected.lower_inclusive, expected.upper_inclusive)
    assert str(b) == text


def test_point_bound_fixes_the_value(gaussian):
    out = generate_with_constraints(gaussian, 20, 0, bounds=["pao2 = 55"], equations="severinghaus")
    assert (out["pao2"] == 55).all() and (out["spo2"] == severinghaus_spo2(55.0)).all()


# ------------------------------------------------------------------ CLI
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    p.add_argument("-n", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--condition", action="append")
    return add_generate_options(p)


def test_cli_flags_generate_constrained_records(gaussian):
    args = _parser().parse_args(["-n", "200", "--condition", "ph=7.2", "--enforce", "henderson_hasselbalch,base_excess",
                                 "--bound", "pao2 in [50, 60]", "--bound", "heart_rate >= 90"])
    out = generate_from_args(gaussian, args)
    assert (out["ph"] == 7.2).all() and out["pao2"].between(50, 60).all() and (out["heart_rate"] >= 90).all()
    m = maes(out)
    assert m["henderson_hasselbalch"] < TOL and m["base_excess"] < TOL and m["severinghaus"] > 1e-3
    lines = report_lines(out)
    assert any("henderson_hasselbalch" in line and "(enforced)" in line for line in lines)
    assert any("pao2 in [50, 60]" in line for line in lines)


def test_cli_without_constraint_flags_is_plain_generation(gaussian):
    args = _parser().parse_args(["-n", "30", "--seed", "3", "--condition", "ph=7.3"])
    pd.testing.assert_frame_equal(generate_from_args(gaussian, args), gaussian.condition({"ph": 7.3}, n=30, seed=3))
    args = _parser().parse_args(["-n", "30", "--seed", "3"])
    pd.testing.assert_frame_equal(generate_from_args(gaussian, args), gaussian.sample(30, seed=3))


def test_cli_plugin_hook_is_harmless():
    from synthehr.cli import build_parser

    assert register_cli(None) is None
    build_parser()  # plugin import works


# ------------------------------------------------------------------ from noise: the model's own unconditional draws
class _BiasedConditional(MultivariateGaussian):
    """A Gaussian whose conditional path (impute) is off: every generated cell of the features no
    equation touches comes out 5 units high, while `sample` (its unconditional sampler) is right -- the
    VAE family's situation, whose calibrated `sample` is good but whose conditional decoder draws have
    tails too heavy for the skewed labs."""

    def impute(self, table, seed=0):
        out = super().impute(table, seed=seed)
        for f in ("heart_rate", "temperature"):
            hidden = table.reset_index(drop=True)[f].isna().to_numpy()
            out.loc[hidden, f] = out.loc[hidden, f] + 5.0
        return out


@pytest.fixture(scope="module")
def biased(data, schema) -> _BiasedConditional:
    return _BiasedConditional().fit(data, schema)


def test_from_noise_other_features_follow_the_unconditional_sampler(biased):
    """Blank rows start from whole `sample` draws: the equations hold exactly and the features no
    equation touches have the unconditional sampler's marginals (the old pipeline generated them with
    `impute` given the constrained values and inherited its bias: +5)."""
    n = 4000
    ref = biased.sample(n, seed=11)
    for eqs in ("all", "henderson_hasselbalch"):
        out = generate_with_constraints(biased, n, seed=12, equations=eqs)
        assert all(maes(out)[e] < TOL for e in (EQUATIONS if eqs == "all" else [eqs]))
        for f in ("heart_rate", "temperature"):
            assert abs(out[f].mean() - ref[f].mean()) < 4 * ref[f].std() * np.sqrt(2 / n), (eqs, f)
            assert stats.ks_2samp(out[f], ref[f]).pvalue > 1e-3, (eqs, f)
    # the equation inputs are the sampler's too, the targets their exact values
    out = generate_with_constraints(biased, n, seed=12, equations="henderson_hasselbalch")
    assert stats.ks_2samp(out["paco2"], ref["paco2"]).pvalue > 1e-3
    assert np.allclose(out["ph"], henderson_hasselbalch_ph(out["hco3"], out["paco2"]), rtol=0, atol=TOL)
    # ConstrainedGenerator.sample goes the same way
    gen = ConstrainedGenerator(biased, "all").sample(n, seed=12)
    assert abs(gen["heart_rate"].mean() - ref["heart_rate"].mean()) < 0.5


def test_from_noise_is_paired_with_the_unconstrained_sample_of_the_same_seed(biased):
    """generate_with_constraints(model, n, seed) starts from model.sample(n, seed): accepted records are
    those records with only the equations' targets recomputed; rejected ones (here: a bound that about a
    third of the draws miss) are replaced by other draws, so the comparison with and without enforcement
    is record by record."""
    n = 600
    ref = biased.sample(n, seed=5)
    out = generate_with_constraints(biased, n, seed=5, equations="henderson_hasselbalch")
    inputs = ["hco3", "paco2", "heart_rate", "temperature", "pao2"]
    ph_ref = henderson_hasselbalch_ph(ref["hco3"], ref["paco2"])
    kept = ph_ref.between(*RANGES["ph"]).to_numpy()  # a solved pH outside its plausible range is rejected
    assert 0.95 < kept.mean() < 1.0
    pd.testing.assert_frame_equal(out.loc[kept, inputs], ref.loc[kept, inputs])
    assert np.allclose(out.loc[kept, "ph"], ph_ref[kept], rtol=0, atol=TOL)
    assert (out.loc[~kept, "hco3"] != ref.loc[~kept, "hco3"]).all()
    cut = float(ref["heart_rate"].quantile(0.33))
    bounded = generate_with_constraints(biased, n, seed=5, equations="all", bounds=[f"heart_rate >= {cut}"])
    kept = ((ref["heart_rate"] >= cut) & ph_ref.between(*RANGES["ph"])).to_numpy()
    assert 0.5 < kept.mean() < 0.8 and (bounded["heart_rate"] >= cut).all()
    pd.testing.assert_frame_equal(bounded.loc[kept, inputs], ref.loc[kept, inputs])
    assert (bounded.loc[~kept, "heart_rate"] != ref.loc[~kept, "heart_rate"]).all()


def test_rows_that_fix_something_are_still_conditioned(biased):
    """condition() on given values (the app's edited real rows) keeps the conditional path: the given
    values come back exactly and the rest is generated by impute given them (here: its +5 shows)."""
    given = {"paco2": 60.0, "spo2": 97.0}
    out = generate_with_constraints(biased, 2000, seed=3, observed=given, equations="all")
    assert (out["paco2"] == 60.0).all() and (out["spo2"] == 97.0).all()
    assert all(v < TOL for v in maes(out).values())
    names, mu, cov = biased.conditional_mean_cov({})
    assert out["temperature"].mean() > mu[names.index("temperature")] + 4.0  # impute's shift: conditioned


def test_blank_and_given_rows_mixed_keep_their_order(biased):
    table = pd.DataFrame({"ph": [np.nan, 7.2, np.nan, np.nan], "paco2": [np.nan, np.nan, np.nan, 35.0]})
    out = impute_with_constraints(biased, table, seed=0, equations="all", bounds=["heart_rate > 60"])
    assert list(out.columns) == biased.schema_.names and len(out) == 4 and out.notna().all().all()
    assert out.loc[1, "ph"] == 7.2 and out.loc[3, "paco2"] == 35.0
    assert all(v < TOL for v in maes(out).values()) and (out["heart_rate"] > 60).all()
    again = impute_with_constraints(biased, table, seed=0, equations="all", bounds=["heart_rate > 60"])
    pd.testing.assert_frame_equal(out, again)
    blank = pd.DataFrame({"ph": [np.nan] * 3})
    a = impute_with_constraints(biased, blank, seed=0, equations="all")
    assert len(a) == 3 and all(v < TOL for v in maes(a).values())
