"""VAE family (vae / vaeac / pmvae): contract, calibration against closed-form Gaussian conditionals,
conditional NLL, missing training cells, determinism and a latency smoke test.

Nets are tiny and epochs few so the whole file runs in well under a minute on two shared cores.
Torch is pinned to one intra-op thread while this module runs (and restored afterwards): with
64-unit layers threading only adds synchronisation, and on a busy 2-core box two threads made a
training step ~10x slower. Results do not depend on the thread count.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from synthehr.errors import ConditioningError
from synthehr.models import (
    Generator,
    IndependentMarginals,
    MultivariateGaussian,
    check_generator,
    load_model,
    registered_models,
)
from synthehr.models.conditional import VAE, VAEAC, PosteriorMatchingVAE
from synthehr.models.training import make_generator

from .conftest import make_mixed_table, with_holes

MODELS = [VAE, VAEAC, PosteriorMatchingVAE]
CONDITIONAL_MODELS = [VAEAC, PosteriorMatchingVAE]
TINY = dict(hidden=(32,), latent_dim=4, epochs=3, batch_size=64)
SMALL = dict(hidden=(64, 64), latent_dim=4, epochs=30, batch_size=256, lr=2e-3)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------ registry and contract
def test_models_are_registered_under_their_names() -> None:
    known = registered_models()
    assert known["vae"] is VAE and known["vaeac"] is VAEAC and known["pmvae"] is PosteriorMatchingVAE
    model = make_generator("pmvae", n_components=3, epochs=1)
    assert isinstance(model, PosteriorMatchingVAE) and model.n_components == 3


@pytest.mark.parametrize("holes", [False, True], ids=["complete", "with_nans"])
@pytest.mark.parametrize("cls", MODELS, ids=lambda c: c.model_type)
def test_contract(cls: type[Generator], holes: bool, tmp_path: Path) -> None:
    data = with_holes(make_mixed_table()) if holes else make_mixed_table()
    assert len(check_generator(lambda: cls(**TINY), data, tmp_path=tmp_path)) == 9


@pytest.mark.parametrize("bad", [dict(latent_dim=0), dict(hidden=(0,)), dict(epochs=0), dict(batch_size=-1),
                                 dict(lr=0.0), dict(mask_rate=1.0), dict(latent_dim=2.5), dict(prior="normal")])
@pytest.mark.parametrize("cls", MODELS, ids=lambda c: c.model_type)
def test_bad_hyperparameters_are_refused(cls: type[Generator], bad: dict) -> None:
    with pytest.raises(ValueError):
        cls(**bad)


def test_model_specific_hyperparameters_are_checked() -> None:
    with pytest.raises(ValueError, match="n_components"):
        PosteriorMatchingVAE(n_components=0)
    with pytest.raises(ValueError, match="mask_augment"):
        VAE(mask_augment=1.5)


# ------------------------------------------------------------ Gaussian calibration set-up
MU = np.array([2.0, -1.0, 0.5])
SD = np.array([1.0, 2.0, 0.5])
R = np.array([[1.0, 0.8, 0.5],
              [0.8, 1.0, 0.6],
              [0.5, 0.6, 1.0]])
SIGMA = R * np.outer(SD, SD)
NAMES = ["a", "b", "c"]
X_A = MU[0] + 1.5 * SD[0]                        # condition on a, 1.5 sd above its mean
K_GAIN = SIGMA[1:, 0] / SIGMA[0, 0]
COND_MEAN = MU[1:] + K_GAIN * (X_A - MU[0])      # closed form: b moves 1.2 sd, c 0.75 sd
COND_SD = np.sqrt(np.diag(SIGMA)[1:] - K_GAIN**2 * SIGMA[0, 0])  # 0.6 and 0.87 of the marginal sd
TOL_SD = 0.25


def gaussian_table(n: int, seed: int) -> pd.DataFrame:
    return pd.DataFrame(np.random.default_rng(seed).multivariate_normal(MU, SIGMA, size=n), columns=NAMES)


@pytest.fixture(scope="module")
def gaussian_data() -> pd.DataFrame:
    return gaussian_table(5000, seed=0)


@pytest.fixture(scope="module")
def fitted(gaussian_data: pd.DataFrame) -> dict[str, Generator]:
    """One fit per model on the Gaussian table, shared by the calibration and NLL tests."""
    models: dict[str, Generator] = {cls.model_type: cls(**SMALL).fit(gaussian_data) for cls in MODELS}
    models["independent"] = IndependentMarginals().fit(gaussian_data)
    models["gaussian"] = MultivariateGaussian().fit(gaussian_data)
    return models


def calibration(model: Generator) -> tuple[np.ndarray, np.ndarray]:
    """(conditional mean − closed form, conditional sd) of b and c given a = X_A, in marginal sd."""
    out = model.condition({"a": X_A}, n=4000, seed=3)
    assert (out["a"] == X_A).all()
    draws = out[["b", "c"]].to_numpy()
    return (draws.mean(axis=0) - COND_MEAN) / SD[1:], draws.std(axis=0) / SD[1:]


@pytest.mark.parametrize("name", ["vaeac", "pmvae"])
def test_conditional_mean_moves_to_the_closed_form(fitted: dict[str, Generator], name: str) -> None:
    err, sd = calibration(fitted[name])
    assert np.all(np.abs(err) < TOL_SD), f"{name}: conditional mean off by {err} sd (tolerance {TOL_SD})"
    moved = err + (COND_MEAN - MU[1:]) / SD[1:]  # distance from the marginal mean, in sd
    assert np.all(moved > 0.5 * (COND_MEAN - MU[1:]) / SD[1:]), f"{name}: barely moved from the marginal: {moved}"
    # the spread shrinks as it should: b's conditional sd is 0.6 of its marginal sd
    assert 0.45 < sd[0] < 0.8, f"{name}: conditional sd of b is {sd[0]:.3f} marginal sd, closed form 0.6"


def test_independent_marginals_fail_the_same_check(fitted: dict[str, Generator]) -> None:
    """Negative control: a model without relations between features keeps the marginal mean."""
    err, sd = calibration(fitted["independent"])
    assert abs(err[0]) > 1.0 and abs(err[0]) > 4 * TOL_SD  # about 1.2 sd off
    assert sd[0] > 0.9


# ----------------------------------------------------------------------- conditional NLL
def true_conditional_log_density(test: pd.DataFrame, scale: np.ndarray) -> np.ndarray:
    """log p(b, c | a) of the generating Gaussian, in units standardized by `scale` (b, c)."""
    mean = MU[1:] + np.outer(test["a"].to_numpy() - MU[0], K_GAIN)
    cov = SIGMA[1:, 1:] - np.outer(K_GAIN, K_GAIN) * SIGMA[0, 0]
    resid = test[["b", "c"]].to_numpy() - mean
    return stats.multivariate_normal(np.zeros(2), cov).logpdf(resid) + np.log(scale).sum()


def test_conditional_nll_ranks_the_models(fitted: dict[str, Generator], gaussian_data: pd.DataFrame) -> None:
    test = gaussian_table(1000, seed=1)
    mask = np.zeros(test.shape, dtype=bool)
    mask[:, 0] = True  # given a, score b and c
    scale = gaussian_data[["b", "c"]].std().to_numpy()
    truth = -true_conditional_log_density(test, scale).mean()
    marginal = -stats.norm.logpdf((test[["b", "c"]] - gaussian_data[["b", "c"]].mean()) / scale).sum(axis=1).mean()
    nll = {name: -fitted[name].log_prob_unobserved(test, mask).mean() for name in ("gaussian", "vae", "vaeac", "pmvae")}
    assert np.isfinite(truth) and all(np.isfinite(v) for v in nll.values()), nll
    assert nll["gaussian"] == pytest.approx(truth, abs=0.05)  # same units as the exact model
    for name in ("vaeac", "pmvae"):
        assert abs(nll[name] - truth) < 0.15, (name, nll[name], truth)
        assert nll[name] < marginal - 0.4, (name, nll[name], marginal)
        # the paper's claim (Table III): arbitrary-conditioning training beats the masked-input VAE
        assert nll[name] < nll["vae"], nll
    assert nll["vae"] < marginal, nll


def test_log_prob_estimator_grows_with_samples_and_honours_seed(fitted: dict[str, Generator]) -> None:
    """log mean_k p(x_u|z_k) is biased low (Jensen); more samples can only raise it on average."""
    model = fitted["pmvae"]
    test = gaussian_table(500, seed=2)
    mask = np.zeros(test.shape, dtype=bool)
    mask[:, 0] = True
    one = model.log_prob_unobserved(test, mask, num_samples=1, seed=0).mean()
    many = model.log_prob_unobserved(test, mask, num_samples=100, seed=0).mean()
    assert many > one
    np.testing.assert_array_equal(model.log_prob_unobserved(test, mask, seed=4),
                                  model.log_prob_unobserved(test, mask, seed=4))


def test_log_prob_unobserved_masks_and_shapes() -> None:
    model = VAEAC(**TINY).fit(make_mixed_table())
    table = make_mixed_table(20, seed=3)
    mask = pd.DataFrame(False, index=range(20), columns=table.columns)
    mask["age"] = True
    mask.loc[0, :] = True  # nothing left to score
    lp = model.log_prob_unobserved(table, mask)
    assert lp.shape == (20,) and np.isfinite(lp).all() and lp[0] == 0.0
    # only continuous cells by default; discrete ones add their (negative) log-probabilities
    with_discrete = model.log_prob_unobserved(table, mask, include_discrete=True)
    assert np.all(with_discrete[1:] < lp[1:]) and with_discrete[0] == 0.0
    with pytest.raises(ConditioningError):
        model.log_prob_unobserved(table, np.ones((3, 6), dtype=bool))


# --------------------------------------------------------------- missing training cells
@pytest.mark.parametrize("cls", MODELS, ids=lambda c: c.model_type)
def test_missing_training_cells_never_reach_the_loss(cls: type[Generator]) -> None:
    """The loss of a batch is the same whatever the NaN cells are encoded as: nets see the mask."""
    data = with_holes(make_mixed_table(), rate=0.3)
    model = cls(**TINY).fit(data)
    x_np, present_np = model.codec_.encode(data)
    x, present = torch.from_numpy(x_np), torch.from_numpy(present_np)
    assert (~present).any()
    garbage = torch.where(model.codec_.expand(present), x, torch.full_like(x, 1e3))
    losses = []
    for xb in (x, garbage):
        torch.manual_seed(5)
        with torch.no_grad():
            losses.append(float(model._loss(xb, present)))
    assert np.isfinite(losses[0]) and losses[0] == losses[1]


@pytest.mark.parametrize("cls", MODELS, ids=lambda c: c.model_type)
def test_thirty_percent_missing_cells(cls: type[Generator]) -> None:
    data = gaussian_table(5000, seed=0)
    rng = np.random.default_rng(5)
    holes = rng.random(data.shape) < 0.3
    holes[holes.all(axis=1), 0] = False
    model = cls(**SMALL).fit(data.mask(holes))
    assert len(model.history_) == SMALL["epochs"] and np.isfinite(model.history_).all()
    out = model.sample(2000, seed=0)
    assert not out.isna().any().any()
    # mean-filling would shrink each column's spread to about sqrt(0.7) = 0.84 of its sd
    assert np.all(out.std().to_numpy() / SD > 0.9), out.std().to_numpy() / SD
    if cls in CONDITIONAL_MODELS:
        err, _ = calibration(model)
        assert np.all(np.abs(err) < TOL_SD), err
    imputed = model.impute(data.mask(holes).head(200), seed=0)
    assert not imputed.isna().any().any()


# --------------------------------------------------------------- mixed-type conditioning
@pytest.mark.parametrize("cls", CONDITIONAL_MODELS, ids=lambda c: c.model_type)
def test_categorical_and_binary_conditioning_move_correlated_features(cls: type[Generator]) -> None:
    """stage is cut from sbp's latent, female from age's: conditioning on one must move the other."""
    model = cls(**{**SMALL, "batch_size": 128}).fit(make_mixed_table(2000, seed=7))
    low = model.condition({"stage": "I"}, 2000, seed=1)
    high = model.condition({"stage": "III"}, 2000, seed=1)
    assert (low["stage"] == "I").all() and (high["stage"] == "III").all()
    assert high["sbp"].mean() - low["sbp"].mean() > 15.0  # closed form about 34 mmHg
    old = model.condition({"age": 80.0}, 2000, seed=1)  # 1.67 sd above the mean age
    assert old["female"].mean() > 0.75  # closed form 0.95; marginal 0.5


# ---------------------------------------------------------------- determinism and state
def test_training_is_deterministic_for_a_seed(mixed_table: pd.DataFrame) -> None:
    a, _ = PosteriorMatchingVAE(**TINY, seed=3).fit(mixed_table).get_state()
    b, _ = PosteriorMatchingVAE(**TINY, seed=3).fit(mixed_table).get_state()
    c, _ = PosteriorMatchingVAE(**TINY, seed=4).fit(mixed_table).get_state()
    assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(a[k], c[k]) for k in a)


def test_fit_sample_and_load_leave_the_callers_torch_rng_alone(mixed_table: pd.DataFrame, tmp_path: Path) -> None:
    torch.manual_seed(123)
    before = torch.random.get_rng_state().clone()
    model = VAEAC(**TINY).fit(mixed_table)
    model.sample(10, seed=1)
    model.condition({"age": 50.0}, 5, seed=1)
    loaded = load_model(model.save(tmp_path / "m"))
    assert torch.equal(torch.random.get_rng_state(), before)
    assert isinstance(loaded, VAEAC) and loaded.hidden == (32,) and loaded.history_ == model.history_


def test_pm_loss_trains_only_the_matching_network(mixed_table: pd.DataFrame) -> None:
    """L_PM uses a detached z: its gradient reaches q_θ, never the VAE's encoder or decoder."""
    model = PosteriorMatchingVAE(**TINY).fit(mixed_table)
    x_np, present_np = model.codec_.encode(mixed_table)
    x, present = torch.from_numpy(x_np), torch.from_numpy(present_np)
    model.nets_.zero_grad(set_to_none=True)
    mu, _ = model.nets_["encoder"](model._observed_input(x, present)).chunk(2, dim=-1)
    observed = present & (torch.rand(present.shape) < 0.5)
    model._matching_loss(mu, x, observed).mean().backward()
    assert all(p.grad is None for name in ("encoder", "decoder") for p in model.nets_[name].parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.nets_["matching"].parameters())


