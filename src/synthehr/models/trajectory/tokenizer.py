"""MEDS events ⇄ token sequences.

A patient becomes

    [BOS] SEX//x AGE//<bucket> AGEYR//<k> RACE//<r>  (demographics prefix, always 5 tokens)
    { TIME//1y* TIME//<gap>? <code> VAL//<bin>? ... }  (timeline: time tokens only when the clock moves)
    [EOS]

MEDS_BIRTH is implied by the age tokens; GENDER//x by SEX//x.  Time is encoded against a running clock
that starts at birth + the encoded whole years of age: a new timestamp emits TIME//1y for each full
year ahead of the clock and then up to six sub-year gap tokens, greedily the largest representative
not above what is left, and the clock advances by exactly what was emitted.  So decoded times never
drift and never run ahead of the true ones; what is left (below 1 minute, at most 3 minutes after a gap
under a day and 2 hours after one over 30 days) is carried into the next timestamp's gap.

Before encoding, records are put in canonical, structurally valid form (see `canonicalize`): the
repairs are counted, so the share of real records that needed them can be reported.
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass

import numpy as np
import polars as pl

from synthehr.errors import DataError
from synthehr.models.trajectory.vocab import (AGE_BUCKET_YEARS, AGE_BUCKETS, BIRTH_CODE, CODE_LIKE, GAP_SECONDS,
                                              MAX_GAP_TOKENS, MIN_GAP_SECONDS, SEX_PREFIX, STRUCTURAL, YEAR_SECONDS,
                                              Cat, Vocabulary, code_prefix, sex_restriction)

PREFIX_LEN = 5
_US = 1_000_000
_GAP_REPS = GAP_SECONDS.tolist()


@dataclass
class Encoded:
    """Token sequences of several patients, flat: patient i is tokens[offsets[i]:offsets[i + 1]]."""
    subject_ids: np.ndarray   # (n,) int64
    offsets: np.ndarray       # (n + 1,) int64
    tokens: np.ndarray        # (T,) int32
    anchor_us: np.ndarray     # (n,) int64: birth time (µs since epoch), or the first event's when birth is unknown

    def __len__(self) -> int:
        return len(self.subject_ids)

    def sequence(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i]: self.offsets[i + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def normalize_events(events) -> pl.DataFrame:
    """pandas/polars MEDS-like events → polars with subject_id, time (µs), code, numeric_value[, race]."""
    if not isinstance(events, pl.DataFrame):
        try:
            events = pl.from_pandas(events)
        except Exception as e:  # noqa: BLE001 - name the problem, whatever the input was
            raise DataError(f"events must be a polars or pandas DataFrame ({e})") from None
    missing = [c for c in ("subject_id", "time", "code") if c not in events.columns]
    if missing:
        raise DataError(f"events lack MEDS column(s) {missing}", column=missing[0])
    cols = [pl.col("subject_id").cast(pl.Int64), pl.col("time").cast(pl.Datetime("us")),
            pl.col("code").cast(pl.Utf8),
            (pl.col("numeric_value").cast(pl.Float64) if "numeric_value" in events.columns
             else pl.lit(None, pl.Float64).alias("numeric_value"))]
    if "race" in events.columns:
        cols.append(pl.col("race").cast(pl.Utf8))
    return events.select(cols)


class Tokenizer:
    def __init__(self, vocab: Vocabulary):
        self.vocab = vocab
        v = vocab
        self._code_ids = pl.DataFrame({"code": [t for i, t in enumerate(v.tokens) if v.cat[i] in CODE_LIKE],
                                       "tok": [i for i in range(len(v)) if v.cat[i] in CODE_LIKE]},
                                      schema={"code": pl.Utf8, "tok": pl.Int32})
        self._edges = v.edges
        self._year_id = v.year_id
        self._gap_ids = v.gap_ids
        self._value_ids = v.value_ids
        self._sex_ids = {s: v.sex_id(s) for s in ("F", "M", "UNK")}

    # ------------------------------------------------------------------ canonical form
    def canonicalize(self, events, close_open: bool = True) -> tuple[pl.DataFrame, pl.DataFrame, Counter]:
        """Events → (subjects, timeline, repairs).

        subjects: subject_id, sex ('F'/'M'/None), race, birth (µs datetime or null), one row per subject.
        timeline: subject_id, time, tok, value in canonical order (sorted by time; at one time: closers of
        stays opened earlier, openers, other events, then closers of stays opened at that time, death).

        Repairs (counted in `repairs`): static rows other than sex dropped; sex-specific codes of the
        other sex dropped; events after death dropped (stay closers and MEDS_DEATH after it are moved to
        the death time); a hospital admission that comes inside an ICU stay opened outside any hospital
        stay (when the training data nest them) is moved back to the ICU admission; a second admission
        while one is open, any other ICU stay outside a hospital stay (when nested) and closers without an
        open stay dropped; an ICU stay still
        open when its hospital stay closes or the patient dies is closed then (by moving its next ICU
        discharge there, else by the most frequent ICU discharge code); stays still open at the end of
        the record are closed at its last time (when `close_open`; a prompt keeps them open).
        """
        v = self.vocab
        ev = normalize_events(events).with_row_index("row")
        repairs: Counter = Counter()
        is_sex = pl.col("code").str.starts_with(f"{SEX_PREFIX}//")
        sex = (ev.filter(is_sex).group_by("subject_id", maintain_order=True)
               .agg(pl.col("code").first().str.slice(len(SEX_PREFIX) + 2).alias("sex")))
        birth = (ev.filter((pl.col("code") == BIRTH_CODE) & pl.col("time").is_not_null())
                 .group_by("subject_id").agg(pl.col("time").min().alias("birth")))
        subjects = ev.select("subject_id").unique(maintain_order=True).join(sex, on="subject_id", how="left") \
            .join(birth, on="subject_id", how="left")
        if "race" in ev.columns:
            race = (ev.filter(pl.col("race").is_not_null()).group_by("subject_id")
                    .agg(pl.col("race").mode().sort().first()))
            subjects = subjects.join(race, on="subject_id", how="left")
        else:
            subjects = subjects.with_columns(pl.lit(None, pl.Utf8).alias("race"))
        subjects = subjects.with_columns(pl.when(pl.col("sex").is_in(["F", "M"])).then(pl.col("sex")).alias("sex"))
        repairs["static_rows_dropped"] += ev.filter(pl.col("time").is_null() & ~is_sex).height
        tl = ev.filter(pl.col("time").is_not_null() & (pl.col("code") != BIRTH_CODE) & ~is_sex)
        repairs["timed_sex_rows_dropped"] += ev.filter(pl.col("time").is_not_null() & is_sex).height

        # code → token (unknown → its prefix's OTHER token → OTHER); sex rule on the original code
        codes = tl.select("code").unique()
        code_list = codes["code"].to_list()
        codes = codes.with_columns(
            pl.Series("tok", [v.code_to_id(c) for c in code_list], dtype=pl.Int32),
            pl.Series("rule", [sex_restriction(c) for c in code_list], dtype=pl.Int8))
        tl = tl.join(codes, on="code", how="left").join(subjects.select("subject_id", "sex"), on="subject_id", how="left")
        wrong_sex = ((pl.col("rule") == 1) & (pl.col("sex") != "F").fill_null(True)) | \
                    ((pl.col("rule") == 2) & (pl.col("sex") != "M").fill_null(True))
        repairs["sex_specific_dropped"] += tl.filter(wrong_sex).height
        repairs["out_of_vocabulary_events"] += tl.filter(
            pl.col("tok").is_in(np.flatnonzero(v.cat == Cat.OTHER).tolist())).height
        tl = tl.filter(~wrong_sex)
        tl = tl.with_columns(pl.Series("cat", v.cat[tl["tok"].to_numpy()].astype(np.int8), dtype=pl.Int8))

        # nothing after death
        structural = pl.col("cat").is_in([int(c) for c in STRUCTURAL])
        death = (tl.filter(pl.col("cat").is_in([int(Cat.DEATH), int(Cat.HOSP_DIED)]))
                 .group_by("subject_id").agg(pl.col("time").min().alias("death")))
        tl = tl.join(death, on="subject_id", how="left")
        after = pl.col("death").is_not_null() & (pl.col("time") > pl.col("death"))
        movable = pl.col("cat").is_in([int(Cat.HOSP_CLOSE), int(Cat.HOSP_DIED), int(Cat.ICU_CLOSE), int(Cat.DEATH)])
        repairs["after_death_dropped"] += tl.filter(after & ~movable).height
        repairs["moved_to_death_time"] += tl.filter(after & movable).height
        tl = tl.filter(~after | movable).with_columns(
            pl.when(after).then(pl.col("death")).otherwise(pl.col("time")).alias("time"))
        tl = tl.sort(["subject_id", "time", "row"])

        # brackets, one pass over the structural events only
        last_time = tl.group_by("subject_id").agg(pl.col("time").max().alias("last"))
        last = dict(zip(last_time["subject_id"].to_list(), last_time["last"].to_list()))
        st = tl.filter(structural).select("subject_id", "time", "cat", "row", "tok")
        out: list[tuple] = []
        if st.height or close_open:
            sid_col = st["subject_id"].to_list()
            rows = list(zip(st["time"].to_list(), st["cat"].to_list(), st["row"].to_list(), st["tok"].to_list()))
            start = 0
            while start < len(rows):
                end = start
                while end < len(rows) and sid_col[end] == sid_col[start]:
                    end += 1
                self._brackets(sid_col[start], rows[start:end], last[sid_col[start]], close_open, out, repairs)
                start = end
        st_out = pl.DataFrame(out, schema={"subject_id": pl.Int64, "time": pl.Datetime("us"), "rank": pl.Int32,
                                           "row": pl.Int64, "tok": pl.Int32}, orient="row")
        others = tl.filter(~structural).select("subject_id", "time", pl.lit(0, pl.Int32).alias("rank"),
                                               pl.col("row").cast(pl.Int64), "tok",
                                               pl.col("numeric_value").alias("value"))
        st_out = st_out.with_columns(pl.lit(None, pl.Float64).alias("value"))
        timeline = pl.concat([others, st_out]).sort(["subject_id", "time", "rank", "row"]) \
            .select("subject_id", "time", "tok", "value")
        subjects = subjects.with_columns(pl.col("birth").cast(pl.Datetime("us")))
        return subjects, timeline, repairs

    def _brackets(self, sid, evs, last_time, close_open, out, rep) -> None:
        """Canonical order and repairs for one subject's structural events [(time, cat, row, tok)]."""
        v = self.vocab
        nest = v.icu_in_hospital
        icu_default = v.default_closer.get("icu")
        hosp_default = v.default_closer.get("hospital")
        hosp = icu = dead = False
        consumed = [False] * len(evs)
        n = len(evs)

        def close_icu(t, rank, search_from):
            for j in range(search_from, n):
                if consumed[j]:
                    continue
                if evs[j][1] == Cat.ICU_OPEN:
                    break
                if evs[j][1] == Cat.ICU_CLOSE:
                    consumed[j] = True
                    rep["icu_discharge_moved_earlier"] += 1
                    out.append((sid, t, rank, evs[j][2], evs[j][3]))
                    return
            rep["icu_discharge_added"] += 1
            out.append((sid, t, rank, -1, icu_default))

        def admission_inside_icu_stay(search_from):
            """Index of the next hospital admission if it comes before this ICU stay's discharge (and before
            any other stay event); else None."""
            for j in range(search_from, n):
                if consumed[j]:
                    continue
                c = evs[j][1]
                if c == Cat.HOSP_OPEN:
                    return j
                if c in (Cat.ICU_CLOSE, Cat.ICU_OPEN, Cat.HOSP_CLOSE, Cat.HOSP_DIED, Cat.DEATH):
                    return None
            return None

        i = 0
        while i < n:
            t = evs[i][0]
            g = i
            while g < n and evs[g][0] == t:
                g += 1
            group = [j for j in range(i, g) if not consumed[j]]
            for j in group:
                consumed[j] = True
            if dead:
                rep["after_death_dropped"] += len(group)
                i = g
                continue
            by: dict[int, list[int]] = {}
            for j in group:
                by.setdefault(int(evs[j][1]), []).append(j)
            ic, hc, hd = by.get(Cat.ICU_CLOSE, []), by.get(Cat.HOSP_CLOSE, []), by.get(Cat.HOSP_DIED, [])
            ho, io, de = by.get(Cat.HOSP_OPEN, []), by.get(Cat.ICU_OPEN, []), by.get(Cat.DEATH, [])
            rank = -100

            def emit(j, rank):
                out.append((sid, t, rank, evs[j][2], evs[j][3]))

            # phase A: close what was opened before this time, then open
            if icu and ic:
                emit(ic.pop(0), rank); rank += 1; icu = False
            if hosp and hc:
                if icu and nest:
                    close_icu(t, rank, g); rank += 1; icu = False
                emit(hc.pop(0), rank); rank += 1; hosp = False
            if ho:
                if not hosp:
                    emit(ho.pop(0), rank); rank += 1; hosp = True
                rep["admission_while_admitted_dropped"] += len(ho)
            if io and not icu and not hosp and nest:
                # an ICU stay that opens shortly before its hospital admission (MIMIC-IV: surgical same-day
                # admissions go to the ICU from the OR before the admission is recorded): open the hospital
                # stay with the ICU stay rather than lose the ICU stay
                k = admission_inside_icu_stay(g)
                if k is not None:
                    consumed[k] = True
                    emit(k, rank); rank += 1; hosp = True
                    rep["hospital_admission_moved_earlier"] += 1
            if io:
                if not icu and (hosp or not nest):
                    emit(io.pop(0), rank); rank += 1; icu = True
                    rep["icu_admission_while_in_icu_dropped"] += len(io)
                else:
                    rep["icu_admission_outside_stay_dropped"] += len(io)
            # phase B (after this time's other events): stays opened at this time, in-hospital death
            rank = 100
            if icu and ic:
                emit(ic.pop(0), rank); rank += 1; icu = False
            closers = hd + hc
            if hosp and closers:
                j = closers.pop(0)
                if icu and (nest or evs[j][1] == Cat.HOSP_DIED):
                    close_icu(t, rank, g); rank += 1; icu = False
                emit(j, rank); rank += 1; hosp = False
                dead = evs[j][1] == Cat.HOSP_DIED
            rep["discharge_without_stay_dropped"] += len(closers) + len(ic)
            if de:
                if icu:
                    close_icu(t, rank, g); rank += 1; icu = False
                if hosp:
                    rep["hospital_discharge_added"] += 1
                    out.append((sid, t, rank, -1, hosp_default)); rank += 1; hosp = False
                emit(de.pop(0), rank); rank += 1
                dead = True
                rep["extra_death_dropped"] += len(de)
            i = g
        if close_open and not dead:
            if icu:
                rep["icu_discharge_added"] += 1
                out.append((sid, last_time, 1000, -1, icu_default))
            if hosp:
                rep["hospital_discharge_added"] += 1
                out.append((sid, last_time, 1001, -1, hosp_default))

    # ------------------------------------------------------------------ encode
    def encode(self, events, close_open: bool = True) -> tuple[Encoded, Counter]:
        subjects, tl, repairs = self.canonicalize(events, close_open=close_open)
        return self.encode_canonical(subjects, tl), repairs

    def encode_canonical(self, subjects: pl.DataFrame, tl: pl.DataFrame, eos: bool = True) -> Encoded:
        v = self.vocab
        subjects = subjects.sort("subject_id") if not subjects["subject_id"].is_sorted() else subjects
        sids = subjects["subject_id"].to_numpy().astype(np.int64)
        n = len(sids)
        first = tl.group_by("subject_id").agg(pl.col("time").first().alias("t0"))
        info = subjects.join(first, on="subject_id", how="left")
        birth_us = info["birth"].cast(pl.Int64).to_numpy(allow_copy=True).astype(np.float64)
        t0_us = info["t0"].cast(pl.Int64).to_numpy(allow_copy=True).astype(np.float64)
        # nulls arrive as NaN after the float cast
        has_birth = np.isfinite(birth_us) & np.isfinite(t0_us)
        age = np.where(has_birth, (t0_us - birth_us) / _US / YEAR_SECONDS, np.nan)
        prefix = np.zeros((n, PREFIX_LEN), np.int32)
        prefix[:, 0] = v.bos
        sex_list = info["sex"].to_list()
        race_list = info["race"].to_list()
        enc_years = np.zeros(n)
        for i in range(n):
            prefix[i, 1] = v.sex_id(sex_list[i] or "UNK")
            a = age[i]
            prefix[i, 2], prefix[i, 3] = v.age_id(None if not np.isfinite(a) else max(a, 0.0))
            if np.isfinite(a):
                b = AGE_BUCKETS.index(v.tokens[prefix[i, 2]].split("//")[1])
                enc_years[i] = b * AGE_BUCKET_YEARS + int(v.tokens[prefix[i, 3]].split("//")[1])
            prefix[i, 4] = v.race_id(race_list[i])
        anchor_us = np.where(has_birth, birth_us, np.where(np.isfinite(t0_us), t0_us, 0.0))
        clock0_us = anchor_us + np.where(has_birth, enc_years * YEAR_SECONDS * _US, 0.0)

        # events of every subject, in canonical order
        idx = {s: i for i, s in enumerate(sids.tolist())}
        ev_subj = np.array([idx[s] for s in tl["subject_id"].to_list()], np.int64) if tl.height else np.zeros(0, np.int64)
        ev_time = tl["time"].cast(pl.Int64).to_numpy().astype(np.float64) if tl.height else np.zeros(0)
        ev_tok = tl["tok"].to_numpy().astype(np.int64) if tl.height else np.zeros(0, np.int64)
        ev_val = tl["value"].to_numpy().astype(np.float64) if tl.height else np.zeros(0)
        E = ev_tok.size
        # time groups
        new_group = np.ones(E, bool)
        if E > 1:
            new_group[1:] = (ev_subj[1:] != ev_subj[:-1]) | (ev_time[1:] != ev_time[:-1])
        gi = np.flatnonzero(new_group)
        g_subj = ev_subj[gi]
        g_sec = (ev_time[gi] - clock0_us[g_subj]) / _US
        g_first = np.ones(gi.size, bool)
        if gi.size > 1:
            g_first[1:] = g_subj[1:] != g_subj[:-1]
        n_years, gap_k = _quantize_gaps(g_sec, g_first)
        n_gaps = (gap_k >= 0).sum(1)
        n_time_g = n_years + n_gaps
        # per event token counts
        n_time_ev = np.zeros(E, np.int64)
        n_time_ev[gi] = n_time_g
        nb = v.nbins[ev_tok].astype(np.int64) if E else np.zeros(0, np.int64)
        has_val = (nb > 0) & np.isfinite(ev_val)
        bins = np.zeros(E, np.int64)
        if has_val.any():
            w = np.flatnonzero(has_val)
            bins[w] = np.minimum((ev_val[w, None] > self._edges[ev_tok[w]]).sum(1), nb[w] - 1)
        ev_len = n_time_ev + 1 + has_val
        body_len = np.bincount(ev_subj, weights=ev_len, minlength=n).astype(np.int64)
        seq_len = PREFIX_LEN + body_len + (1 if eos else 0)
        offsets = np.zeros(n + 1, np.int64)
        np.cumsum(seq_len, out=offsets[1:])
        tokens = np.zeros(offsets[-1], np.int32)
        # prefix and EOS
        tokens[(offsets[:-1, None] + np.arange(PREFIX_LEN)).ravel()] = prefix.ravel()
        if eos:
            tokens[offsets[1:] - 1] = v.eos
        # event starts
        cum = np.cumsum(ev_len) - ev_len
        subj_first_cum = np.zeros(n, np.int64)
        if E:
            firsts = np.flatnonzero(np.r_[True, ev_subj[1:] != ev_subj[:-1]])
            subj_first_cum[ev_subj[firsts]] = cum[firsts]
        ev_start = offsets[:-1][ev_subj] + PREFIX_LEN + cum - subj_first_cum[ev_subj]
        # time tokens
        g_start = ev_start[gi]
        yrep = np.repeat(g_start, n_years) + _ranges(n_years)
        tokens[yrep] = self._year_id
        for j in range(MAX_GAP_TOKENS):
            hg = gap_k[:, j] >= 0
            tokens[g_start[hg] + n_years[hg] + j] = self._gap_ids[gap_k[hg, j]]
        code_pos = ev_start + n_time_ev
        tokens[code_pos] = ev_tok
        tokens[code_pos[has_val] + 1] = self._value_ids[bins[has_val]]
        return Encoded(subject_ids=sids, offsets=offsets, tokens=tokens, anchor_us=anchor_us.astype(np.int64))

    # ------------------------------------------------------------------ decode
    def decode(self, enc: Encoded, *, with_race: bool = True) -> pl.DataFrame:
        """Tokens → MEDS events (subject_id, time, code, numeric_value, text_value[, race]), sorted.

        Each sequence is read up to its first [EOS]; a sequence with an unknown age has no MEDS_BIRTH row
        and its clock starts at its anchor.  Values are the median of the training values in the bin.
        """
        v = self.vocab
        n = len(enc)
        if n == 0:
            return _empty_meds(with_race)
        lens = enc.lengths()
        starts = enc.offsets[:-1]
        toks = enc.tokens.astype(np.int64)
        cats = v.cat[toks]
        seq_of = np.repeat(np.arange(n), lens)
        pos = np.arange(toks.size) - np.repeat(starts, lens)
        # cut everything from the first EOS (or beyond) of each sequence
        eos_pos = np.full(n, np.iinfo(np.int64).max)
        e = np.flatnonzero(cats == Cat.EOS)
        if e.size:
            np.minimum.at(eos_pos, seq_of[e], pos[e])
        live = pos < eos_pos[seq_of]
        # prefix
        pref = np.full((n, PREFIX_LEN), -1, np.int64)
        short = lens < PREFIX_LEN
        pidx = starts[:, None] + np.arange(PREFIX_LEN)
        pidx = np.minimum(pidx, max(toks.size - 1, 0))
        pref[:] = toks[pidx]
        pref[short] = -1
        sex = np.array(["UNK"] * n, dtype=object)
        years = np.full(n, np.nan)
        race = np.array([None] * n, dtype=object)
        for i in range(n):
            s, a, ay, r = pref[i, 1:]
            if s >= 0 and v.cat[s] == Cat.SEX:
                sex[i] = v.tokens[s].split("//")[1]
            if a >= 0 and v.cat[a] == Cat.AGE and not v.tokens[a].endswith("UNK") and ay >= 0 and v.cat[ay] == Cat.AGEYR:
                years[i] = AGE_BUCKETS.index(v.tokens[a].split("//")[1]) * AGE_BUCKET_YEARS + int(v.tokens[ay].split("//")[1])
            if r >= 0 and v.cat[r] == Cat.RACE and not v.tokens[r].endswith("//UNK"):
                race[i] = v.tokens[r].split("//", 1)[1]
        has_age = np.isfinite(years)
        clock0 = enc.anchor_us.astype(np.float64) + np.where(has_age, np.nan_to_num(years) * YEAR_SECONDS * _US, 0.0)
        # timeline
        body = live & (pos >= PREFIX_LEN)
        inc = np.zeros(toks.size)
        inc[cats == Cat.YEAR] = YEAR_SECONDS
        gmask = cats == Cat.GAP
        inc[gmask] = GAP_SECONDS[toks[gmask] - self._gap_ids[0]]
        inc[~body] = 0.0
        csum = np.cumsum(inc)
        base = np.r_[0.0, csum][starts]  # cumulative sum before each sequence
        elapsed = csum - base[seq_of]
        is_code = body & np.isin(cats, [int(c) for c in CODE_LIKE])
        ci = np.flatnonzero(is_code)
        nxt = np.minimum(ci + 1, toks.size - 1)
        has_v = (cats[nxt] == Cat.VALUE) & body[nxt] & (seq_of[nxt] == seq_of[ci])
        kbin = np.where(has_v, toks[nxt] - self._value_ids[0], 0)
        ok_v = has_v & (kbin < v.nbins[toks[ci]])
        value = np.full(ci.size, np.nan)
        value[ok_v] = v.reps[toks[ci[ok_v]], kbin[ok_v]]
        t_us = np.round(clock0[seq_of[ci]] + elapsed[ci] * _US).astype(np.int64)
        tok_names = np.array(v.tokens, dtype=object)
        ev = pl.DataFrame({"subject_id": enc.subject_ids[seq_of[ci]].astype(np.int64),
                           "time": pl.Series(t_us, dtype=pl.Int64).cast(pl.Datetime("us")),
                           "code": pl.Series(tok_names[toks[ci]].tolist(), dtype=pl.Utf8),
                           "numeric_value": pl.Series(value, dtype=pl.Float32).fill_nan(None),
                           "_order": np.arange(ci.size, dtype=np.int64) + 2 * n})
        sid = enc.subject_ids.astype(np.int64)
        sex_rows = pl.DataFrame({"subject_id": sid, "time": pl.Series([None] * n, dtype=pl.Datetime("us")),
                                 "code": pl.Series([f"{SEX_PREFIX}//{s}" for s in sex], dtype=pl.Utf8),
                                 "numeric_value": pl.Series([None] * n, dtype=pl.Float32),
                                 "_order": np.arange(n, dtype=np.int64)}).filter(pl.col("code") != f"{SEX_PREFIX}//UNK")
        birth_rows = pl.DataFrame({"subject_id": sid[has_age],
                                   "time": pl.Series(enc.anchor_us[has_age].astype(np.int64), dtype=pl.Int64).cast(pl.Datetime("us")),
                                   "code": pl.Series([BIRTH_CODE] * int(has_age.sum()), dtype=pl.Utf8),
                                   "numeric_value": pl.Series([None] * int(has_age.sum()), dtype=pl.Float32),
                                   "_order": np.arange(n, dtype=np.int64)[has_age] + n})
        out = pl.concat([sex_rows, birth_rows, ev]).sort(["subject_id", "_order"]).drop("_order")
        out = out.with_columns(pl.lit(None, pl.Utf8).alias("text_value"))
        if with_race:
            races = pl.DataFrame({"subject_id": sid, "_race": pl.Series(race.tolist(), dtype=pl.Utf8)})
            out = out.join(races, on="subject_id", how="left", maintain_order="left").with_columns(
                pl.when(pl.col("time").is_null() | pl.col("code").str.starts_with("HOSPITAL_ADMISSION"))
                .then(pl.col("_race")).otherwise(None).alias("race")).drop("_race")
        return out

    # ------------------------------------------------------------------ helpers
    def map_codes(self, events) -> pl.DataFrame:
        """Real events in canonical form with codes as the vocabulary sees them (rare → OTHER) — the
        fair real counterpart of generated events for per-code statistics."""
        subjects, tl, _ = self.canonicalize(events)
        names = pl.Series(self.vocab.tokens, dtype=pl.Utf8)
        tl = tl.with_columns(pl.col("tok").replace_strict(list(range(len(names))), names.to_list(),
                                                           return_dtype=pl.Utf8).alias("code"))
        static = subjects.filter(pl.col("sex").is_not_null()).select(
            "subject_id", pl.lit(None, pl.Datetime("us")).alias("time"),
            (pl.lit(f"{SEX_PREFIX}//") + pl.col("sex")).alias("code"), pl.lit(None, pl.Float64).alias("value"))
        births = subjects.filter(pl.col("birth").is_not_null()).select(
            "subject_id", pl.col("birth").alias("time"), pl.lit(BIRTH_CODE).alias("code"),
            pl.lit(None, pl.Float64).alias("value"))
        out = pl.concat([static, births, tl.select("subject_id", "time", "code", "value")])
        return out.rename({"value": "numeric_value"}).sort(["subject_id", "time"], nulls_last=False,
                                                           maintain_order=True)


