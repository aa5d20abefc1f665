"""The record grammar: a state machine whose masks make every sampled record structurally valid.

State after each token (batched torch tensors):
  stage   0 expect [BOS], 1 SEX, 2 AGE, 3 AGEYR, 4 RACE, 5 timeline, 6 finished (only [PAD])
  sex     0 F, 1 M, 2 unknown
  hosp    a hospital stay is open;  icu  an ICU stay is open
  dead    HOSPITAL_DISCHARGE//DIED or MEDS_DEATH seen;  death  MEDS_DEATH seen
  last    0 plain, 1 after TIME//1y, 2 + (c - 1) * G + k after the c-th sub-year TIME token of a step,
          which was TIME token k of G; LAST_CODE + k - 1 after a code with k value bins
  length  tokens consumed
  owed    bit 1: an ICU stay, bit 2: a hospital stay the record must still open (required_stays)

Rules in the timeline: a time step is zero or more TIME//1y then at most MAX_GAP_TOKENS sub-year TIME
tokens in non-increasing order, and a time token must be followed by an event (so time never goes backwards and never dangles); VAL//j only right
after a code with more than j value bins; a hospital admission only when none is open, a discharge
only when one is (and, when the training data nest ICU stays in hospital stays, only with the ICU stay
closed); ICU admission only when none is open (and inside a hospital stay when nested); MEDS_DEATH
only with every stay closed; after death only MEDS_DEATH (once) and [EOS]; [EOS] only with every stay
closed; codes specific to one sex only for that sex (unknown sex: neither).  Within `force_margin`
tokens of `max_len` only the tokens that close the record are allowed, so a length cap never leaves a
stay open.

Stay limits (`stay_limits_hours`, optional): no time token may take an open ICU / hospital stay past
that many hours (`stay_cut`); the generator sets them to the longest stay of each kind in its training
data.  Why: nothing else bounds how long a stay lasts, and a model that drifts past the stay lengths it
was trained on reads clock values it never saw; on the MIMIC-IV demo with the seen-code bias, a quarter
of the synthetic first ICU stays ran past 4,785 h because month- and year-sized gaps were sampled inside
them (issue 6).  This needs the running stay clocks (clock.py), so it is a mask of its own beside the
finite-state `allowed`.

Required stays (`required_stays`, optional): a record may not end ([EOS]) or die (MEDS_DEATH, death at
discharge) before it has opened an ICU / hospital stay.  With `require_stays` (off by default) the
generator requires a kind of stay when every training record holds one (an ICU cohort: every MIMIC-IV
demo and PhysioNet 2012 patient has an ICU stay).  Why: ending is learned from one example per training
record, so on a small cohort the model ends some records early; on the MIMIC-IV demo 18 of 80 synthetic
patients never reached the ICU.  Why off by default: the records it keeps from ending run on, so on that
demo the median record grew from 9,004 to 18,670 events (real 4,572) and event-probability R2 fell
(issue 6); on PhysioNet 2012 it changed nothing measurable.  Near the length cap (closing-only mode) the
cap wins and the requirement is waived.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from synthehr.models.trajectory.vocab import MAX_GAP_TOKENS, Cat, Vocabulary

_N_STAGES = 7


@dataclass
class GrammarState:
    stage: torch.Tensor
    sex: torch.Tensor
    hosp: torch.Tensor
    icu: torch.Tensor
    dead: torch.Tensor
    death: torch.Tensor
    last: torch.Tensor
    length: torch.Tensor
    forced: torch.Tensor   # ever entered the closing-only mode
    owed: torch.Tensor     # stays still required: bit 1 ICU, bit 2 hospital

    def index(self, rows) -> "GrammarState":
        return GrammarState(*(getattr(self, f)[rows] for f in self.__dataclass_fields__))

    def set_rows(self, rows, other: "GrammarState") -> None:
        for f in self.__dataclass_fields__:
            getattr(self, f)[rows] = getattr(other, f)


class Grammar:
    def __init__(self, vocab: Vocabulary, max_len: int, force_margin: int = 4,
                 stay_limits_hours: tuple[float | None, float | None] | None = None,
                 required_stays: tuple[bool, bool] = (False, False)):
        if max_len < 16:
            raise ValueError(f"max_len must be at least 16, got {max_len}")
        lim = [float("inf") if x is None else float(x) for x in (stay_limits_hours or (None, None))]
        if len(lim) != 2 or any(not x > 0 for x in lim):
            raise ValueError(f"stay_limits_hours must be two positive hours (ICU, hospital) or None, got {stay_limits_hours}")
        self.stay_limits_hours = tuple(lim)
        self.has_stay_limits = any(np.isfinite(lim))
        if len(required_stays) != 2:
            raise ValueError(f"required_stays must be two flags (ICU, hospital), got {required_stays}")
        self.required_stays = tuple(bool(x) for x in required_stays)
        self._owed0 = int(self.required_stays[0]) | 2 * int(self.required_stays[1])
        self.vocab = vocab
        self.max_len = int(max_len)
        self.force_margin = int(force_margin)
        self.nest = bool(vocab.icu_in_hospital)
        V = len(vocab)
        self.V = V
        cat = vocab.cat.astype(np.int64)
        self._cat_np = cat
        self._is = {c: cat == int(c) for c in Cat}
        self._codes = self._is[Cat.CODE] | self._is[Cat.OTHER]
        self._rule = vocab.sex_rule.astype(np.int64)
        val_ids = vocab.value_ids
        self._value_k = np.full(V, -1, np.int64)
        self._value_k[val_ids] = np.arange(val_ids.size)
        sex_code = np.full(V, 2, np.int64)
        for i, t in enumerate(vocab.tokens):
            if cat[i] == Cat.SEX:
                sex_code[i] = {"SEX//F": 0, "SEX//M": 1}.get(t, 2)
        self._nb_max = int(vocab.n_value_bins)
        gap_ids = vocab.gap_ids
        self._G = G = int(gap_ids.size)
        self._gap_k = np.full(V, -1, np.int64)
        self._gap_k[gap_ids] = np.arange(G)
        self.LAST_CODE = 2 + MAX_GAP_TOKENS * G
        self._n_last = self.LAST_CODE + max(self._nb_max, 1)
        # torch lookups
        self.t_cat = torch.as_tensor(cat)
        self.t_nb = torch.as_tensor(vocab.nbins.astype(np.int64))
        self.t_sex = torch.as_tensor(sex_code)
        self.t_gapk = torch.as_tensor(self._gap_k)
        self._key_to_row: dict[int, int] = {}
        self.time_ids = torch.as_tensor(np.flatnonzero(self._is[Cat.GAP] | self._is[Cat.YEAR]))
        self._time_hours = torch.as_tensor(vocab.time_increments_hours(), dtype=torch.float64)[self.time_ids]
        self._table = torch.zeros((0, V), dtype=torch.bool)
        self._rowmap = torch.full((0,), -1, dtype=torch.long)  # key -> table row (dense over seen keys)

    # ---------------------------------------------------------------- state
    def initial(self, batch: int) -> GrammarState:
        z = lambda: torch.zeros(batch, dtype=torch.long)  # noqa: E731
        s = GrammarState(stage=z(), sex=torch.full((batch,), 2, dtype=torch.long), hosp=z(), icu=z(), dead=z(),
                         death=z(), last=z(), length=z(), forced=torch.zeros(batch, dtype=torch.bool),
                         owed=torch.full((batch,), self._owed0, dtype=torch.long))
        return s

    def advance(self, s: GrammarState, tokens: torch.Tensor) -> GrammarState:
        """State after consuming `tokens` (B,). Does not check them: see `allowed`."""
        c = self.t_cat[tokens]
        nb = self.t_nb[tokens]
        C = lambda x: int(x)  # noqa: E731
        stage = torch.where(s.stage < 5, s.stage + 1, s.stage)
        stage = torch.where(c == C(Cat.EOS), torch.full_like(stage, 6), stage)
        stage = torch.where(c == C(Cat.PAD), s.stage, stage)
        sex = torch.where(c == C(Cat.SEX), self.t_sex[tokens], s.sex)
        hosp = torch.where(c == C(Cat.HOSP_OPEN), torch.ones_like(s.hosp),
                           torch.where((c == C(Cat.HOSP_CLOSE)) | (c == C(Cat.HOSP_DIED)), torch.zeros_like(s.hosp), s.hosp))
        icu = torch.where(c == C(Cat.ICU_OPEN), torch.ones_like(s.icu),
                          torch.where(c == C(Cat.ICU_CLOSE), torch.zeros_like(s.icu), s.icu))
        dead = torch.where((c == C(Cat.HOSP_DIED)) | (c == C(Cat.DEATH)), torch.ones_like(s.dead), s.dead)
        death = torch.where(c == C(Cat.DEATH), torch.ones_like(s.death), s.death)
        is_code = c >= C(Cat.CODE)
        in_gap = (s.last >= 2) & (s.last < self.LAST_CODE)
        count = torch.where(in_gap, (s.last - 2) // self._G + 1, torch.zeros_like(s.last))
        after_gap = 2 + count * self._G + self.t_gapk[tokens]
        last = torch.where(c == C(Cat.YEAR), torch.ones_like(s.last),
                           torch.where(c == C(Cat.GAP), after_gap,
                                       torch.where(is_code & (nb > 0), self.LAST_CODE + nb - 1, torch.zeros_like(s.last))))
        length = s.length + (c != C(Cat.PAD)).long()
        owed = s.owed & ~((c == C(Cat.ICU_OPEN)).long() | 2 * (c == C(Cat.HOSP_OPEN)).long())
        new = GrammarState(stage=stage, sex=sex, hosp=hosp, icu=icu, dead=dead, death=death, last=last, length=length,
                           forced=s.forced, owed=owed)
        new.forced = s.forced | self._force(new)
        return new

    def _force(self, s: GrammarState) -> torch.Tensor:
        return (s.stage == 5) & (self.max_len - s.length <= self.force_margin)

    def keys(self, s: GrammarState) -> torch.Tensor:
        force = self._force(s).long()
        k = s.stage
        for x, n in ((s.sex, 3), (s.hosp, 2), (s.icu, 2), (s.dead, 2), (s.death, 2), (s.last, self._n_last), (force, 2),
                     ((s.owed > 0).long(), 2)):
            k = k * n + x
        return k

    def _decode_key(self, key: int) -> dict:
        out = {}
        for name, n in (("owed", 2), ("force", 2), ("last", self._n_last), ("death", 2), ("dead", 2), ("icu", 2), ("hosp", 2),
                        ("sex", 3)):
            out[name] = key % n
            key //= n
        out["stage"] = key
        return out

    # ---------------------------------------------------------------- masks
    def mask_for(self, key: int) -> np.ndarray:
        """Allowed next tokens (V,) for one state key."""
        st = self._decode_key(key)
        I = self._is
        V = self.V
        m = np.zeros(V, bool)
        stage = st["stage"]
        if stage < 5:
            m |= I[(Cat.BOS, Cat.SEX, Cat.AGE, Cat.AGEYR, Cat.RACE)[stage]]
            return m
        if stage == 6:
            m |= I[Cat.PAD]
            return m
        sex_ok = (self._rule == 0) | ((self._rule == 1) & (st["sex"] == 0)) | ((self._rule == 2) & (st["sex"] == 1))
        last, hosp, icu = st["last"], st["hosp"], st["icu"]
        time_pending = 1 <= last < self.LAST_CODE
        if st["death"]:
            return m | I[Cat.EOS]
        if st["dead"]:
            return m | I[Cat.EOS] | I[Cat.DEATH]
        hosp_close = I[Cat.HOSP_CLOSE] | I[Cat.HOSP_DIED]
        if st["force"]:
            if icu:
                m |= I[Cat.ICU_CLOSE]
            elif hosp:
                m |= hosp_close
            elif time_pending:
                m |= self._codes & sex_ok
            else:
                m |= I[Cat.EOS]
            return m
        if last <= 1 or last >= self.LAST_CODE:
            m |= I[Cat.YEAR] | I[Cat.GAP]
        elif time_pending:  # after the c-th sub-year TIME token k: another one, not larger, if c < max
            c, k = (last - 2) // self._G + 1, (last - 2) % self._G
            if c < MAX_GAP_TOKENS:
                m |= (self._gap_k >= 0) & (self._gap_k <= k)
        if last >= self.LAST_CODE:
            m |= (self._value_k >= 0) & (self._value_k < last - self.LAST_CODE + 1)
        m |= self._codes & sex_ok
        if not hosp:
            m |= I[Cat.HOSP_OPEN] & sex_ok
        if hosp and not (icu and self.nest):
            m |= I[Cat.HOSP_CLOSE]
        if hosp and not icu:
            m |= I[Cat.HOSP_DIED]
        if not icu and (hosp or not self.nest):
            m |= I[Cat.ICU_OPEN]
        if icu:
            m |= I[Cat.ICU_CLOSE]
        if not hosp and not icu:
            m |= I[Cat.DEATH]
            if not time_pending:
                m |= I[Cat.EOS]
        if st["owed"]:  # a required stay is still to come: no ending, no death yet
            m &= ~(I[Cat.EOS] | I[Cat.DEATH] | I[Cat.HOSP_DIED])
        if not m.any():  # cannot happen with a vocabulary built by build_vocabulary; guard anyway
            raise RuntimeError(f"grammar state {st} allows no token")
        return m

    def allowed(self, s: GrammarState) -> torch.Tensor:
        """(B, V) bool mask of the tokens allowed next."""
        keys = self.keys(s)
        uniq, inv = torch.unique(keys, return_inverse=True)
        rows = []
        new = []
        for k in uniq.tolist():
            r = self._key_to_row.get(k)
            if r is None:
                r = self._table.shape[0] + len(new)
                new.append(torch.from_numpy(self.mask_for(k)))
                self._key_to_row[k] = r
            rows.append(r)
        if new:
            self._table = torch.cat([self._table, torch.stack(new)])
        return self._table[torch.tensor(rows, dtype=torch.long)[inv]]

    def stay_cut(self, stay: torch.Tensor) -> torch.Tensor:
        """(B, len(time_ids)) bool: the time tokens (`time_ids`) that would take an open stay past its
        limit, given the stay clocks `stay` (B, 2) = [ICU, hospital] hours since the stay opened, -1 when
        closed (clock.RunningClock.stay).  All False without limits."""
        lim = torch.tensor(self.stay_limits_hours, dtype=torch.float64)
        s = stay.to(torch.float64)
        left = torch.where(s >= 0, lim - s, torch.full_like(s, float("inf"))).min(dim=1).values
        # a small tolerance: clocks are float32 sums of many steps
        return self._time_hours[None, :] > left[:, None] + 1e-3

    # ---------------------------------------------------------------- sequential check
    def check(self, seq, complete: bool = True) -> tuple[bool, int, str]:
        """Is a token sequence accepted? (ok, position of the first offence or -1, reason).

        Plain-Python mirror of `advance` (scalar state), so long real records check quickly."""
        cat, nb, sexc = self._cat_np, self.vocab.nbins, self.t_sex.numpy()
        st = dict(stage=0, sex=2, hosp=0, icu=0, dead=0, death=0, last=0, length=0, owed=self._owed0)
        cache: dict[int, np.ndarray] = {}
        for p, t in enumerate(int(x) for x in seq):
            if not 0 <= t < self.V:
                return False, p, f"token id {t} out of range"
            force = int(st["stage"] == 5 and self.max_len - st["length"] <= self.force_margin)
            k = st["stage"]
            for x, n in ((st["sex"], 3), (st["hosp"], 2), (st["icu"], 2), (st["dead"], 2), (st["death"], 2),
                         (st["last"], self._n_last), (force, 2), (int(st["owed"] > 0), 2)):
                k = k * n + x
            m = cache.get(k)
            if m is None:
                m = cache[k] = self.mask_for(k)
            if not m[t]:
                if st["owed"] and self.mask_for(k - 1)[t]:  # allowed but for the owed stay (owed: the key's last digit)
                    kinds = " and ".join(n for bit, n in ((1, "an ICU"), (2, "a hospital")) if st["owed"] & bit)
                    return False, p, (f"{self.vocab.tokens[t]!r} before the record opened {kinds} stay "
                                      "(required: every training record holds one)")
                return False, p, f"{self.vocab.tokens[t]!r} not allowed in state {self._decode_key(k)}"
            c = int(cat[t])
            if c == Cat.PAD:
                continue
            st["stage"] = 6 if c == Cat.EOS else min(st["stage"] + 1, 5) if st["stage"] < 5 else st["stage"]
            if c == Cat.SEX:
                st["sex"] = int(sexc[t])
            if c == Cat.HOSP_OPEN:
                st["hosp"] = 1
                st["owed"] &= ~2
            elif c in (Cat.HOSP_CLOSE, Cat.HOSP_DIED):
                st["hosp"] = 0
            if c == Cat.ICU_OPEN:
                st["icu"] = 1
                st["owed"] &= ~1
            elif c == Cat.ICU_CLOSE:
                st["icu"] = 0
            if c in (Cat.HOSP_DIED, Cat.DEATH):
                st["dead"] = 1
            if c == Cat.DEATH:
                st["death"] = 1
            if c == Cat.YEAR:
                st["last"] = 1
            elif c == Cat.GAP:
                count = (st["last"] - 2) // self._G + 1 if 2 <= st["last"] < self.LAST_CODE else 0
                st["last"] = 2 + count * self._G + int(self._gap_k[t])
            else:
                st["last"] = self.LAST_CODE + int(nb[t]) - 1 if (c >= Cat.CODE and nb[t] > 0) else 0
            st["length"] += 1
        if complete and st["stage"] != 6:
            return False, len(seq), "record does not end with [EOS]"
        return True, -1, ""