# ------------------------------------------------------------------------- latency smoke
def test_condition_latency_smoke() -> None:
    """Default-size nets (latent 16, 256-256) on a 31-column grid-like table; printed, not a target."""
    rng = np.random.default_rng(0)
    data = pd.DataFrame(rng.normal(size=(500, 30)), columns=[f"f{i}" for i in range(30)])
    data["label"] = (rng.random(500) < 0.2).astype(np.int64)
    observed = {"f0": 0.3, "f7": -1.0, "label": 1}
    for cls in MODELS:
        model = cls(epochs=1).fit(data)
        model.condition(observed, n=100, seed=0)
        times = []
        for seed in range(10):
            start = time.perf_counter()
            model.condition(observed, n=100, seed=seed)
            times.append(time.perf_counter() - start)
        print(f"{cls.model_type}: condition(n=100) median {1000 * np.median(times):.1f} ms")
        assert np.median(times) < 0.5  # sanity bound only


# ------------------------------------------------------- quantile → normal transform (codec)
def skewed_table(n: int = 3000, seed: int = 0) -> pd.DataFrame:
    """A log-normal 'lab' with repeated (rounded) values, a correlated one, and a binary column."""
    rng = np.random.default_rng(seed)
    z = rng.multivariate_normal([0.0, 0.0], [[1.0, 0.7], [0.7, 1.0]], size=n)
    return pd.DataFrame({"alt": np.round(np.exp(3.0 + 1.2 * z[:, 0]), 0),
                         "ast": np.exp(3.2 + 1.0 * z[:, 1]),
                         "flag": (z[:, 0] > 1.0).astype(np.int64)})