def _ranges(counts: np.ndarray) -> np.ndarray:
    """[0..c0-1, 0..c1-1, ...] for counts c."""
    counts = np.asarray(counts, np.int64)
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    starts = np.cumsum(counts) - counts
    return np.arange(total) - np.repeat(starts, counts)


def _quantize_gaps(g_sec: np.ndarray, g_first: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Running-clock quantization: per time group, the number of TIME//1y tokens and up to
    MAX_GAP_TOKENS sub-year gap token indices (greedy, largest representative not above what is left;
    -1 = none).  The clock never runs ahead of the true time; it restarts at 0 at each subject's first
    group, and what a group leaves over (below the smallest representative) is carried to the next."""
    G = g_sec.size
    n_years = np.zeros(G, np.int64)
    gaps = np.full((G, MAX_GAP_TOKENS), -1, np.int64)
    clock = 0.0
    secs = g_sec.tolist()
    firsts = g_first.tolist()
    reps = _GAP_REPS
    for g in range(G):
        if firsts[g]:
            clock = 0.0
        d = secs[g] - clock
        if d < MIN_GAP_SECONDS:
            continue
        ny = int(d // YEAR_SECONDS)
        d -= ny * YEAR_SECONDS
        clock += ny * YEAR_SECONDS
        n_years[g] = ny
        for j in range(MAX_GAP_TOKENS):
            if d < MIN_GAP_SECONDS:
                break
            k = bisect.bisect_right(reps, d) - 1
            if k < 0:
                break
            gaps[g, j] = k
            clock += reps[k]
            d -= reps[k]
    return n_years, gaps


def _empty_meds(with_race: bool) -> pl.DataFrame:
    schema = {"subject_id": pl.Int64, "time": pl.Datetime("us"), "code": pl.Utf8, "numeric_value": pl.Float32,
              "text_value": pl.Utf8}
    if with_race:
        schema["race"] = pl.Utf8
    return pl.DataFrame(schema=schema)
