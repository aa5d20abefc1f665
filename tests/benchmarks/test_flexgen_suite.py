"""`synthehr benchmark flexgen`: the sweep over seeds (checks, mean ± sd table), the sampling-time
breakdown, and one tiny end-to-end run on the bundled MIMIC-IV demo (two sweep seeds)."""

from __future__ import annotations

import argparse
import json

import pytest

from synthehr.benchmarks import SUITES
from synthehr.benchmarks.flexgen_suite import (sampling_markdown, sampling_note, sweep_checks, sweep_markdown,
                                               sweep_pairs, sweep_seeds)
from synthehr.benchmarks.results import make_row


def _rows(values: dict) -> list[dict]:
    """values[(model, seed, p, q)] = tstr_auroc → long-format sweep rows."""
    return [make_row(m, "tstr_auroc", v, split=f"p{p}-q{q}", seed=s, p=p, q=q) for (m, s, p, q), v in values.items()]


def test_suite_is_registered():
    assert SUITES["flexgen"] == "synthehr.benchmarks.flexgen_suite"


def test_full_grid_has_13_settings_and_seed_list():
    args = argparse.Namespace(sweep_grid="0,20,40,60", sweep_points="", seeds="0,1,2", seed=5)
    pairs = sweep_pairs(args)
    assert len(pairs) == 13 and pairs[0] == (0, 0) and len(set(pairs)) == 13
    assert all(p + q < 100 for p, q in pairs) and (60, 20) in pairs and (60, 40) not in pairs
    assert sweep_seeds(args) == [0, 1, 2]
    assert sweep_seeds(argparse.Namespace(seeds="", seed=5)) == [5]
    assert sweep_pairs(argparse.Namespace(sweep_grid="0,20", sweep_points="20:20,0:40", seeds="")) == \
        [(0, 0), (20, 20), (0, 40)]


def test_sweep_checks_per_seed():
    rows = _rows({("flexgen-gw", 0, 0, 0): 0.80, ("knn+flexgen", 0, 0, 0): 0.80,
                  ("flexgen-gw", 0, 20, 20): 0.79, ("knn+flexgen", 0, 20, 20): 0.77,     # drop .01, beats knn
                  ("flexgen-gw", 1, 0, 0): 0.82, ("knn+flexgen", 1, 0, 0): 0.82,
                  ("flexgen-gw", 1, 20, 20): 0.79, ("knn+flexgen", 1, 20, 20): 0.78})    # drop .03: not met
    checks = {(r["model"], r["metric"], r["seed"]): r["value"] for r in sweep_checks(rows)}
    assert checks[("flexgen-gw", "auroc_drop", 0)] == pytest.approx(0.01)
    assert checks[("flexgen-gw", "auroc_drop", 1)] == pytest.approx(0.03)
    assert checks[("knn+flexgen", "auroc_drop", 0)] == pytest.approx(0.03)  # against the same seed's complete fit
    assert checks[("flexgen-gw", "auroc_minus_knn", 1)] == pytest.approx(0.01)
    assert checks[("flexgen-gw", "target_met", 0)] == 1.0 and checks[("flexgen-gw", "target_met", 1)] == 0.0
    assert ("knn+flexgen", "target_met", 0) not in checks
    # losing to kNN fails the target even with no drop
    lose = _rows({("flexgen-gw", 0, 0, 0): 0.8, ("flexgen-gw", 0, 40, 0): 0.8, ("knn+flexgen", 0, 40, 0): 0.81})
    assert [r["value"] for r in sweep_checks(lose) if r["metric"] == "target_met"] == [0.0]


def test_sweep_fit_seconds_counts_the_shared_complete_fit_once():
    from synthehr.benchmarks.flexgen_suite import _sweep_fit_seconds

    rows = [make_row(m, "fit_seconds", v, split=f"p{p}-q{q}", seed=0, p=p, q=q)
            for m, v, p, q in (("flexgen-gw", 10, 0, 0), ("knn+flexgen", 10, 0, 0), ("flexgen-gw", 7, 20, 0),
                               ("knn+flexgen", 5, 20, 0))]
    assert _sweep_fit_seconds(rows) == 22