def test_quantile_map_round_trips_exactly_on_the_training_range() -> None:
    from synthehr.models.conditional import MixedCodec
    from synthehr.models.schema import TableSchema

    data = skewed_table()
    codec = MixedCodec.fit(TableSchema.infer(data), data, transform="quantile")
    raw = data[["alt", "ast"]].to_numpy(dtype=float)
    t = codec.forward(raw)
    assert np.isfinite(t).all() and abs(t.mean()) < 0.1 and 0.8 < t.std() < 1.2  # normal scores
    np.testing.assert_allclose(codec.inverse(t), raw, rtol=1e-12, atol=1e-9)
    # between and beyond the knots: forward is strictly increasing; inverse undoes it inside the range
    grid = np.linspace(raw.min(axis=0) - 50, raw.max(axis=0) + 50, 4001)
    ft = codec.forward(grid)
    assert (np.diff(ft, axis=0) > 0).all()
    inside = (grid >= raw.min(axis=0)) & (grid <= raw.max(axis=0))
    back = codec.inverse(ft)
    np.testing.assert_allclose(back[inside], grid[inside], rtol=1e-10, atol=1e-8)
    # generated values never leave the training range (inverse clamps scores past the end knots)
    wild = codec.inverse(np.array([[-40.0, 40.0], [40.0, -40.0]]))
    assert (wild >= raw.min(axis=0)).all() and (wild <= raw.max(axis=0)).all()
    # the Jacobian is that of the map: finite-difference check at a point inside a segment
    x0 = np.array([[37.5, 25.3]])
    h = 1e-4
    fd = (codec.forward(x0 + h) - codec.forward(x0 - h)) / (2 * h) * codec.scale
    np.testing.assert_allclose(np.exp(codec.log_jacobian(x0)), fd, rtol=1e-4)
    # the standard transform is exactly (x - mean) / sd with a zero log-Jacobian
    std = MixedCodec.fit(TableSchema.infer(data), data)
    np.testing.assert_allclose(std.forward(raw), (raw - std.loc) / std.scale)
    assert (std.log_jacobian(raw) == 0).all()


