"""Trajectory generator: tokenizer round trip, grammar validity (with a no-mask negative control),
Markov-chain calibration (with a temperature fault as negative control), save/load, MEDS output."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pytest
import torch

from synthehr.errors import ConditioningError, ModelFileError
from synthehr.models.trajectory import Grammar, Tokenizer, TrajectoryGenerator, build_vocabulary, check_records
from synthehr.models.trajectory.clock import N_STAY_FEATURES, ClockRoles, RunningClock, record_clocks, stay_features
from synthehr.models.trajectory.memory import RunningMemory, SeenInput, first_occurrences, window_memory
from synthehr.models.trajectory.model import TrajectoryTransformer, stay_bucket
from synthehr.models.trajectory.sampler import SampleStats, generate
from synthehr.models.trajectory.tokenizer import Encoded
from synthehr.models.trajectory.synthetic import markov_events, transition_counts
from synthehr.models.trajectory.vocab import GAP_SECONDS, Cat, sex_restriction

P = np.array([[0.1, 0.6, 0.2, 0.1],
              [0.5, 0.1, 0.1, 0.3],
              [0.2, 0.2, 0.5, 0.1],
              [0.7, 0.1, 0.1, 0.1]])


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead on a shared CPU
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def demo_events(demo_meds) -> pl.DataFrame:
    ev = pl.read_parquet(demo_meds / "data" / "train" / "0.parquet")
    ids = ev["subject_id"].unique(maintain_order=True).to_list()
    return ev.filter(pl.col("subject_id").is_in(ids[:12]))


@pytest.fixture(scope="module")
def demo_vocab(demo_events, demo_meds):
    meta = pl.read_parquet(demo_meds / "metadata" / "codes.parquet")
    return build_vocabulary([demo_events], min_subjects=1, code_metadata=meta)


@pytest.fixture(scope="module")
def markov_model():
    # 600 chains x 25 epochs (not 300 x 50): the same compute, half the estimation noise; one thread makes
    # the fit independent of the test order.  This checks the sampler's calibration given a model that
    # learned the chain, and some training seeds do not learn it at this budget, whatever the settings:
    # max deviation with 2 layers and the defaults (one key/value head, novel bias) 0.038 / 0.29 / 0.039 for
    # seeds 0 / 1 / 2, and 0.27 for seed 1 with the earlier defaults (4 key/value heads, no novel bias); with
    # 1 layer the defaults gave 0.16 / 0.05 / 0.19.  So the seed is pinned to one that trains.
    ev = markov_events(600, P, np.full(4, 0.25), 0.1, seed=0)
    gen = TrajectoryGenerator(d_model=64, n_layers=2, n_heads=2, context=48, epochs=25, batch_rows=8, lr=3e-3,
                              max_len=300, seed=0, threads=1)
    return gen.fit(ev)


@pytest.fixture(scope="module")
def markov_budget_model():
    """The Markov model with a length budget (off by default)."""
    ev = markov_events(600, P, np.full(4, 0.25), 0.1, seed=0)
    gen = TrajectoryGenerator(d_model=64, n_layers=2, n_heads=2, context=48, epochs=25, batch_rows=8, lr=3e-3,
                              max_len=300, seed=0, threads=1, length_budget=True)
    return gen.fit(ev)


# ---------------------------------------------------------------- tokenizer


def test_round_trip_on_demo_subjects(demo_events, demo_vocab):
    tok = Tokenizer(demo_vocab)
    enc, repairs = tok.encode(demo_events)
    dec = tok.decode(enc)
    canon = tok.map_codes(demo_events)
    a = canon.filter(pl.col("time").is_not_null())
    b = dec.filter(pl.col("time").is_not_null())
    # the same events in the same order (MEDS_BIRTH included), codes exact
    assert a.height == b.height > 10_000
    assert (a["subject_id"] == b["subject_id"]).all() and (a["code"] == b["code"]).all()
    # times: never ahead of the truth; at each new true timestamp behind by at most 2 minutes or 5% of
    # its gap from the previous decoded time (up to six greedy gap tokens); same-time events share it
    ta = a["time"].cast(pl.Int64).to_numpy() / 1e6
    tb = b["time"].cast(pl.Int64).to_numpy() / 1e6
    sid = a["subject_id"].to_numpy()
    err = ta - tb
    assert err.min() >= -1e-3
    new_time = np.r_[False, (sid[1:] == sid[:-1]) & (ta[1:] != ta[:-1])]
    gi = np.flatnonzero(new_time)
    gap = ta[gi] - tb[gi - 1]
    assert np.all(err[gi] <= np.maximum(120.0, 0.05 * gap) + 1e-3)
    same_time = np.r_[False, (sid[1:] == sid[:-1]) & (ta[1:] == ta[:-1])]
    assert np.array_equal(tb[same_time], tb[np.flatnonzero(same_time) - 1])
    assert np.median(err) < 60
    # what a long gap leaves over must not open a silence before the next event: intervals under an hour
    # decode within 15 minutes (with three gap tokens a time step, the fraction of a year from birth to
    # the first admission left up to 22.6 h here, so stays began with a long empty stretch in token time)
    dtrue, ddec = ta[gi] - ta[gi - 1], tb[gi] - tb[gi - 1]
    short = dtrue < 3600
    assert short.sum() > 1000 and np.abs(ddec - dtrue)[short].max() <= 900
    # values: same quantile bin as the original, decoded as that bin's median
    v = demo_vocab
    has = a["numeric_value"].is_not_null().to_numpy() & np.isin(a["code"].to_numpy(), list(v.value_codes()))
    ids = np.array([v.index[c] for c in a["code"].to_numpy()[has]])
    orig = a["numeric_value"].to_numpy()[has]
    got = b["numeric_value"].to_numpy()[has].astype(float)
    bin_of = lambda x: (x[:, None] > v.edges[ids]).sum(1)  # noqa: E731
    assert np.array_equal(bin_of(orig), bin_of(got))
    assert np.all(b["numeric_value"].is_null().to_numpy()[~has])
    # demographics
    s_real = canon.filter(pl.col("code").str.starts_with("GENDER//")).sort("subject_id")["code"]
    s_dec = dec.filter(pl.col("code").str.starts_with("GENDER//")).sort("subject_id")["code"]
    assert s_real.to_list() == s_dec.to_list()
    births = a.filter(pl.col("code") == "MEDS_BIRTH")["time"] == b.filter(pl.col("code") == "MEDS_BIRTH")["time"]
    assert births.all()
    assert set(repairs) <= {"static_rows_dropped", "timed_sex_rows_dropped", "sex_specific_dropped",
                            "out_of_vocabulary_events", "after_death_dropped", "moved_to_death_time",
                            "admission_while_admitted_dropped", "discharge_without_stay_dropped",
                            "icu_admission_while_in_icu_dropped", "icu_admission_outside_stay_dropped",
                            "extra_death_dropped", "icu_discharge_moved_earlier", "icu_discharge_added",
                            "hospital_discharge_added", "hospital_admission_moved_earlier"}


def test_an_icu_stay_opened_just_before_its_hospital_admission_is_kept():
    """MIMIC-IV surgical same-day admissions reach the ICU before the admission is recorded: the hospital
    admission moves back to the ICU admission; an ICU stay wholly outside a hospital stay is still dropped."""
    t = lambda h: datetime(2150, 1, 1) + timedelta(hours=h)  # noqa: E731
    rows = []
    for sid, icu_in, hosp_in, icu_out, hosp_out in ((1, 0.0, 0.7, 27.0, 100.0),   # admission inside the ICU stay
                                                    (2, 0.0, 30.0, 27.0, 100.0),  # ICU stay over before admission
                                                    (3, 1.0, 0.0, 20.0, 50.0)):   # ordinary nested stays
        rows += [(sid, None, "GENDER//F"), (sid, t(-24 * 365 * 60), "MEDS_BIRTH"),
                 (sid, t(icu_in), "ICU_ADMISSION//MICU"), (sid, t(hosp_in), "HOSPITAL_ADMISSION//ELECTIVE"),
                 (sid, t(icu_in + 2), "LAB//50912//mg/dL"), (sid, t(icu_out), "ICU_DISCHARGE//MICU"),
                 (sid, t(hosp_out), "HOSPITAL_DISCHARGE//HOME")]
    ev = pl.DataFrame(rows, schema={"subject_id": pl.Int64, "time": pl.Datetime("us"), "code": pl.String},
                      orient="row").with_columns(pl.lit(None, pl.Float32).alias("numeric_value"))
    v = build_vocabulary([ev], min_subjects=1)
    assert v.icu_in_hospital
    enc, repairs = Tokenizer(v).encode(ev)
    assert repairs["hospital_admission_moved_earlier"] == 1 and repairs["icu_admission_outside_stay_dropped"] == 1
    icu_open = v.cat == Cat.ICU_OPEN
    assert [bool(icu_open[enc.sequence(i)].any()) for i in range(3)] == [True, False, True]
    g = Grammar(v, max_len=64)
    assert all(g.check(enc.sequence(i))[0] for i in range(3))
    dec = Tokenizer(v).decode(enc).filter(pl.col("subject_id") == 1)
    hosp_time = dec.filter(pl.col("code").str.starts_with("HOSPITAL_ADMISSION"))["time"].item()
    icu_time = dec.filter(pl.col("code").str.starts_with("ICU_ADMISSION"))["time"].item()
    assert hosp_time == icu_time  # the admission now opens with the ICU stay


def test_encoded_real_records_satisfy_the_grammar_and_validity(demo_events, demo_vocab):
    tok = Tokenizer(demo_vocab)
    enc, _ = tok.encode(demo_events)
    g = Grammar(demo_vocab, max_len=10**7)
    for i in range(len(enc)):
        ok, at, why = g.check(enc.sequence(i))
        assert ok, (i, at, why)
    r = check_records(tok.decode(enc), value_codes=demo_vocab.value_codes())
    assert r["valid"].all(), r.filter(~pl.col("valid"))


def test_stay_clocks_agree_between_training_store_and_sampler(demo_events, demo_vocab):
    """The clocks a token carries in training (whole records, numpy) and in sampling (one token at a
    time, torch) are the same numbers; an ICU stay's clock starts at 0 on its admission token and is -1
    once it is discharged."""
    enc, _ = Tokenizer(demo_vocab).encode(demo_events)
    roles = ClockRoles.of(demo_vocab)
    hours, stay = record_clocks(enc.tokens, enc.offsets, roles)
    checked_icu = 0
    for i in range(4):
        a, b = int(enc.offsets[i]), int(enc.offsets[i + 1])
        clock = RunningClock(roles, 1)
        for j in range(a, b):
            clock.advance(torch.tensor([int(enc.tokens[j])]))
            assert abs(float(clock.hours[0]) - hours[j]) <= 1e-3 * max(1.0, hours[j]), (i, j)
            np.testing.assert_allclose(clock.stay()[0].numpy(), stay[j], rtol=1e-4, atol=1e-3)
        cat = demo_vocab.cat[enc.tokens[a:b]]
        opens = np.flatnonzero(cat == Cat.ICU_OPEN)
        closes = np.flatnonzero(cat == Cat.ICU_CLOSE)
        for o, c in zip(opens, closes):
            assert stay[a + o, 0] == 0 and stay[a + c, 0] == -1
            assert (stay[a + o: a + c, 0] >= 0).all() and np.all(np.diff(stay[a + o: a + c, 0]) >= 0)
            checked_icu += 1
    assert checked_icu > 0
    f = stay_features(torch.as_tensor(stay[:200]))
    assert f.shape == (200, N_STAY_FEATURES) and torch.isfinite(f).all()
    assert (f[torch.as_tensor(stay[:200, 0] < 0)][:, :N_STAY_FEATURES // 2] == 0).all()  # closed → no signal


def test_seen_code_memory_agrees_between_packed_windows_and_sampler(demo_events, demo_vocab, tmp_path):
    """The memory a token carries in a packed training window (first-occurrence flags + the codes seen
    before the window) equals the one the sampler builds token by token over the whole record, for
    windows that start deep inside long records; demographics, gaps and values never enter it."""
    import synthehr.models.trajectory.data as D

    enc, _ = Tokenizer(demo_vocab).encode(demo_events)
    roles = ClockRoles.of(demo_vocab)
    fo = first_occurrences(enc.tokens, enc.offsets, roles.code_like)
    for i in range(3):  # each code once per record, and only code-like tokens
        a, b = int(enc.offsets[i]), int(enc.offsets[i + 1])
        flagged = enc.tokens[a:b][fo[a:b] > 0]
        assert len(set(flagged.tolist())) == flagged.size
        assert set(flagged.tolist()) == {t for t in enc.tokens[a:b].tolist() if roles.code_like[t]}
    assert not roles.code_like[demo_vocab.cat == Cat.GAP].any() and not roles.code_like[demo_vocab.cat == Cat.VALUE].any()
    with D.TokenStore(tmp_path / "store", roles) as store:
        store.append(enc)
        store.finish()
        context = 64
        windows = D.make_windows(store.lengths(), context)
        windows = windows[np.isin(windows[:, 0], [0, 1, 2])]
        batch, used = D.pack(store, windows, context, rows=len(windows))
    assert used == len(windows) and (windows[:, 1] > 0).sum() > 3 and batch.seen.base_tok.numel() > 0
    torch.manual_seed(0)
    E = torch.randn(len(demo_vocab), 8)
    got = window_memory(E, batch.tokens, batch.seen)
    want = {}
    for i in (0, 1, 2):
        a, b = int(enc.offsets[i]), int(enc.offsets[i + 1])
        mem = RunningMemory(roles.code_like, 1, 8)
        for j in range(a, b):
            mem.advance(torch.tensor([int(enc.tokens[j])]), E)
            want[(i, j - a)] = mem.vector()[0]
    # walk the packed rows window by window (pack keeps the windows' order; a window of a record with n
    # tokens spans min(n, context) - 1 input positions from its row's `doc_begin`)
    lengths = np.diff(enc.offsets)
    k, checked = 0, 0
    for r in range(batch.tokens.shape[0]):
        for start in sorted(set(batch.seen.doc_begin[r].tolist())):
            if k == len(windows):
                break
            rec = int(windows[k, 0])
            span = min(int(lengths[rec]), context) - 1
            for q in range(start, start + span):
                torch.testing.assert_close(got[r, q], want[(rec, int(batch.rec_pos[r, q]))], atol=1e-5, rtol=1e-5)
                checked += 1
            k += 1
    assert k == len(windows) and checked > 500


def test_rare_codes_become_their_prefix_other_token(demo_events):
    v = build_vocabulary([demo_events], min_subjects=3)
    assert v.stats["n_codes_kept"] < v.stats["n_codes_seen"]
    assert v.code_to_id("DIAGNOSIS//ICD//10//ZZZ999") == v.index["DIAGNOSIS//OTHER"]
    assert v.code_to_id("NEVER_SEEN_PREFIX//x") == v.index["OTHER"]
    assert v.cat[v.index["HOSPITAL_ADMISSION//OTHER"]] == Cat.HOSP_OPEN  # structure survives the cutoff
    assert len(GAP_SECONDS) + 1 == len(v.ids_of(Cat.GAP)) + len(v.ids_of(Cat.YEAR))


def test_sex_specific_codes_from_icd_structure():
    assert sex_restriction("DIAGNOSIS//ICD//10//O800") == 1
    assert sex_restriction("DIAGNOSIS//ICD//10//N400") == 2
    assert sex_restriction("DIAGNOSIS//ICD//9//185") == 2
    assert sex_restriction("DIAGNOSIS//ICD//9//V270") == 1
    assert sex_restriction("PROCEDURE//ICD//10//0VT00ZZ") == 2
    assert sex_restriction("PROCEDURE//ICD//9//6841") == 1
    assert sex_restriction("DIAGNOSIS//ICD//10//I10") == 0
    assert sex_restriction("LAB//51221//%") == 0


# ---------------------------------------------------------------- grammar


def _random_model(vocab, seed=0):
    torch.manual_seed(seed)
    m = TrajectoryTransformer(len(vocab), d_model=32, n_layers=1, n_heads=2)
    with torch.no_grad():  # peaked random logits, so the mask has real mass to remove
        m.out_bias.copy_(3.0 * torch.randn(len(vocab)))
    return m.eval()


def _sex_specific_vocab(demo_events):
    extra = pl.DataFrame({"subject_id": [1, 1, 1, 2, 2, 2], "time": [None, "2100-01-01", "2100-01-02"] * 2,
                          "code": ["GENDER//F", "DIAGNOSIS//ICD//10//O800", "DIAGNOSIS//ICD//10//N400",
                                   "GENDER//M", "DIAGNOSIS//ICD//10//O800", "DIAGNOSIS//ICD//10//N400"]}) \
        .with_columns(pl.col("time").str.to_datetime().cast(pl.Datetime("us")), pl.lit(None, pl.Float64).alias("numeric_value"))
    ev = pl.concat([demo_events.select("subject_id", "time", "code", pl.col("numeric_value").cast(pl.Float64)), extra])
    return build_vocabulary([ev], min_subjects=1)


def test_masked_sampling_from_an_untrained_model_is_always_valid(demo_events):
    v = _sex_specific_vocab(demo_events)
    g = Grammar(v, max_len=160)
    stats = SampleStats()
    seqs = generate(_random_model(v), g, [np.array([v.bos])] * 48, context=64, batch_size=16, seed=1, stats=stats)
    for s in seqs:
        ok, at, why = g.check(s)
        assert ok, (at, why)
        assert len(s) <= 160
    tok = Tokenizer(v)
    from synthehr.models.trajectory.tokenizer import Encoded
    lens = np.array([len(s) for s in seqs])
    enc = Encoded(np.arange(1, 49), np.r_[0, np.cumsum(lens)], np.concatenate(seqs), np.zeros(48, np.int64))
    events = tok.decode(enc)
    r = check_records(events, value_codes=v.value_codes(), icu_in_hospital=v.icu_in_hospital)
    assert r["valid"].all(), r.filter(~pl.col("valid"))
    # the mask did real work: it removed probability mass at most steps
    assert stats.mean_removed_mass > 0.02 and stats.masked_steps > 0.5 * stats.sampled_tokens
    # sex-specific codes appear only for their sex
    sx = events.filter(pl.col("code").str.starts_with("GENDER//")).select("subject_id", pl.col("code").alias("sex"))
    dx = events.filter(pl.col("code").is_in(["DIAGNOSIS//ICD//10//O800", "DIAGNOSIS//ICD//10//N400"])).join(sx, on="subject_id")
    assert dx.filter((pl.col("code").str.ends_with("O800") & (pl.col("sex") != "GENDER//F"))
                     | (pl.col("code").str.ends_with("N400") & (pl.col("sex") != "GENDER//M"))).height == 0


def test_negative_control_without_the_mask_records_are_invalid(demo_events):
    v = _sex_specific_vocab(demo_events)
    g = Grammar(v, max_len=160)
    seqs = generate(_random_model(v), g, [np.array([v.bos])] * 48, context=64, batch_size=16, seed=1, use_mask=False)
    valid = [g.check(s)[0] for s in seqs]
    assert np.mean(valid) < 0.2  # the check can fail: without the mask almost nothing is valid


def test_stay_limits_bound_every_sampled_stay_and_leave_forced_history_alone(demo_events, demo_vocab):
    v = demo_vocab
    roles = ClockRoles.of(v)

    def longest_stays(seqs):
        lens = np.array([len(s) for s in seqs])
        _, stay = record_clocks(np.concatenate(seqs), np.r_[0, np.cumsum(lens)], roles)
        return stay.max(axis=0)

    # a record prompt: a real history whose hospital stay runs past the limit (forced, so not cut)
    enc, _ = Tokenizer(v).encode(demo_events)
    _, stay_all = record_clocks(enc.tokens, enc.offsets, roles)
    over = [(int(np.argmax(stay_all[a:b, 1] > 30)) + 1, i) for i, (a, b) in enumerate(zip(enc.offsets[:-1], enc.offsets[1:]))
            if (stay_all[a:b, 1] > 30).any()]
    cut_at, i0 = min(over)  # the record whose hospital stay passes 30 h soonest
    seq0 = enc.sequence(i0)
    assert cut_at < 300
    prompts = [np.array([v.bos])] * 40 + [seq0[:cut_at]]
    m = _random_model(v)
    with torch.no_grad():  # an untrained model that opens stays and moves time often
        for c, b in ((Cat.ICU_OPEN, 6.0), (Cat.HOSP_OPEN, 6.0), (Cat.GAP, 2.0), (Cat.YEAR, 2.0)):
            m.out_bias[torch.from_numpy(v.cat == c)] += b
    free = generate(m, Grammar(v, max_len=400), prompts, context=64, batch_size=16, seed=1)
    stats = SampleStats()
    g = Grammar(v, max_len=400, stay_limits_hours=(6.0, 30.0))
    capped = generate(m, g, prompts, context=64, batch_size=16, seed=1, stats=stats)
    # negative control: without limits the untrained model keeps stays open far longer
    assert longest_stays(free[:40])[0] > 24 and longest_stays(free[:40])[1] > 100
    icu, hosp = longest_stays(capped[:40])
    assert icu <= 6.0 + 1e-3 and hosp <= 30.0 + 1e-3
    assert all(g.check(s)[0] for s in capped)
    assert stats.stay_cut_mass_sum > 0 and stats.as_dict()["stay_cut_mass_mean"] > 0
    assert np.array_equal(capped[40][:cut_at], seq0[:cut_at])  # the history stays as given
    with pytest.raises(ValueError, match="stay_limits_hours"):
        Grammar(v, max_len=400, stay_limits_hours=(0.0, 30.0))


def test_stay_cap_sets_the_limits_from_the_longest_training_stays(demo_events):
    gen = TrajectoryGenerator(d_model=32, n_layers=1, n_heads=2, context=48, max_steps=2, batch_rows=2, threads=1)
    gen.fit(demo_events)
    longest = gen.info_["longest_stay_hours"]
    measured = dict(longest)
    assert longest["icu"] > 24 and longest["hospital"] >= longest["icu"]
    assert gen.grammar().stay_limits_hours == pytest.approx((longest["icu"], longest["hospital"]))
    gen.hyperparameters["stay_cap"] = 2.0
    assert gen.stay_limits_hours() == pytest.approx((2 * longest["icu"], 2 * longest["hospital"]))
    gen.hyperparameters["stay_cap"] = 0.0
    assert gen.stay_limits_hours() is None and not gen.grammar().has_stay_limits
    del gen.info_["longest_stay_hours"]  # a model saved before the limits: no cap until measured
    gen.hyperparameters["stay_cap"] = 1.0
    assert gen.stay_limits_hours() is None
    assert gen.measure_training_stays(demo_events)["longest_stay_hours"] == pytest.approx(measured)
    for bad in (0.5, -1, "x"):
        with pytest.raises(ConditioningError, match="stay_cap"):
            TrajectoryGenerator(stay_cap=bad)


def test_required_stays_keep_every_sampled_record_open_until_it_has_an_icu_stay(demo_events, demo_vocab):
    v = demo_vocab
    m = _random_model(v)
    with torch.no_grad():  # an untrained model that ends records far more readily than it opens stays
        for c, bias in ((Cat.EOS, 8.0), (Cat.DEATH, 3.0), (Cat.HOSP_OPEN, 5.0), (Cat.ICU_OPEN, 5.0)):
            m.out_bias[torch.from_numpy(v.cat == c)] += bias
    prompts = [np.array([v.bos])] * 40
    icu_open = v.cat == Cat.ICU_OPEN

    def with_icu(seqs):
        return np.mean([icu_open[s].any() for s in seqs])

    free = generate(m, Grammar(v, max_len=400), prompts, context=64, batch_size=16, seed=1)
    g = Grammar(v, max_len=400, required_stays=(True, False))
    held = generate(m, g, prompts, context=64, batch_size=16, seed=1)
    assert with_icu(free) < 0.5  # negative control: without the requirement most records end before the ICU
    assert with_icu(held) == 1.0 and all(g.check(s)[0] for s in held)
    # the sequential check names the reason for a record that ends before its ICU stay
    short = next(s for s in free if not icu_open[s].any())
    ok, pos, why = g.check(short)
    assert not ok and "before the record opened an ICU stay" in why
    assert Grammar(v, max_len=400).check(short)[0]
    # near the length cap the cap wins: a record may close without the stay
    tight = generate(m, Grammar(v, max_len=24, required_stays=(True, True)), prompts[:4], context=64, seed=1)
    assert all(Grammar(v, max_len=24, required_stays=(True, True)).check(s)[0] for s in tight)


def test_stays_are_required_only_when_every_training_record_holds_one(demo_events):
    gen = TrajectoryGenerator(d_model=32, n_layers=1, n_heads=2, context=48, max_steps=2, batch_rows=2, threads=1)
    gen.fit(demo_events)
    assert gen.required_stays() == (False, False)  # off by default (it lengthened MIMIC-IV demo records)
    gen.hyperparameters["require_stays"] = True
    held = gen.info_["records_with_stay"]
    assert held["records"] == demo_events["subject_id"].n_unique() and held["icu"] == held["records"]
    assert gen.required_stays()[0] and gen.grammar().required_stays[0]
    assert gen.required_stays()[1] == (held["hospital"] == held["records"])
    gen.hyperparameters["require_stays"] = False
    assert gen.required_stays() == (False, False)
    gen.hyperparameters["require_stays"] = True
    del gen.info_["records_with_stay"]  # a model saved before the count: nothing required until measured
    assert gen.required_stays() == (False, False)
    assert gen.measure_training_stays(demo_events)["records_with_stay"] == held
    # a cohort where one record has no ICU stay requires none
    icu_subjects = demo_events.filter(pl.col("code").str.starts_with("ICU_ADMISSION"))["subject_id"].unique()
    one = icu_subjects[0]
    no_icu = demo_events.filter(~((pl.col("subject_id") == one) & pl.col("code").str.starts_with("ICU_")))
    gen.measure_training_stays(no_icu)
    assert gen.info_["records_with_stay"]["icu"] == held["icu"] - 1 and not gen.required_stays()[0]


def test_bad_prompt_is_refused_by_the_grammar(demo_vocab):
    v = demo_vocab
    g = Grammar(v, max_len=64)
    bad = np.array([v.bos, v.index["SEX//F"], v.index["SEX//M"]])
    with pytest.raises(ConditioningError, match="breaks the record grammar"):
        generate(_random_model(v), g, [bad], context=32)


# ---------------------------------------------------------------- calibration


def test_markov_chain_transitions_are_reproduced(markov_model):
    s = markov_model.sample(300, seed=0, batch_size=64)
    C = transition_counts(s.filter(pl.col("code").str.contains(r"^MC//\d+$")), 4)
    assert C.sum() > 1500
    assert np.abs(C / C.sum(1, keepdims=True) - P).max() < 0.1
    lengths = s.filter(pl.col("code").str.starts_with("MC//")).group_by("subject_id").len()["len"].to_numpy()
    # against the training chains (p_end = 0.1: mean 10 events; this draw of 600 has 8.9), within 3 standard
    # errors of the difference of two means
    real = markov_events(600, P, np.full(4, 0.25), 0.1, seed=0)
    rl = real.filter(pl.col("code").str.starts_with("MC//")).group_by("subject_id").len()["len"].to_numpy()
    se = np.sqrt(lengths.var() / lengths.size + rl.var() / rl.size)
    assert abs(lengths.mean() - rl.mean()) < 3 * se
    assert markov_model.last_sample_stats_.as_dict()["mask_removed_mass_mean"] < 0.05


def test_negative_control_hot_sampling_breaks_calibration(markov_model):
    s = markov_model.sample(300, seed=0, temperature=3.0, batch_size=64)
    C = transition_counts(s.filter(pl.col("code").str.contains(r"^MC//\d+$")), 4)
    assert np.abs(C / C.sum(1, keepdims=True) - P).max() > 0.2


def test_min_prob_drops_the_unlikely_transitions_and_only_them(markov_model):
    # P's 0.1 entries fall below min_prob 0.15, its 0.2+ entries stay above it (fitted to within ~0.04)
    rare = P < 0.15
    share = {}
    for mp in (0.0, 0.15):
        s = markov_model.sample(200, seed=1, batch_size=64, max_len=120, min_prob=mp)
        C = transition_counts(s.filter(pl.col("code").str.contains(r"^MC//\d+$")), 4)
        share[mp] = C[rare].sum() / C.sum()
        kept = C / C.sum(1, keepdims=True)
        if mp:
            # what is left is P renormalised over its likely entries
            expect = np.where(rare, 0.0, P) / np.where(rare, 0.0, P).sum(1, keepdims=True)
            assert np.abs(kept - expect).max() < 0.1
            assert markov_model.last_sample_stats_.as_dict()["min_prob_truncated_mass_mean"] > 0.01
    assert share[0.0] > 0.1  # negative control: untruncated sampling does make the rare transitions
    assert share[0.15] < 0.01


def test_sampling_in_worker_processes_is_calibrated_and_independent_of_the_worker_count(markov_model):
    a = markov_model.sample(300, seed=4, batch_size=32, workers=2)
    st = markov_model.last_sample_stats_.as_dict()
    assert st["records"] == 300 and st["seconds"] > 0 and st["processes"] == 2
    b = markov_model.sample(300, seed=4, batch_size=32, workers=3)
    assert a.equals(b)  # each record has its own random stream: the worker count does not change the records
    one = markov_model.sample(300, seed=4, batch_size=32, workers=1)
    assert a.equals(one)  # ... nor does sampling in this process, in batches of other records
    assert not a.equals(markov_model.sample(300, seed=5, batch_size=32, workers=2))  # negative control: the seed does
    assert a["subject_id"].n_unique() == 300
    C = transition_counts(a.filter(pl.col("code").str.contains(r"^MC//\d+$")), 4)
    assert np.abs(C / C.sum(1, keepdims=True) - P).max() < 0.1
    with pytest.raises(ConditioningError, match="workers"):
        markov_model.sample(5, workers=0)


def test_top_p_default_does_not_truncate(markov_model):
    import inspect

    for fn in (TrajectoryGenerator.sample, TrajectoryGenerator.condition, generate):
        params = inspect.signature(fn).parameters
        assert params["top_p"].default == 1.0 and params["temperature"].default == 1.0
        assert params["min_prob"].default == 0.0
        assert "top_k" not in params


# ---------------------------------------------------------------- persistence and output


def test_save_load_gives_identical_samples(markov_model, tmp_path):
    path = markov_model.save(tmp_path / "m")
    again = TrajectoryGenerator.load(path)
    a = markov_model.sample(20, seed=3)
    b = again.sample(20, seed=3)
    assert a.equals(b)
    assert not a.equals(markov_model.sample(20, seed=4))
    # tampering is detected
    cfg = json.loads((path / "config.json").read_text())
    cfg["hyperparameters"]["d_model"] = 32
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelFileError, match="checksum"):
        TrajectoryGenerator.load(path)


def test_meds_output_is_readable_and_sorted(markov_model, tmp_path):
    info = markov_model.sample_to_meds(tmp_path / "syn", 30, seed=0, shard_size=12)
    files = sorted((tmp_path / "syn" / "data" / "train").glob("*.parquet"))
    assert len(files) == 3 and info["patients"] == 30
    ev = pl.concat([pl.read_parquet(f) for f in files])
    assert ev["subject_id"].n_unique() == 30
    assert ev.columns[:4] == ["subject_id", "time", "code", "numeric_value"]
    sorted_ev = ev.sort(["subject_id", "time"], nulls_last=False, maintain_order=True)
    assert ev.equals(sorted_ev)
    codes = pl.read_parquet(tmp_path / "syn" / "metadata" / "codes.parquet")
    assert set(ev["code"].unique()) <= set(codes["code"])
    assert check_records(ev)["valid"].all()


def test_prompts_demographic_and_history(markov_model):
    out = markov_model.condition({"sex": "F", "age": 40}, n=10, seed=0)
    assert set(out.filter(pl.col("time").is_null())["code"]) == {"GENDER//F"}
    real = markov_events(5, P, np.full(4, 0.25), 0.0, seed=5, max_events=12).filter(pl.col("subject_id") == 2)
    until = real.filter(pl.col("code").str.starts_with("MC//"))["time"][5]
    cont = markov_model.condition({"history": real, "until": until}, n=4, seed=0)
    hist = real.filter(pl.col("time").is_not_null() & (pl.col("time") <= until))
    for sid in range(1, 5):
        rec = cont.filter((pl.col("subject_id") == sid) & pl.col("time").is_not_null())
        assert rec["code"].to_list()[: hist.height] == hist["code"].to_list()
        assert rec["time"].to_list()[: hist.height] == hist["time"].to_list()
    assert check_records(cont)["valid"].all()
    with pytest.raises(ConditioningError, match="race"):
        markov_model.condition({"race": "MARTIAN"})


@pytest.mark.parametrize("kv_heads,seen_embedding,seen_bias,novel_bias,length_budget",
                         [(None, "tied", False, False, False), (1, "tied", False, False, False),
                          (None, "own", False, False, False), (None, "tied", True, False, False),
                          (None, "tied", True, True, False), (1, "tied", True, True, True)])
def test_kv_cache_steps_match_the_full_forward(kv_heads, seen_embedding, seen_bias, novel_bias, length_budget):
    """Cached one-token steps (ring cache, running clocks and seen-codes memory) give the full forward's
    logits under the windowed mask, with one key/value head per query head or one shared by all, and with
    the memory summing the tied embeddings or a table of its own."""
    torch.manual_seed(0)
    m = TrajectoryTransformer(50, d_model=32, n_layers=2, n_heads=2, kv_heads=kv_heads,
                              seen_embedding=seen_embedding, seen_bias=seen_bias, novel_bias=novel_bias,
                              length_budget=length_budget).eval()
    if length_budget:  # rows far apart, so a wrong count would show
        with torch.no_grad():
            m.left_emb.weight.normal_(0, 1.0)
    if seen_bias:
        with torch.no_grad():
            m.seen_bias.normal_(0, 1.0)
    if novel_bias:  # a different offset in every stay bucket, so a wrong bucket would show
        with torch.no_grad():
            m.novel_bias.normal_(0, 1.0)
    if seen_embedding == "own":  # make the two tables differ, so the test would see the wrong one used
        with torch.no_grad():
            m.seen_emb.weight.normal_(0, 1.0)
    assert m.new_cache(1, 5, 15).k[0].shape[1] == (kv_heads or 2)
    T, prefix, window = 60, 5, 15
    seq = torch.randint(3, 50, (2, T))
    cache = m.new_cache(2, prefix, window)
    hours = torch.cumsum(torch.rand(2, T) * 3, 1)
    stay = torch.where(torch.rand(2, T, 2) < 0.3, torch.full((2, T, 2), -1.0), torch.rand(2, T, 2) * 100)
    code_like = np.arange(50) >= 20
    memory = RunningMemory(code_like, 2, 32)
    E = m.memory_matrix(m.embedding_matrix()).detach()
    steps = []
    # tokens left after each position: two record lengths, one running out before the window ends ("end now")
    left = (torch.tensor([[T + 7], [T - 20]]) - 1 - torch.arange(T)) if length_budget else None
    for t in range(T):
        memory.advance(seq[:, t], E)
        steps.append(m.step(seq[:, t], torch.full((2,), t), cache, hours[:, t], stay[:, t], memory.vector(),
                            memory.seen, left[:, t] if left is not None else None))
    steps = torch.stack(steps, 1)
    first = torch.stack([torch.from_numpy(first_occurrences(r.numpy(), np.array([0, T]), code_like) > 0) for r in seq])
    seen = SeenInput(first, torch.zeros(2, T, dtype=torch.long), torch.zeros(0, dtype=torch.long),
                     torch.zeros(0, dtype=torch.long))
    assert int(first.sum()) > 5
    half = (window - 1) // 2
    mask = torch.zeros(T, T, dtype=torch.bool)
    for q in range(T):
        j = q - prefix
        start = max(0, (j // half - 1) * half) if j >= 0 else 0
        for k in range(q + 1):
            mask[q, k] = k < prefix or (k - prefix) >= start
    with torch.no_grad():
        full = m(seq, torch.arange(T).expand(2, T), mask[None, None], hours=hours, stay=stay, seen=seen, left=left)
    if length_budget:
        with pytest.raises(ValueError, match="length budget"):
            m(seq, torch.arange(T).expand(2, T), mask[None, None], hours=hours, stay=stay, seen=seen)
    assert torch.allclose(steps, full, atol=1e-5)
    # the visible span never exceeds what a training window of `window` timeline tokens holds
    assert int(mask[prefix:, prefix:].sum(1).max()) <= window - 1


def test_code_embeddings_are_tied_through_the_hierarchy(demo_vocab):
    v = demo_vocab
    nodes_of = {}
    for t, n in zip(v.h_tok.tolist(), v.h_node.tolist()):
        nodes_of.setdefault(t, []).append(v.node_names[n])
    # ICD chapter / category nodes and metadata parents exist and are shared
    assert any(n.startswith("DIAGNOSIS//ICD//10//chapter") for n in v.node_names)
    assert any(n.startswith("PARENT//LOINC/") for n in v.node_names)
    i = next(i for i, ns in nodes_of.items() if any(n.startswith("DIAGNOSIS//ICD//9//chapter") for n in ns))
    assert "DIAGNOSIS//ICD//9" in nodes_of[i] and "DIAGNOSIS" in nodes_of[i]
    torch.manual_seed(0)
    m = TrajectoryTransformer(len(v), d_model=16, n_layers=1, n_heads=2, n_nodes=len(v.node_names),
                              h_tok=v.h_tok, h_node=v.h_node)
    E = m.embedding_matrix()
    node_sum = torch.zeros_like(E).index_add(0, torch.as_tensor(v.h_tok), m.node_emb.weight[torch.as_tensor(v.h_node)])
    assert torch.allclose(E, m.tok_emb.weight + node_sum)
    # a gradient on one code reaches its parents, hence every sibling's embedding
    E[i].sum().backward()
    touched = torch.nonzero(m.node_emb.weight.grad.abs().sum(1)).flatten().tolist()
    assert sorted(touched) == sorted(v.node_names.index(n) for n in nodes_of[i])


def test_cli_train_generate_validate(tmp_path, capsys):
    import argparse

    from synthehr.models.trajectory import cli

    root = tmp_path / "meds"
    (root / "data" / "train").mkdir(parents=True)
    markov_events(60, P, np.full(4, 0.25), 0.1, seed=1).write_parquet(root / "data" / "train" / "0.parquet")
    args = argparse.Namespace(model="trajectory", data=str(root), out=str(tmp_path / "model"), split="train",
                              param=["d_model=16", "n_layers=1", "n_heads=2", "context=32", "epochs=1", "max_len=120",
                                     "seen_bias=1", "seen_embedding=own"])
    assert cli.train_command(args) == 0 and cli.is_trajectory_model(tmp_path / "model")
    assert not cli.is_trajectory_model(root)
    for out, prompt in (("u", None), ("d", ["sex=F", "age=41"]),
                        ("h", [f"history={root}", "subject=3", "until=2200-01-01"])):
        ns = argparse.Namespace(model=str(tmp_path / "model"), n=4, out=str(tmp_path / out), seed=0, prompt=prompt)
        assert cli.generate_command(ns) == 0
        ev = pl.read_parquet(tmp_path / out / "data" / "train" / "0.parquet")
        assert ev["subject_id"].n_unique() == 4
    assert "stay limits: none" in capsys.readouterr().out  # Markov records hold no stays
    with pytest.raises(ConditioningError, match="--stay-cap"):
        cli.generate_command(argparse.Namespace(model=str(tmp_path / "model"), n=2, out=str(tmp_path / "c"),
                                                seed=0, prompt=None, stay_cap=0.5))
    parser = argparse.ArgumentParser()
    cli.register_cli(parser.add_subparsers(dest="command"))
    ns = parser.parse_args(["trajectory-validate", str(tmp_path / "d")])
    assert ns.func(ns) == 0
    assert "4 structurally valid" in capsys.readouterr().out
    with pytest.raises(ConditioningError, match="prompt"):
        cli.parse_prompt(["colour=blue"])


def test_inverse_cdf_draws_match_the_weights_and_never_pick_zero_weight_tokens():
    from synthehr.models.trajectory.sampler import _sample_rows

    w = torch.tensor([0.0, 0.5, 0.0, 0.2, 0.3, 0.0])
    gen = torch.Generator().manual_seed(0)
    u = lambda n: torch.rand(n, generator=gen, dtype=torch.float64)  # noqa: E731
    draws = torch.cat([_sample_rows(w.repeat(500, 1), 1.0, u(500)) for _ in range(40)])
    freq = torch.bincount(draws, minlength=6).double() / draws.numel()
    assert freq[[0, 2, 5]].sum() == 0
    assert torch.allclose(freq, w.double(), atol=0.01)
    # top_p = 0.6 keeps 0.5 (the most likely) and 0.3 (cumulative mass before it 0.5 < 0.6)
    nuc = torch.cat([_sample_rows(w.repeat(500, 1), 0.6, u(500)) for _ in range(20)])
    assert set(nuc.tolist()) == {1, 4}
    # the edges: u = 0 takes the first token of positive weight, u just below 1 the last one
    edge = _sample_rows(w.repeat(2, 1), 1.0, torch.tensor([0.0, 1.0 - 2.0 ** -53], dtype=torch.float64))
    assert edge.tolist() == [1, 4]


def test_main_cli_dispatches_trajectory_train_and_generate(tmp_path, capsys):
    from synthehr.cli import main

    root = tmp_path / "meds"
    (root / "data" / "train").mkdir(parents=True)
    markov_events(40, P, np.full(4, 0.25), 0.1, seed=2).write_parquet(root / "data" / "train" / "0.parquet")
    params = [a for hp in ("d_model=16", "n_layers=1", "n_heads=2", "context=32", "epochs=1", "max_len=80")
              for a in ("--param", hp)]
    assert main(["train", "--model", "trajectory", "--data", str(root), "--out", str(tmp_path / "m"), *params]) == 0
    assert main(["generate", "--model", str(tmp_path / "m"), "-n", "3", "--out", str(tmp_path / "s"),
                 "--prompt", "sex=M", "--top-p", "0.95"]) == 0
    ev = pl.read_parquet(tmp_path / "s" / "data" / "train" / "0.parquet")
    assert ev["subject_id"].n_unique() == 3
    # a table option on a trajectory model is refused with a message naming the right option
    assert main(["generate", "--model", str(tmp_path / "m"), "-n", "3", "--out", str(tmp_path / "x"),
                 "--condition", "ph=7.1"]) == 2
    assert "--prompt" in capsys.readouterr().err
    # --temperature auto: chosen on the training patients of --calibrate-on, then used
    assert main(["generate", "--model", str(tmp_path / "m"), "-n", "3", "--out", str(tmp_path / "a"),
                 "--temperature", "auto", "--calibrate-on", str(root), "--calibration-records", "4"]) == 0
    out = capsys.readouterr().out
    assert out.count("training-cohort event-probability R2") == 6 and "the best event-probability R2" in out
    assert pl.read_parquet(tmp_path / "a" / "data" / "train" / "0.parquet")["subject_id"].n_unique() == 3
    for bad, says in ((["--temperature", "auto"], "--calibrate-on"), (["--calibrate-on", str(root)], "auto"),
                      (["--temperature", "0"], "positive"), (["--temperature", "warm"], "auto")):
        assert main(["generate", "--model", str(tmp_path / "m"), "-n", "3", "--out", str(tmp_path / "b"), *bad]) == 2
        assert says in capsys.readouterr().err


def test_first_stay_hours_measures_the_first_icu_stay():
    from datetime import datetime, timedelta

    from synthehr.models.trajectory.metrics import first_stay_hours

    t0 = datetime(2150, 1, 1)
    h = lambda x: t0 + timedelta(hours=x)  # noqa: E731
    ev = pl.DataFrame({"subject_id": [1, 1, 1, 1, 1, 1, 2, 2],
                       "time": [h(-5), h(0), h(3), h(47.5), h(60), h(100), h(0), h(10)],
                       "code": ["LAB//x", "ICU_ADMISSION//MICU", "LAB//x", "LAB//y", "ICU_DISCHARGE//MICU",
                                "ICU_ADMISSION//MICU", "ICU_ADMISSION//SICU", "LAB//x"]})
    st = first_stay_hours(ev).set_index("subject_id")
    assert st.loc[1, "stay_hours"] == 60 and st.loc[1, "active_hours"] == 47.5
    assert np.isnan(st.loc[2, "stay_hours"]) and st.loc[2, "active_hours"] == 10  # still open at the end


def test_chunked_checkpointed_loss_equals_the_whole_loss(demo_events, demo_vocab, tmp_path, monkeypatch):
    """The loss in LOSS_CHUNK blocks (recomputed in backward) gives the same value and gradients as one
    block, and the store's positioned reads give back exactly what was appended."""
    import synthehr.models.trajectory.data as D

    enc, _ = Tokenizer(demo_vocab).encode(demo_events)
    store = D.TokenStore(tmp_path / "store", ClockRoles.of(demo_vocab))
    store.append(enc)
    store.finish()
    hours, stay = record_clocks(enc.tokens, enc.offsets, ClockRoles.of(demo_vocab))
    a, b = int(enc.offsets[3]), int(enc.offsets[4])
    t, h, s, fo = store.read(a, b - a)
    assert np.array_equal(t, enc.tokens[a:b]) and np.array_equal(h, hours[a:b]) and np.array_equal(s, stay[a:b])
    assert np.array_equal(fo, first_occurrences(enc.tokens, enc.offsets, ClockRoles.of(demo_vocab).code_like)[a:b])
    assert np.array_equal(store.sequence(3), enc.sequence(3))
    with pytest.raises(IndexError, match="past the end"):
        store.read(int(enc.offsets[-1]) - 2, 5)
    windows = D.make_windows(store.lengths(), 64)
    batch, _ = D.pack(store, windows, 64, rows=4)
    torch.manual_seed(0)
    m = TrajectoryTransformer(len(demo_vocab), d_model=32, n_layers=1, n_heads=2)
    grads, losses = [], []
    for chunk in (10**6, 37):
        monkeypatch.setattr(D, "LOSS_CHUNK", chunk)
        m.zero_grad()
        loss, n = D.batch_loss(m, batch)
        loss.backward()
        losses.append(float(loss.detach()))
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None]))
    assert n > 37 * 3
    assert abs(losses[0] - losses[1]) < 1e-5
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
    # with the seen bias the chunked loss (the batch's codes only) equals the dense full forward's
    torch.manual_seed(0)
    m = TrajectoryTransformer(len(demo_vocab), d_model=32, n_layers=1, n_heads=2, seen_bias=True)
    with torch.no_grad():
        m.seen_bias.normal_(0, 2.0)
    monkeypatch.setattr(D, "LOSS_CHUNK", 37)
    loss, n = D.batch_loss(m, batch)
    with torch.no_grad():
        full = m(batch.tokens, batch.pos, batch.mask, batch.rec_pos, batch.hours, batch.stay, batch.seen)
    sel = batch.targets >= 0
    want = torch.nn.functional.cross_entropy(full[sel], batch.targets[sel])
    assert abs(float(loss.detach()) - float(want)) < 1e-5
    plain = TrajectoryTransformer(len(demo_vocab), d_model=32, n_layers=1, n_heads=2)
    plain.load_state_dict({k: v for k, v in m.state_dict().items() if k != "seen_bias"})
    assert abs(float(D.batch_loss(plain, batch)[0].detach()) - float(loss.detach())) > 1e-3  # the bias does enter the loss
    # and with the novel bias (per stay bucket, where a token is not yet held) as well
    torch.manual_seed(0)
    nm = TrajectoryTransformer(len(demo_vocab), d_model=32, n_layers=1, n_heads=2, seen_bias=True, novel_bias=True)
    with torch.no_grad():
        nm.seen_bias.normal_(0, 2.0)
        nm.novel_bias.normal_(0, 2.0)
    assert len(torch.unique(stay_bucket(batch.stay[batch.targets >= 0]))) >= 2  # more than one bucket in play
    loss, n = D.batch_loss(nm, batch)
    with torch.no_grad():
        full = nm(batch.tokens, batch.pos, batch.mask, batch.rec_pos, batch.hours, batch.stay, batch.seen)
    want = torch.nn.functional.cross_entropy(full[sel], batch.targets[sel])
    assert abs(float(loss.detach()) - float(want)) < 1e-5
    seen_only = TrajectoryTransformer(len(demo_vocab), d_model=32, n_layers=1, n_heads=2, seen_bias=True)
    seen_only.load_state_dict({k: v for k, v in nm.state_dict().items() if k != "novel_bias"})
    assert abs(float(D.batch_loss(seen_only, batch)[0].detach()) - float(loss.detach())) > 1e-3
    # the length budget: pack counts down each record's tokens left, and the loss reads them
    lens = np.diff(enc.offsets)
    i0 = int(windows[0, 0])
    assert int(batch.left[0, 0]) == lens[i0] - 1  # [BOS] of the first record: all but itself left
    real = batch.targets >= 0
    assert int(batch.left[real].min()) >= 1
    torch.manual_seed(0)
    lb = TrajectoryTransformer(len(demo_vocab), d_model=32, n_layers=1, n_heads=2, length_budget=True)
    with torch.no_grad():
        lb.left_emb.weight.normal_(0, 1.0)
    loss, n = D.batch_loss(lb, batch)
    with torch.no_grad():
        full = lb(batch.tokens, batch.pos, batch.mask, batch.rec_pos, batch.hours, batch.stay, batch.seen, batch.left)
    assert abs(float(loss.detach()) - float(torch.nn.functional.cross_entropy(full[sel], batch.targets[sel]))) < 1e-5
    shifted = D.Batch(**{**batch.__dict__, "left": batch.left // 16})
    assert abs(float(D.batch_loss(lb, shifted)[0].detach()) - float(loss.detach())) > 1e-3  # the budget enters the loss
    store.close()


def test_record_uniforms_are_uniform_and_independent_across_records_and_positions():
    from scipy import stats as st

    from synthehr.models.trajectory.sampler import record_uniforms

    rec, pos = np.meshgrid(np.arange(400), np.arange(500), indexing="ij")
    u = record_uniforms(7, rec.ravel(), pos.ravel()).reshape(400, 500)
    assert u.min() >= 0 and u.max() < 1
    assert st.kstest(u.ravel(), "uniform").pvalue > 1e-3
    # neighbouring positions of one record, and the same position of neighbouring records, are uncorrelated
    assert abs(np.corrcoef(u[:, :-1].ravel(), u[:, 1:].ravel())[0, 1]) < 0.01
    assert abs(np.corrcoef(u[:-1].ravel(), u[1:].ravel())[0, 1]) < 0.01
    # a function of (seed, record, position) only; another seed gives other numbers
    assert np.array_equal(record_uniforms(7, rec[3], pos[3]), u[3])
    assert np.abs(record_uniforms(8, rec.ravel(), pos.ravel()) - u.ravel()).mean() > 0.2


def test_record_lengths_follow_the_training_quantiles():
    from scipy import stats as st

    from synthehr.models.trajectory.sampler import draw_record_lengths

    real = np.random.default_rng(0).lognormal(6, 0.8, 5000).astype(np.int64) + 6
    q = np.quantile(real, np.linspace(0, 1, 101))
    n = 4000
    d = draw_record_lengths(q, 3, np.arange(n), np.full(n, 2))
    assert d.min() >= real.min() and d.max() <= real.max()
    assert st.ks_2samp(d, real).statistic < 0.03
    # a record's draw depends on (seed, record) only; another seed gives others
    assert np.array_equal(draw_record_lengths(q, 3, np.arange(10, 20), np.full(10, 2)), d[10:20])
    assert (draw_record_lengths(q, 4, np.arange(n), np.full(n, 2)) != d).mean() > 0.9
    # a floor: the continuation of a history draws from the distribution above it
    floor = int(np.median(real))
    up = draw_record_lengths(q, 3, np.arange(n), np.full(n, floor))
    assert up.min() >= floor
    assert st.ks_2samp(up, real[real >= floor]).statistic < 0.04
    # past the longest training record: the floor itself
    assert (draw_record_lengths(q, 3, np.arange(5), np.full(5, real.max() + 10)) == real.max() + 10).all()
    # a cap: drawn from the distribution below it
    cap = int(np.quantile(real, 0.3))
    down = draw_record_lengths(q, 3, np.arange(n), np.full(n, 2), at_most=cap)
    assert down.max() <= cap and st.ks_2samp(down, real[real <= cap]).statistic < 0.05
    # tied quantiles (short records of few distinct lengths): a floor on a tied value still draws it
    tied = np.repeat([7, 9, 11, 13], [50, 30, 15, 5])
    t = draw_record_lengths(np.quantile(tied, np.linspace(0, 1, 101)), 0, np.arange(n), np.full(n, 9))
    assert t.min() == 9 and abs((t == 9).mean() - 0.6) < 0.1  # P(9 | >= 9) = 30 / 50


def test_length_budget_is_followed_and_models_without_it_still_load(markov_budget_model, tmp_path):
    """The trained Markov model ends its records where their drawn length budget says (the grammar still
    decides when a record may end); a model saved before the budget existed loads and samples without it."""
    from synthehr.models.trajectory.sampler import draw_record_lengths

    import synthehr.models.trajectory.data as D

    n = 200
    m = markov_budget_model.model_
    seen_left: list[np.ndarray] = []
    step = m.step

    def recording_step(*a, **k):  # what generate tells the model, step by step
        seen_left.append(a[7].numpy().copy())
        return step(*a, **k)

    m.step = recording_step
    try:
        seqs = markov_budget_model.sample_tokens([np.array([markov_budget_model.vocab_.bos])] * n, seed=5, batch_size=n)
    finally:
        del m.step
    g = markov_budget_model.grammar()
    want = draw_record_lengths(markov_budget_model.info_["record_tokens"]["quantiles"], 5, np.arange(n), np.full(n, 3),
                               at_most=g.max_len - g.force_margin)
    got = np.array([len(x) for x in seqs])
    # Markov records have odd lengths only (a time token and a code per event after the first), so an even
    # draw ends one token later
    assert (np.abs(got - want) <= 1).mean() > 0.95 and (got[want % 2 == 1] == want[want % 2 == 1]).mean() > 0.9
    # the counts generate fed the model equal what training's pack reads off the same records
    full = next(t for t, x in enumerate(seen_left) if len(x) < n)  # steps before the batch first compacts
    exact = [i for i in range(n) if got[i] == want[i] and got[i] - 1 <= full][:5]
    assert len(exact) == 5
    enc = Encoded(subject_ids=np.arange(len(exact)), offsets=np.r_[0, np.cumsum(got[exact])],
                  tokens=np.concatenate([seqs[i] for i in exact]).astype(np.int32), anchor_us=np.zeros(len(exact), np.int64))
    store = D.TokenStore(tmp_path / "store", ClockRoles.of(markov_budget_model.vocab_))
    store.append(enc)
    store.finish()
    for k, i in enumerate(exact):
        batch, _ = D.pack(store, np.array([[k, 0, 0]]), int(got[i]) + 1, rows=1)
        packed = batch.left[0, : got[i] - 1].numpy()
        fed = np.array([seen_left[t][i] for t in range(got[i] - 1)])  # row i is record i until compaction
        assert np.array_equal(fed, packed) and packed[-1] == 1
    store.close()
    with pytest.raises(ConditioningError, match="length budget"):
        generate(markov_budget_model.model_, markov_budget_model.grammar(), [np.array([markov_budget_model.vocab_.bos])], context=48)
    # a model saved before the budget: no `length_budget` hyper-parameter, no left_emb weights, no quantiles
    from safetensors.numpy import load_file

    from synthehr.models.base import _sha256

    old = TrajectoryGenerator(d_model=16, n_layers=1, n_heads=2, context=48, epochs=1, max_len=300, seed=0,
                              threads=1, length_budget=False).fit(markov_events(40, P, np.full(4, 0.25), 0.1, seed=1))
    path = old.save(tmp_path / "old")
    cfg = json.loads((path / "config.json").read_text())
    del cfg["hyperparameters"]["length_budget"]
    del cfg["state"]["info"]["record_tokens"]["quantiles"]
    (path / "config.json").write_text(json.dumps(cfg))
    assert not any("left_emb" in k for k in load_file(str(path / "weights.safetensors")))
    (path / "manifest.json").write_text(json.dumps({f: _sha256(path / f) for f in ("config.json", "weights.safetensors")}))
    back = TrajectoryGenerator.load(path)
    assert back.hyperparameters["length_budget"] is False and back.model_.left_emb is None
    assert back.sample(5, seed=0).equals(old.sample(5, seed=0))
    # a budget model whose config lost the quantiles is refused with the field named
    path = markov_budget_model.save(tmp_path / "new")
    cfg = json.loads((path / "config.json").read_text())
    del cfg["state"]["info"]["record_tokens"]["quantiles"]
    (path / "config.json").write_text(json.dumps(cfg))
    (path / "manifest.json").write_text(json.dumps({f: _sha256(path / f) for f in ("config.json", "weights.safetensors")}))
    with pytest.raises(ModelFileError, match="quantiles"):
        TrajectoryGenerator.load(path)
