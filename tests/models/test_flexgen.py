"""FLEXGEN-EHR latent diffusion: contract, missing modality, guidance, DDIM, GW alignment, save/load.

Small toy stay tables and a few epochs keep the whole file well under a minute on two cores.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
import torch

from synthehr.errors import DataError
from synthehr.models import check_generator, load_model
from synthehr.models.latent_diffusion import (FlexGenEHR, drop_modalities, fit_affine_map, gw_coupling,
                                              modality_columns, parse_temporal, stay_table)
from synthehr.models.latent_diffusion.diffusion import Denoiser, Schedule, sample_latents, train_denoiser
from synthehr.models.schema import ColumnSpec, TableSchema

LABEL = "in_hospital_mortality"
TINY = dict(vae_epochs=6, diffusion_epochs=12, batch_size=64, static_hidden=(32,), temporal_hidden=24,
            diffusion_hidden=64, condition_candidates=8)


def toy_stays(n: int = 240, steps: int = 4, seed: int = 0) -> tuple[pd.DataFrame, TableSchema]:
    """A latent severity drives the label and both modalities, so the label is learnable from either."""
    rng = np.random.default_rng(seed)
    sev = rng.normal(size=n)
    sex = np.where(rng.random(n) < 0.5, "F", "M")
    height = np.where(sex == "F", 163.0, 177.0) + rng.normal(0, 7, n)
    height[rng.random(n) < 0.3] = np.nan  # cells missing inside a present modality
    cols: dict = {"age": np.clip(60 + 12 * sev + rng.normal(0, 6, n), 18, 95), "sex": sex, "height": height,
                  "icu_type": rng.choice(["CCU", "MICU", "SICU"], size=n, p=[0.2, 0.5, 0.3])}
    trend = rng.normal(0, 1, n)
    for k in range(steps):
        cols[f"hr__t{k}"] = 85 + 12 * sev + 3 * k * trend + rng.normal(0, 3, n)
        cols[f"lac__t{k}"] = np.exp(0.3 + 0.5 * sev + 0.05 * k + rng.normal(0, 0.15, n))
        cols[f"vent__t{k}"] = (sev + rng.normal(0, 0.6, n) > 0.5).astype(np.int64)
    cols[LABEL] = (sev + 0.3 * rng.normal(size=n) > 0.6).astype(np.int64)
    specs = [ColumnSpec("age", "continuous", lower=0, upper=120), ColumnSpec("sex", "categorical", ("F", "M")),
             ColumnSpec("height"), ColumnSpec("icu_type", "categorical", ("CCU", "MICU", "SICU"))]
    for k in range(steps):
        specs += [ColumnSpec(f"hr__t{k}"), ColumnSpec(f"lac__t{k}", lower=0), ColumnSpec(f"vent__t{k}", "binary")]
    specs.append(ColumnSpec(LABEL, "binary"))
    return pd.DataFrame(cols), TableSchema(specs)


@pytest.fixture(scope="module")
def toy():
    return toy_stays()


@pytest.fixture(scope="module")
def fitted(toy):
    df, schema = toy
    return FlexGenEHR(**TINY).fit(df, schema)


def _valid(out: pd.DataFrame, schema: TableSchema, n: int) -> None:
    assert list(out.columns) == schema.names and len(out) == n
    assert not out.isna().any().any()
    for k in range(4):
        assert set(out[f"vent__t{k}"].unique()) <= {0, 1}
    assert set(out["sex"].unique()) <= {"F", "M"}


# ---------------------------------------------------------------------------------- contract
def test_contract(toy, tmp_path):
    df, schema = toy
    passed = check_generator(lambda: FlexGenEHR(**TINY), df, schema, tmp_path=tmp_path)
    assert len(passed) == 9


def test_registered_and_hyperparameters_validated():
    from synthehr.models.training import make_generator

    assert isinstance(make_generator("flexgen", vae_epochs=1), FlexGenEHR)
    for bad in (dict(sampler="euler"), dict(encoder="gru"), dict(imputation="mean"), dict(beta_start=0.1),
                dict(p_uncond=1.5), dict(static_latent=0)):
        with pytest.raises(ValueError):
            FlexGenEHR(**bad)


def test_table_without_temporal_columns_is_refused(toy):
    df, schema = toy
    static = [c for c in schema.names if "__t" not in c]
    with pytest.raises(DataError, match="FEATURE__tK"):
        FlexGenEHR(**TINY).fit(df[static], TableSchema([schema[c] for c in static]))


# ------------------------------------------------------------------------- missing modality
@pytest.mark.parametrize("imputation", ["gw", "knn"])
def test_trains_with_40_percent_missing_a_modality(toy, imputation):
    df, schema = toy
    dropped = drop_modalities(df, schema, static_only=0.2, temporal_only=0.2, label=LABEL, seed=3)
    static, temporal = modality_columns(schema.names, LABEL)
    assert dropped[temporal].isna().all(axis=1).mean() == pytest.approx(0.2, abs=0.01)
    assert dropped[static].isna().all(axis=1).mean() == pytest.approx(0.2, abs=0.01)
    model = FlexGenEHR(imputation=imputation, **TINY).fit(dropped, schema)
    assert model.info_["rows_static_only"] == 48 and model.info_["rows_temporal_only"] == 48
    assert imputation in model.info_["alignment"].lower() or "gw" in model.info_["alignment"].lower()
    for name, losses in model.history_.items():
        assert losses and np.isfinite(losses).all(), name
    out = model.sample(100, seed=1)
    _valid(out, schema, 100)
    # a static-only record asks for its temporal part (and vice versa): complete rows come back
    filled = model.impute(dropped.head(20), seed=0)
    _valid(filled, schema, 20)


def test_gw_alignment_recovers_a_known_permutation():
    rng = np.random.default_rng(0)
    n = 80
    centers = rng.normal(size=(4, 4)) * 3
    group = rng.integers(0, 4, n)
    zt = centers[group] + rng.normal(size=(n, 4)) * [1.0, 0.7, 0.5, 0.3]
    y = (group >= 2).astype(int)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    zs_true = zt @ q[:4] + rng.normal(size=(n, 6)) * 0.05   # another space: rotated, embedded in 6-D
    perm = rng.permutation(n)
    zs, ys = zs_true[perm], y[perm]
    partner = np.argsort(perm)                               # zt[i] ↔ zs[partner[i]]
    coupling = gw_coupling(zt, zs, y, ys, epsilon=0.003)
    assert coupling.shape == (n, n) and abs(coupling.sum() - 1) < 1e-3
    accuracy = np.mean(coupling.argmax(1) == partner)
    assert accuracy > 0.5, f"GW matched {accuracy:.2f} of points (chance {1 / n:.3f})"
    # least-squares map from the barycentric pseudo-pairs imputes far better than the mean
    from synthehr.models.latent_diffusion import barycentric_projection

    amap = fit_affine_map(zt, barycentric_projection(coupling, zs))
    err_map = np.mean((amap(zt) - zs_true) ** 2)
    err_mean = np.mean((zs_true.mean(0) - zs_true) ** 2)
    assert err_map < 0.2 * err_mean


# ----------------------------------------------------------------------------------- guidance
@pytest.fixture
def one_thread():
    """Tiny nets on a shared CPU: one torch thread is much faster than two contended ones."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_guidance_moves_latents_towards_the_label(one_thread):
    """The denoiser alone (no label-specific start) must move samples towards the requested class."""
    gen = torch.Generator().manual_seed(0)
    n = 600
    y = torch.randint(0, 2, (n,), generator=gen)
    z0 = torch.randn((n, 2), generator=gen) * 0.4 + (2.0 * y.float() - 1.0).unsqueeze(1)
    net = Denoiser(2, 2, hidden=64, layers=3)
    sched = Schedule(50, 1e-4, 1e-2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        train_denoiser(net, z0, y, sched, epochs=40, batch_size=128, lr=2e-3, p_uncond=0.2, generator=gen)
    start = torch.randn((400, 2), generator=torch.Generator().manual_seed(1))   # overall N(0, I) start

    def mean_for(label: int, w: float) -> float:
        yy = torch.full((400,), label, dtype=torch.long)
        z = sample_latents(net, sched, start, yy, generator=torch.Generator().manual_seed(2), guidance_weight=w)
        return float(z.mean())

    null = mean_for(2, 0.0)
    assert mean_for(1, 3.0) > null + 0.3
    assert mean_for(0, 3.0) < null - 0.3
    assert mean_for(1, 3.0) > mean_for(1, 0.0)      # more guidance, further towards the class


def test_label_conditioned_sampling_yields_more_label_1_records():
    from sklearn.linear_model import LogisticRegression

    df, schema = toy_stays(n=400, seed=5)
    features = [c for c in schema.names if c not in (LABEL, "sex", "icu_type", "height")]
    clf = LogisticRegression(max_iter=2000).fit(df[features], df[LABEL])  # the label is learnable
    model = FlexGenEHR(**{**TINY, "vae_epochs": 25, "diffusion_epochs": 40}, guidance_weight=2.0).fit(df, schema)
    uncond = model.sample(300, seed=0)
    deaths = model.condition({LABEL: 1}, n=300, seed=0)
    assert (deaths[LABEL] == 1).all()
    rate_uncond = clf.predict(uncond[features]).mean()
    rate_cond = clf.predict(deaths[features]).mean()
    assert rate_cond > rate_uncond + 0.2, (rate_cond, rate_uncond)
    survivors = model.condition({LABEL: 0}, n=300, seed=0)
    assert clf.predict(survivors[features]).mean() < rate_uncond


# --------------------------------------------------------------------------------------- DDIM
def test_ddim_is_faster_than_ddpm_and_valid(fitted, toy):
    _, schema = toy

    def best_time(sampler: str) -> tuple[float, pd.DataFrame]:
        fitted.use_sampler(sampler, 10)
        times, out = [], None
        for seed in (0, 1):
            t0 = time.perf_counter()
            out = fitted.sample(1500, seed=seed)
            times.append(time.perf_counter() - t0)
        return min(times), out

    try:
        t_ddpm, ddpm = best_time("ddpm")
        t_ddim, ddim = best_time("ddim")
    finally:
        fitted.use_sampler("ddpm")
    _valid(ddpm, schema, 1500)
    _valid(ddim, schema, 1500)
    assert t_ddim < t_ddpm, (t_ddim, t_ddpm)
    assert not ddpm.equals(ddim)


def test_cnn_encoder_fits_and_samples(toy):
    df, schema = toy
    model = FlexGenEHR(encoder="cnn", **TINY).fit(df, schema)
    _valid(model.sample(20, seed=0), schema, 20)


# --------------------------------------------------------------------------------- save / load
def test_save_load_gives_identical_samples(fitted, tmp_path):
    path = fitted.save(tmp_path / "flexgen")
    loaded = load_model(path)
    assert isinstance(loaded, FlexGenEHR)
    pd.testing.assert_frame_equal(fitted.sample(50, seed=4), loaded.sample(50, seed=4))
    pd.testing.assert_frame_equal(fitted.condition({LABEL: 1}, n=20, seed=2),
                                  loaded.condition({LABEL: 1}, n=20, seed=2))
    loaded.use_sampler("ddim", 5)
    fitted.use_sampler("ddim", 5)
    try:
        pd.testing.assert_frame_equal(fitted.sample(30, seed=1), loaded.sample(30, seed=1))
    finally:
        fitted.use_sampler("ddpm", 10)


def test_condition_on_a_whole_modality_keeps_it(fitted, toy):
    df, schema = toy
    static, _ = modality_columns(schema.names, LABEL)
    row = df.iloc[3]
    out = fitted.condition({c: row[c] for c in static if pd.notna(row[c])}, n=10, seed=0)
    for c in static:
        if pd.notna(row[c]):
            assert (out[c] == row[c]).all()
    assert out["hr__t0"].nunique() > 1   # the temporal part is generated, not copied


# ------------------------------------------------------------------------------- stay table
def test_stay_table_from_prepared_demo(prepared_demo):
    table, schema = stay_table(prepared_demo, hours=48)
    schema.validate(table)
    static, temporal = modality_columns(schema.names, prepared_demo.label)
    assert {"age", "sex"} <= set(static)
    steps = {parse_temporal(c)[1] for c in temporal}
    assert steps == set(range(12))
    assert len(temporal) == 12 * len(prepared_demo.features)
    assert table.index.is_unique and len(table) == prepared_demo.static["stay_id"].nunique()
    assert schema[prepared_demo.label].kind == "binary"


# ------------------------------------------------------------------------ sampler fast path, timings, noise
def test_hoisted_guided_eps_equals_the_plain_network_call():
    from synthehr.models.latent_diffusion.diffusion import _guided_eps, _GuidedEps

    torch.manual_seed(0)
    net = Denoiser(6, 2, hidden=32, layers=3).eval()
    x = torch.randn(7, 6)
    for y in (torch.tensor([0, 1, 2, 1, 0, 2, 1]), torch.tensor([2] * 7), torch.tensor([1] * 7)):
        for w in (0.0, 1.0, 2.5):
            for t in (1, 17, 50):
                ref = _guided_eps(net, x, t, y, w)
                assert torch.allclose(_GuidedEps(net, y, w)(x, t), ref, atol=1e-5), (y, w, t)


def test_sampled_latents_carry_no_autograd_graph():
    net = Denoiser(4, 2, hidden=16)
    z = sample_latents(net, Schedule(), torch.zeros(3, 4), torch.tensor([0, 1, 2]),
                       generator=torch.Generator().manual_seed(0), sampler="ddim", steps=5)
    assert not z.requires_grad


def test_denoiser_steps_and_sample_timings(fitted):
    from synthehr.models.latent_diffusion.diffusion import denoiser_steps

    assert len(denoiser_steps(50, "ddpm")) == 50
    assert denoiser_steps(50, "ddim", 5) == [50, 38, 26, 13, 1] and len(denoiser_steps(50, "ddim", 10)) == 10
    try:
        for sampler, steps, calls in (("ddpm", None, 50), ("ddim", 10, 10), ("ddim", 5, 5)):
            fitted.use_sampler(sampler, steps)
            fitted.sample(40, seed=0)
            t = fitted.sample_timings_
            assert t["denoiser_calls"] == calls
            assert {"latent_seconds", "decoder_seconds", "table_seconds"} <= set(t) and min(t.values()) >= 0
    finally:
        fitted.use_sampler("ddpm", 10)


def test_decoder_noise_spreads_continuous_cells(toy):
    df, schema = toy
    with pytest.raises(ValueError, match="decoder_noise"):
        FlexGenEHR(decoder_noise=-0.1)
    model = FlexGenEHR(**{**TINY, "decoder_noise": 0.0}).fit(df, schema)
    base = model.sample(400, seed=3)
    model.decoder_noise = 1.0
    noisy = model.sample(400, seed=3)
    # same latents (same seed), so the categorical draws differ only through the rng; the continuous
    # cells are the decoder mean plus noise of about the reconstruction RMSE
    resid = noisy["hr__t1"] - base["hr__t1"]
    assert resid.abs().max() > 0 and noisy["hr__t1"].std() > base["hr__t1"].std()
    assert FlexGenEHR().hyperparameters["decoder_noise"] == 1.0


# ------------------------------------------------------------------- GW imputation: anchors + label map
def _two_modality_latents(n: int = 400, seed: int = 0):
    """z^S = z^T W + 1.5 · (±1 label) + noise, the label only partly visible in z^T: a known relation."""
    rng = np.random.default_rng(seed)
    zt = rng.normal(size=(n, 4))
    y = (zt[:, 0] + rng.normal(0, 1.0, n) > 0.8).astype(np.int64)
    w = rng.normal(size=(4, 3))
    zs = zt @ w + 1.5 * (2 * y[:, None] - 1) + rng.normal(0, 0.3, (n, 3))
    return zt, zs, y


def _impute_with(zt, zs, y, hidden, **hp):
    model = FlexGenEHR(**TINY, **hp)
    model.label_, model.n_classes_, model.info_ = LABEL, 2, {}
    zs_in = zs.copy()
    zs_in[hidden] = np.nan
    has_t, has_s = np.ones(len(zt), bool), ~hidden
    model._impute_embeddings(zt.copy(), zs_in, has_t, has_s, y, np.random.default_rng(0))
    return zs_in[hidden], model


def test_anchored_label_aware_gw_map_recovers_held_out_partners_better_than_the_plain_gw_map():
    zt, zs, y = _two_modality_latents()
    hidden = np.random.default_rng(1).random(len(zt)) < 0.4   # 40 % temporal-only records
    old, _ = _impute_with(zt, zs, y, hidden, gw_pair_weight=1.0, gw_label_map=False, gw_donors=0)
    new, model = _impute_with(zt, zs, y, hidden, gw_donors=0)
    pmm, _ = _impute_with(zt, zs, y, hidden)                   # the default: mean of 5 same-label donors
    mse = {k: ((v - zs[hidden]) ** 2).mean() for k, v in (("old", old), ("new", new), ("pmm", pmm))}
    assert mse["new"] < 0.25 * mse["old"] and mse["pmm"] < 0.5 * mse["old"], mse
    assert model.map_label_input_ and model.map_t2s_.weight.shape == (4 + 2, 3)
    assert "with the label as input" in model.info_["alignment"]
    # with residual noise the imputed embeddings keep the label gap of the real ones (label-blind noise does not)
    yh = y[hidden]
    gap = lambda z: z[yh == 1].mean(0) - z[yh == 0].mean(0)   # noqa: E731
    noisy_new, _ = _impute_with(zt, zs, y, hidden, gw_donors=0, impute_noise=True)
    noisy_old, _ = _impute_with(zt, zs, y, hidden, gw_pair_weight=1.0, gw_label_map=False, gw_donors=0,
                                impute_noise=True)
    true_gap = gap(zs[hidden])
    assert np.abs(gap(noisy_new) - true_gap).mean() < 0.5 * np.abs(gap(noisy_old) - true_gap).mean()


def test_residual_noise_per_label_class_uses_that_class_covariance():
    from synthehr.models.latent_diffusion import AffineMap, residual_noise

    rng = np.random.default_rng(0)
    z_in = np.zeros((400, 1))
    groups = np.repeat([0, 1], 200)
    z_out = np.where(groups[:, None] == 0, 0.1, 3.0) * rng.normal(size=(400, 2))
    amap = AffineMap(np.zeros((1, 2)), np.zeros(2))
    draws = residual_noise(amap, z_in, z_out, np.repeat([0, 1, -1], 3000), np.random.default_rng(1),
                           fit_groups=groups)
    sd = [draws[i * 3000:(i + 1) * 3000].std() for i in range(3)]
    assert sd[0] == pytest.approx(0.1, rel=0.1) and sd[1] == pytest.approx(3.0, rel=0.1)
    assert sd[2] == pytest.approx(np.sqrt((0.01 + 9) / 2), rel=0.1)       # unknown label: pooled covariance


def _rewrite_config(path, edit):
    import hashlib
    import json

    cfg = json.loads((path / "config.json").read_text())
    edit(cfg)
    (path / "config.json").write_text(json.dumps(cfg))
    manifest = {n: hashlib.sha256((path / n).read_bytes()).hexdigest() for n in ("config.json", "weights.safetensors")}
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_label_map_round_trips_and_older_saved_models_still_load(toy, tmp_path):
    df, schema = toy
    dropped = drop_modalities(df, schema, static_only=0.2, temporal_only=0.2, label=LABEL, seed=3)
    model = FlexGenEHR(**TINY).fit(dropped, schema)
    assert model.map_label_input_ and model.hyperparameters["gw_pair_weight"] == 10.0
    loaded = load_model(model.save(tmp_path / "new"))
    assert loaded.map_label_input_ and loaded.gw_label_map and loaded.gw_pair_weight == 10.0
    np.testing.assert_array_equal(loaded.map_t2s_.weight, model.map_t2s_.weight)
    pd.testing.assert_frame_equal(model.sample(20, seed=3), loaded.sample(20, seed=3))
    # a model saved before gw_pair_weight / gw_label_map existed: no such hyper-parameters, no state flag
    old = FlexGenEHR(**TINY, gw_pair_weight=1.0, gw_label_map=False, gw_donors=0, impute_noise=True,
                     vae_epoch_scale=False).fit(dropped, schema)
    assert not old.map_label_input_ and old.map_t2s_.weight.shape[0] == old.temporal_latent
    path = old.save(tmp_path / "old")

    def strip(cfg):
        for k in ("gw_pair_weight", "gw_label_map", "gw_donors", "vae_epoch_scale"):
            del cfg["hyperparameters"][k]
        del cfg["state"]["map_label_input"]
    _rewrite_config(path, strip)
    back = load_model(path)
    assert not back.map_label_input_
    np.testing.assert_array_equal(back.map_s2t_.weight, old.map_s2t_.weight)
    pd.testing.assert_frame_equal(old.sample(20, seed=3), back.sample(20, seed=3))


def test_gw_pair_weight_is_validated():
    with pytest.raises(ValueError, match="gw_pair_weight"):
        FlexGenEHR(gw_pair_weight=-1.0)


def test_pmm_donors_impute_real_partner_embeddings_of_the_same_label():
    zt, zs, y = _two_modality_latents()
    hidden = np.random.default_rng(1).random(len(zt)) < 0.4
    got, model = _impute_with(zt, zs, y, hidden, gw_donors=5, impute_noise=True)   # one donor drawn per record
    donors = zs[~hidden]
    # every imputed embedding is one of the complete records' static embeddings, of the record's own label
    match = np.abs(got[:, None, :] - donors[None]).max(-1) < 1e-12
    assert match.any(1).all()
    assert (y[~hidden][match.argmax(1)] == y[hidden]).all()
    assert "predictive mean matching with 5 donors" in model.info_["alignment"]


def test_vae_epoch_scale_gives_a_modality_with_missing_rows_full_table_updates(toy):
    df, schema = toy
    dropped = drop_modalities(df, schema, static_only=0.5, temporal_only=0.0, label=LABEL, seed=3)
    scaled = FlexGenEHR(**TINY).fit(dropped, schema)
    plain = FlexGenEHR(**TINY, vae_epoch_scale=False).fit(dropped, schema)
    assert len(scaled.history_["static_vae"]) == TINY["vae_epochs"]
    assert len(scaled.history_["temporal_vae"]) == 2 * TINY["vae_epochs"]     # half the rows: twice the passes
    assert len(plain.history_["temporal_vae"]) == TINY["vae_epochs"]