@pytest.mark.parametrize("cls", MODELS, ids=lambda c: c.model_type)
def test_quantile_models_return_observed_values_exactly_and_survive_save_load(cls: type[Generator],
                                                                              tmp_path: Path) -> None:
    data = skewed_table()
    model = cls(**TINY).fit(data)
    assert model.transform == "quantile" and model.codec_.knots is not None
    given = {"alt": 12345.678, "ast": 0.0123}  # far outside the training range on both sides
    out = model.condition(given, n=50, seed=0)
    assert (out["alt"] == given["alt"]).all() and (out["ast"] == given["ast"]).all()
    masked = data.head(100).copy()
    masked.loc[::2, "ast"] = np.nan
    imputed = model.impute(masked, seed=0)
    keep = masked.notna()
    assert (imputed[keep] == masked[keep]).sum().sum() == keep.sum().sum()
    gen = imputed.loc[~keep["ast"], "ast"]
    assert gen.between(data["ast"].min(), data["ast"].max()).all()
    loaded = load_model(model.save(tmp_path / "m"))
    for a, b in zip(loaded.codec_.knots, model.codec_.knots):
        np.testing.assert_array_equal(a[0], b[0]) and np.testing.assert_array_equal(a[1], b[1])
    pd.testing.assert_frame_equal(loaded.sample(20, seed=1), model.sample(20, seed=1))
    np.testing.assert_array_equal(loaded.log_prob_unobserved(masked.fillna(1.0), masked.isna().to_numpy() == False),
                                  model.log_prob_unobserved(masked.fillna(1.0), masked.isna().to_numpy() == False))