def test_sweep_markdown_aggregates_seeds():
    vals = {}
    for seed, (full, gw, knn) in enumerate([(0.80, 0.79, 0.77), (0.82, 0.79, 0.78), (0.81, 0.80, 0.75)]):
        vals[("flexgen-gw", seed, 0, 0)] = vals[("knn+flexgen", seed, 0, 0)] = full
        vals[("flexgen-gw", seed, 20, 20)], vals[("knn+flexgen", seed, 20, 20)] = gw, knn
    rows = _rows(vals)
    md = sweep_markdown(rows + sweep_checks(rows))
    line = next(l for l in md.splitlines() if l.startswith("| 20 | 20 |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[2] == "0.7933 ± 0.0058"          # flexgen-gw tstr_auroc over 3 seeds (sd with ddof 1)
    assert cells[3] == "0.7667 ± 0.0153"          # knn+flexgen
    assert cells[-1] == "2/3"                     # seed 1 drops 0.03 > 0.02
    assert "3 seed(s) 0, 1, 2" in md
    assert "- seed 1: (20, 20) not met" in md and "met in 2 of 3" in md


def test_sampling_note_and_table():
    timing = {"flexgen": dict(sample_seconds=2.2, sample_latent_seconds=2.0, sample_decoder_seconds=0.15,
                              sample_table_seconds=0.05, denoiser_calls=50.0),
              "flexgen-ddim10": dict(sample_seconds=0.6, sample_latent_seconds=0.4, sample_decoder_seconds=0.15,
                                     sample_table_seconds=0.05, denoiser_calls=10.0)}
    note = sampling_note(timing, 3)
    assert "10 calls ≤ 5.0×" in note and "(with this fixed cost 3.67×)" in note   # 2.2 / (10 * 0.04 + 0.2)
    rows = [make_row(m, k, v, split="test") for m, t in timing.items() for k, v in t.items()]
    md = sampling_markdown(rows)
    assert "| flexgen-ddim10 | 10 | 0.6 | 0.4 |" in md


def test_quick_run_with_two_sweep_seeds(tmp_path, demo_raw):
    import torch

    from synthehr.benchmarks.flexgen_suite import main

    if not demo_raw.is_dir():
        pytest.skip(f"bundled demo not found at {demo_raw}")
    threads = torch.get_num_threads()
    common = ["--dataset", "mimic-iv-demo", "--cache", str(tmp_path / "c"), "--vae-epochs", "2",
              "--diffusion-epochs", "2", "--sweep", "--sweep-points", "20:20", "--seeds", "0,1",
              "--sweep-diffusion-epochs", "1", "--sweep-cache", str(tmp_path / "sweep")]
    try:
        rc = main(common + ["--results", str(tmp_path / "r"), "--peers", "", "--ddim-steps", "10,5",
                            "--timing-repeats", "1", "--jobs", "0"])
        assert rc == 0
        cache = list((tmp_path / "sweep").glob("sweep-mimic-iv-demo-*.jsonl"))
        assert len(cache) == 1 and len(cache[0].read_text().splitlines()) == 4   # 2 seeds x 2 settings
        # a rerun takes every point from the cache (the file does not grow) and reuses the main table
        rc = main(common + ["--results", str(tmp_path / "r2"), "--jobs", "1",
                            "--main-from", str(tmp_path / "r" / "flexgen-mimic-iv-demo.json"), "--note", "hello"])
        assert rc == 0 and len(cache[0].read_text().splitlines()) == 4
        # another sweep configuration gets its own cache file
        assert main(common[:-4] + ["--sweep-diffusion-epochs", "2", "--seeds", "3", "--sweep-only", "--jobs", "0",
                                   "--sweep-cache", str(tmp_path / "sweep")]) == 0
        assert len(list((tmp_path / "sweep").glob("*.jsonl"))) == 2
    finally:
        torch.set_num_threads(threads)
    again = json.loads((tmp_path / "r2" / "flexgen-mimic-iv-demo.json").read_text())
    first = json.loads((tmp_path / "r" / "flexgen-mimic-iv-demo.json").read_text())
    assert again["rows"] == first["rows"]
    assert any("main table from flexgen-mimic-iv-demo.json" in n for n in again["notes"])
    assert again["notes"][-1] == "hello" and any(n.startswith("this run's wall time") for n in again["notes"])
    # assembling again from an assembled file keeps one "main table from" note and drops the old sweep's notes
    from synthehr.benchmarks.flexgen_suite import main_from

    _, notes = main_from(str(tmp_path / "r2" / "flexgen-mimic-iv-demo.json"), "mimic-iv-demo")
    assert sum(n.startswith("main table from") for n in notes) == 1
    assert not any(n.startswith(("sweep", "this run's wall time")) for n in notes) and "hello" in notes
    doc = json.loads((tmp_path / "r" / "flexgen-mimic-iv-demo.json").read_text())
    md = (tmp_path / "r" / "flexgen-mimic-iv-demo.md").read_text()
    rows = doc["rows"]
    models = {r["model"] for r in rows}
    assert {"real", "flexgen", "flexgen-ddim10", "flexgen-ddim5", "flexgen-gw", "knn+flexgen"} <= models
    for m in ("flexgen", "flexgen-ddim10", "flexgen-ddim5"):
        got = {r["metric"] for r in rows if r["model"] == m and r["split"] == "test"}
        assert {"dimwise_r2", "mmd", "tstr_auroc", "tstr_aupr", "mia_accuracy", "sample_seconds",
                "sample_latent_seconds", "sample_decoder_seconds", "denoiser_calls"} <= got
    calls = {r["model"]: r["value"] for r in rows if r["metric"] == "denoiser_calls"}
    assert calls == {"flexgen": 50, "flexgen-ddim10": 10, "flexgen-ddim5": 5}
    sweep = [r for r in rows if r["model"] == "flexgen-gw" and r["metric"] == "tstr_auroc"]
    assert sorted((r["seed"], r["p"], r["q"]) for r in sweep) == [(0, 0, 0), (0, 20, 20), (1, 0, 0), (1, 20, 20)]
    assert {r["seed"] for r in rows if r["metric"] == "target_met"} == {0, 1}
    assert "2 seed(s) 0, 1" in md and "## Sampling time breakdown" in md
    assert any("lighter setting than the main table" in n for n in doc["notes"])


def _sweep_args(**kw):
    base = dict(dataset="physionet2012", cache="/tmp/x", max_train=0, seed=0, n_synth=0, sweep_max_train=1500,
                vae_epochs=50, diffusion_epochs=300, sweep_vae_epochs=30, sweep_diffusion_epochs=100, encoder="lstm",
                guidance_weight=1.0, batch_size=256, lr=2e-3, decoder_noise=None, gw_option=[], sweep_cache="")
    return argparse.Namespace(**{**base, **kw})


def test_alignment_signature_and_legacy_options():
    from synthehr.benchmarks.flexgen_suite import LEGACY_ALIGNMENT, alignment_signature, flexgen_params

    sig = alignment_signature(_sweep_args())
    assert sig["gw_pair_weight"] == 10.0 and sig["gw_label_map"] is True and sig != LEGACY_ALIGNMENT
    legacy = ["gw_pair_weight=1", "gw_label_map=false", "vae_epoch_scale=false", "gw_donors=0", "impute_noise=true"]
    assert alignment_signature(_sweep_args(gw_option=legacy)) == LEGACY_ALIGNMENT
    assert flexgen_params(_sweep_args(gw_option=["gw_donors=5"]))["gw_donors"] == 5
    with pytest.raises(SystemExit):
        flexgen_params(_sweep_args(gw_option=["vae_epochs=3"]))      # not an alignment key


def test_cache_key_ignores_the_alignment_and_gw_rows_follow_it(tmp_path):
    from synthehr.benchmarks.flexgen_suite import LEGACY_ALIGNMENT, _cache_file, _cached_points

    # the key of the committed PhysioNet sweep cache is unchanged, whatever --gw-option says
    for opts in ([], ["gw_pair_weight=1"]):
        assert _cache_file(_sweep_args(sweep_cache=str(tmp_path), gw_option=opts)).name == \
            "sweep-physionet2012-b5709e64d019.jsonl"
    path = tmp_path / "c.jsonl"

    def line(task, models, alignment=None):
        rows = [make_row(m, "tstr_auroc", 0.7, split="x", seed=task[0], p=task[1], q=task[2]) for m in models]
        return json.dumps({"task": list(task), "rows": rows, **({"alignment": alignment} if alignment else {})})

    new = {**LEGACY_ALIGNMENT, "gw_pair_weight": 10.0}
    path.write_text("\n".join([line((0, 0, 0), ["flexgen-gw", "knn+flexgen"]),           # written before alignments
                               line((0, 20, 20), ["flexgen-gw", "knn+flexgen"]),
                               line((1, 20, 20), ["flexgen-gw", "knn+flexgen"]),
                               line((1, 20, 20), ["flexgen-gw"], new)]) + "\n")
    got = _cached_points(path, new)
    assert set(got[(0, 0, 0)]) == {"flexgen-gw", "knn+flexgen"}        # nothing imputed at (0, 0)
    assert set(got[(0, 20, 20)]) == {"knn+flexgen"}                   # old gw fit: refit under the new alignment
    assert set(got[(1, 20, 20)]) == {"flexgen-gw", "knn+flexgen"}
    assert set(_cached_points(path, LEGACY_ALIGNMENT)[(0, 20, 20)]) == {"flexgen-gw", "knn+flexgen"}