def test_a_saved_quantile_model_without_its_maps_is_refused(tmp_path: Path) -> None:
    from synthehr.errors import ModelFileError

    model = VAE(**TINY).fit(skewed_table(500))
    tensors, state = model.get_state()
    del tensors["codec.knots_u"]
    with pytest.raises(ModelFileError, match="quantile maps"):
        _set_state_on(model, tensors, state)


def _set_state_on(model: Generator, tensors: dict, state: dict) -> None:
    fresh = type(model)(**model.hyperparameters)
    fresh.schema_ = model.schema_
    fresh.set_state(tensors, state)


def test_quantile_nll_is_in_standardized_raw_units() -> None:
    """On log-normal data the quantile model's NLL (with the Jacobian) beats the Gaussian's and the
    standard-transform model's: both score the same standardized raw values."""
    data, test = skewed_table(4000, seed=0), skewed_table(1000, seed=1)
    mask = np.zeros(test.shape, dtype=bool)
    mask[:, 0] = True  # given alt, score ast
    kw = dict(SMALL, epochs=20)
    nll = {t: -VAEAC(**kw, transform=t).fit(data).log_prob_unobserved(test, mask).mean()
           for t in ("quantile", "standard")}
    nll["gaussian"] = -MultivariateGaussian().fit(data).log_prob_unobserved(test, mask).mean()
    # truth: ast | alt is log-normal; its density in units of ast's training sd
    z0 = (np.log(np.maximum(test["alt"], 0.5)) - 3.0) / 1.2
    mu, sd = 3.2 + 0.7 * z0, np.sqrt(1 - 0.49)
    truth = -np.mean(stats.norm.logpdf(np.log(test["ast"]), mu, sd) - np.log(test["ast"])
                     + np.log(data["ast"].std()))
    assert nll["quantile"] < nll["standard"] - 0.2 and nll["quantile"] < nll["gaussian"] - 0.2, nll
    assert abs(nll["quantile"] - truth) < 0.25, (nll, truth)


@pytest.mark.parametrize("transform", ["quantile", "standard"])
def test_conditional_mean_matches_the_closed_form_and_keeps_observed(fitted: dict[str, Generator],
                                                                     gaussian_data: pd.DataFrame,
                                                                     transform: str) -> None:
    model = fitted["vaeac"] if transform == "quantile" else VAEAC(**SMALL, transform="standard").fit(gaussian_data)
    table = pd.DataFrame({"a": [X_A, X_A], "b": [np.nan, 1.25], "c": [np.nan, np.nan]})
    cm = model.conditional_mean(table, num_samples=400, seed=0)
    assert cm.loc[0, "a"] == X_A and cm.loc[1, "b"] == 1.25
    err = (cm.loc[0, ["b", "c"]].to_numpy(dtype=float) - COND_MEAN) / SD[1:]
    assert np.all(np.abs(err) < TOL_SD), err
    again = model.conditional_mean(table, num_samples=400, seed=0)
    pd.testing.assert_frame_equal(cm, again)


def test_epochs_default_scales_with_the_table() -> None:
    model = VAEAC()
    assert model.epochs is None and model.epochs_for(5000) == 160 and model.epochs_for(48000) == 40
    assert VAEAC(epochs=7).epochs_for(5000) == 7
    with pytest.raises(ValueError):
        VAEAC(transform="log")
    with pytest.raises(ValueError):
        VAEAC(lr_schedule="step")


def test_gibbs_rounds_refine_samples_deterministically(mixed_table: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="gibbs_rounds"):
        VAEAC(gibbs_rounds=-1)
    model = VAEAC(**TINY, gibbs_rounds=2).fit(mixed_table)
    a, b = model.sample(50, seed=3), model.sample(50, seed=3)
    pd.testing.assert_frame_equal(a, b)
    assert not a.isna().any().any() and set(a["stage"]) <= {"I", "II", "III"}
    model.gibbs_rounds = 0
    assert not model.sample(50, seed=3).equals(a)


# ------------------------------------------------------------ sampling from noise
def tied_table(n: int = 2000, seed: int = 0) -> pd.DataFrame:
    """An ICU-grid-like lab: 60 % of rows hold one filled-in median (a tie), the rest a rounded
    log-normal; a bimodal vital correlated with it; a binary flag."""
    rng = np.random.default_rng(seed)
    z = rng.multivariate_normal([0.0, 0.0], [[1.0, 0.6], [0.6, 1.0]], size=n)
    alt = np.round(np.exp(3.5 + 1.3 * z[:, 0]), 0)
    alt[rng.random(n) < 0.6] = 33.0
    second_mode = rng.random(n) < 0.3
    return pd.DataFrame({"alt": alt, "map": np.where(second_mode, 60.0, 90.0) + 6.0 * z[:, 1],
                         "flag": (z[:, 0] > 1.0).astype(np.int64)})


@pytest.mark.parametrize("cls", MODELS, ids=lambda c: c.model_type)
def test_samples_from_noise_match_the_training_marginals_and_leave_conditioning_alone(cls: type[Generator]) -> None:
    data = tied_table()
    # point masses off: this is about the sampler alone (point masses bring the tie back by themselves)
    new = cls(**SMALL, point_mass_share=0.0).fit(data)
    old = cls(**SMALL, prior="model", calibrate_marginals=False, point_mass_share=0.0).fit(data)
    tn, _ = new.get_state()
    to, _ = old.get_state()
    # the sampler is fitted after training, from its own random stream: the nets are the same
    assert all(np.array_equal(tn[k], to[k]) for k in to)
    assert {"sampler.gmm_means", "sampler.calib_u"} <= set(tn) and not any(k.startswith("sampler.") for k in to)
    xn, xo = new.sample(20000, seed=0), old.sample(20000, seed=0)
    tie = float((data["alt"] == 33.0).mean())
    # the filled-in median comes back as itself as often as in the data (the Gaussian decoder alone: never)
    assert abs(float((xn["alt"] == 33.0).mean()) - tie) < 0.03 and float((xo["alt"] == 33.0).mean()) < 0.05
    rel = lambda x: abs(x["alt"].mean() / data["alt"].mean() - 1.0)  # noqa: E731
    assert rel(xn) < 0.04 and rel(xn) < rel(xo)
    assert stats.ks_2samp(xn["map"], data["map"]).statistic < 0.03
    assert xn["alt"].between(data["alt"].min(), data["alt"].max()).all()
    # conditioning, imputation and the conditional density do not use the unconditional sampler
    masked = data.head(60).copy()
    masked.loc[::2, "alt"] = np.nan
    pd.testing.assert_frame_equal(new.impute(masked, seed=1), old.impute(masked, seed=1))
    full, hidden = data.head(60), masked.isna().to_numpy()
    np.testing.assert_array_equal(new.log_prob_unobserved(full, ~hidden), old.log_prob_unobserved(full, ~hidden))


def test_the_fitted_sampler_survives_save_load_and_an_older_file_samples_as_before(tmp_path: Path) -> None:
    from synthehr.errors import ModelFileError

    model = VAEAC(**TINY).fit(tied_table(500))
    assert model.gmm_ is not None and model.calibration_ is not None
    loaded = load_model(model.save(tmp_path / "m"))
    pd.testing.assert_frame_equal(loaded.sample(300, seed=2), model.sample(300, seed=2))
    tensors, state = model.get_state()
    for key in ("sampler.gmm_chol", "sampler.calib_len"):
        broken = {k: v for k, v in tensors.items() if k != key}
        with pytest.raises(ModelFileError):
            _set_state_on(model, broken, state)
    older = type(model)(**model.hyperparameters)  # a file saved before the sampler existed
    older.schema_ = model.schema_
    older.set_state({k: v for k, v in tensors.items() if not k.startswith("sampler.")}, state)
    assert older.gmm_ is None and older.calibration_ is None
    plain = VAEAC(**TINY, prior="model", calibrate_marginals=False).fit(tied_table(500))
    pd.testing.assert_frame_equal(older.sample(300, seed=2), plain.sample(300, seed=2))



def filled_labs_table(n: int = 3000, seed: int = 0) -> pd.DataFrame:
    """Two strongly correlated labs (log-normal, r = 0.9 on the log scale) that are measured
    together in 40 % of rows and otherwise both hold their filled-in median (the ICU grid's AST / ALT),
    and a vital measured everywhere."""
    rng = np.random.default_rng(seed)
    z = rng.multivariate_normal([0.0, 0.0], [[1.0, 0.9], [0.9, 1.0]], size=n)
    ast, alt = np.round(np.exp(3.8 + z[:, 0]), 0), np.round(np.exp(3.6 + z[:, 1]), 0)
    filled = rng.random(n) < 0.6
    ast[filled], alt[filled] = 45.0, 37.0
    return pd.DataFrame({"ast": ast, "alt": alt, "hr": 85.0 + 12.0 * rng.standard_normal(n)})


@pytest.mark.parametrize("cls", MODELS, ids=lambda c: c.model_type)
def test_point_masses_keep_filled_values_and_the_correlation_of_the_measured_ones(cls: type[Generator],
                                                                                  tmp_path: Path) -> None:
    """A continuous column whose most frequent value holds >= point_mass_share of it gets a point mass:
    a Bernoulli "at that value" beside a density of its other values. Filled-in medians then come back
    as themselves, together, and the measured values keep their correlation."""
    data = filled_labs_table()
    model = cls(**SMALL).fit(data)
    codec = model.codec_
    assert codec.mass_values.tolist() == [45.0, 37.0]  # hr: no value holds 5 %
    flat = cls(**SMALL, point_mass_share=0.0).fit(data)  # the tie is only a stretch of the quantile map
    assert len(flat.codec_.mass_k) == 0 and flat.codec_.in_dim == codec.in_dim - 2

    def together(m: Generator) -> float:
        x = m.sample(6000, seed=0)
        at_ast, at_alt = x["ast"] == 45.0, x["alt"] == 37.0
        assert abs(at_ast.mean() - 0.6) < 0.05 and abs(at_alt.mean() - 0.6) < 0.05
        return float((at_ast == at_alt).mean())  # the data: 1.0

    assert together(model) > 0.75 and together(model) > together(flat) + 0.05
    # conditioning: a given filled value is the mass, and the other lab follows it (flat: never exactly)
    out = model.condition({"ast": 45.0}, n=400, seed=1)
    assert (out["ast"] == 45.0).all() and (out["alt"] == 37.0).mean() > 0.8
    assert (flat.condition({"ast": 45.0}, n=400, seed=1)["alt"] == 37.0).mean() < 0.05
    out = model.condition({"ast": 300.0}, n=400, seed=1)
    assert (out["alt"] != 37.0).mean() > 0.75
    # the conditional mean mixes the mass and the density; NLL scores a mass cell by its probability
    cm = model.conditional_mean(pd.DataFrame({"ast": [45.0, 300.0], "alt": [np.nan, np.nan], "hr": [80.0, 80.0]}))
    assert 30.0 < cm.loc[0, "alt"] < 60.0 and cm.loc[1, "alt"] > cm.loc[0, "alt"]
    lp = model.log_prob_unobserved(data.head(50), np.array([[True, False, True]] * 50), num_samples=20)
    assert np.isfinite(lp).all()
    # saved with the weights; loading rebuilds the same codec and samples the same rows
    loaded = load_model(model.save(tmp_path / "m"))
    pd.testing.assert_frame_equal(loaded.sample(200, seed=3), model.sample(200, seed=3))
    with pytest.raises(ValueError, match="point_mass_share"):
        cls(point_mass_share=1.5)


def test_saved_point_masses_are_checked(tmp_path: Path) -> None:
    from synthehr.errors import ModelFileError

    model = VAE(**TINY).fit(filled_labs_table(500))
    tensors, state = model.get_state()
    assert tensors["codec.mass_k"].tolist() == [0, 1]
    for broken in ({k: v for k, v in tensors.items() if k != "codec.mass_values"},
                   {**tensors, "codec.mass_k": np.array([0, 7])},
                   {**tensors, "codec.mass_values": np.array([45.0, np.nan])}):
        with pytest.raises(ModelFileError, match="point mass"):
            _set_state_on(model, broken, state)


def test_calibration_draws_scale_with_the_table_and_the_tail_knots_stop_at_its_resolution() -> None:
    from synthehr.models.conditional.encoding import (CALIBRATION_MAX_CELLS, CALIBRATION_MIN_DRAWS,
                                                      calibration_draws, fit_calibration_map)

    assert calibration_draws(200, 5) == CALIBRATION_MIN_DRAWS
    assert calibration_draws(48_000, 29) == 960_000          # 20 per training row
    assert calibration_draws(48_000, 180) == CALIBRATION_MAX_CELLS // 180  # memory-bounded
    rng = np.random.default_rng(0)
    generated, target = rng.standard_normal(400_000), rng.standard_normal(1_000)
    u, y = fit_calibration_map(generated, target)
    # the end knots sit at level 1/(2 x 1,000), where ~200 generated draws pin the quantile down,
    # not at 1/400,000, a level one or two draws decide
    assert abs(u[0] - stats.norm.ppf(1 / 2_000)) < 0.05 and abs(u[-1] - stats.norm.ppf(1 - 1 / 2_000)) < 0.05
    assert y[0] >= target.min() and y[-1] <= target.max()
    np.testing.assert_allclose(np.interp(generated, u, y).mean(), target.mean(), atol=0.02)


def test_column_weights_are_validated_saved_and_change_only_training(tmp_path: Path) -> None:
    from synthehr.errors import DataError
    from synthehr.models.conditional.encoding import parse_column_weights

    assert parse_column_weights("y:30, x:2.5") == {"y": 30.0, "x": 2.5}
    assert parse_column_weights(None) is None and parse_column_weights("") is None
    for bad in ("y", "y:0", "y:nan", "y:-1", {"y": "a lot"}):
        with pytest.raises(ValueError):
            parse_column_weights(bad)
    data = make_mixed_table(400, seed=3)
    with pytest.raises(DataError, match="no_such_column"):
        VAE(**TINY, column_weights={"no_such_column": 2.0}).fit(data)
    name = data.columns[0]
    plain, weighted = VAE(**TINY).fit(data), VAE(**TINY, column_weights=f"{name}:50").fit(data)
    assert weighted.hyperparameters["column_weights"] == {name: 50.0}
    assert not plain.sample(50, seed=1).equals(weighted.sample(50, seed=1))  # a different fit
    loaded = load_model(weighted.save(tmp_path / "w"))
    assert loaded.hyperparameters["column_weights"] == {name: 50.0}
    pd.testing.assert_frame_equal(loaded.sample(50, seed=1), weighted.sample(50, seed=1))
