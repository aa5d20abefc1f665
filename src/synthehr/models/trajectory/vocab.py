"""Token vocabulary for whole-patient trajectories, built on the training split with a frequency cutoff.

Token layout (ids in this order):
  specials    [PAD] [BOS] [EOS]
  prefix      SEX//F|M|UNK, AGE//<5-year bucket>|UNK, AGEYR//0..4 (year inside the bucket), RACE//<value>|OTHER|UNK
  time        TIME//<gap> (log-spaced, 1 min .. 300 d; up to 6 per time step) and TIME//1y (repeatable)
  values      VAL//0 .. VAL//<n_bins - 1>: the quantile bin of the numeric value of the code just before
  codes       every code seen in >= min_subjects training subjects, plus one `<prefix>//OTHER` per code
              prefix for the rarer ones (the first `//` field: DIAGNOSIS, LAB, MEDICATION, ...)

Codes are also tied to hierarchy nodes (ICD chapter / category from the code structure, the code's
`//` prefixes, and the parent codes of the MEDS codes metadata); the model adds the node embeddings to
the code's own, so rare codes borrow strength from their parents (see `model.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Iterable

import numpy as np
import polars as pl

# ------------------------------------------------------------------ token categories


class Cat(IntEnum):
    PAD = 0
    BOS = 1
    EOS = 2
    SEX = 3
    AGE = 4
    AGEYR = 5
    RACE = 6
    YEAR = 7          # TIME//1y
    GAP = 8           # TIME//<gap below a year>
    VALUE = 9
    CODE = 10
    OTHER = 11        # out-of-vocabulary code of a known prefix
    HOSP_OPEN = 12
    HOSP_CLOSE = 13
    HOSP_DIED = 14
    ICU_OPEN = 15
    ICU_CLOSE = 16
    DEATH = 17


STRUCTURAL = (Cat.HOSP_OPEN, Cat.HOSP_CLOSE, Cat.HOSP_DIED, Cat.ICU_OPEN, Cat.ICU_CLOSE, Cat.DEATH)
CODE_LIKE = (Cat.CODE, Cat.OTHER) + STRUCTURAL

HOSP_OPEN_PREFIX = "HOSPITAL_ADMISSION"
HOSP_CLOSE_PREFIX = "HOSPITAL_DISCHARGE"
HOSP_DIED_CODE = "HOSPITAL_DISCHARGE//DIED"
ICU_OPEN_PREFIX = "ICU_ADMISSION"
ICU_CLOSE_PREFIX = "ICU_DISCHARGE"
DEATH_CODE = "MEDS_DEATH"
BIRTH_CODE = "MEDS_BIRTH"
SEX_PREFIX = "GENDER"

YEAR_SECONDS = 365.25 * 86400.0
_M, _H, _D = 60.0, 3600.0, 86400.0
# Representative gap of each TIME token; a gap is rounded to the nearest one in log space.
GAP_SECONDS = np.array([1 * _M, 2 * _M, 5 * _M, 10 * _M, 15 * _M, 20 * _M, 30 * _M, 45 * _M,
                        1 * _H, 1.5 * _H, 2 * _H, 3 * _H, 4 * _H, 6 * _H, 8 * _H, 12 * _H, 18 * _H,
                        1 * _D, 1.5 * _D, 2 * _D, 3 * _D, 4 * _D, 5 * _D, 7 * _D, 10 * _D, 14 * _D, 21 * _D,
                        30 * _D, 45 * _D, 60 * _D, 90 * _D, 120 * _D, 180 * _D, 240 * _D, 300 * _D])
MIN_GAP_SECONDS = 30.0  # gaps below this are not encoded (same-time events)
# Sub-year TIME tokens per time step (non-increasing).  Greedy tokens leave a remainder that is carried
# into the next timestamp: with 3 it averaged 14 h (up to 4 days) over the fraction of a year from birth
# to the first event, so real PhysioNet ICU stays began with a 12-18 h silence in token time and the
# model learnt measurements running to hour 66; with 6, at most 2 h after gaps over 30 days (5 min on
# average over a fractional year) and at most 3 min after gaps under a day.
MAX_GAP_TOKENS = 6

AGE_BUCKET_YEARS = 5
AGE_BUCKETS = [f"{lo}-{lo + 4}" for lo in range(0, 90, 5)] + ["90+"]
SEXES = ("F", "M", "UNK")

_PREFIX_CATS = {HOSP_OPEN_PREFIX: Cat.HOSP_OPEN, HOSP_CLOSE_PREFIX: Cat.HOSP_CLOSE, ICU_OPEN_PREFIX: Cat.ICU_OPEN,
                ICU_CLOSE_PREFIX: Cat.ICU_CLOSE}


def code_prefix(code: str) -> str:
    return code.split("//", 1)[0]


def code_category(code: str) -> Cat:
    """Structural role of a code string (brackets, death) or plain CODE."""
    if code == HOSP_DIED_CODE:
        return Cat.HOSP_DIED
    if code == DEATH_CODE:
        return Cat.DEATH
    return _PREFIX_CATS.get(code_prefix(code), Cat.CODE)


def gap_label(seconds: float) -> str:
    if seconds < _H:
        return f"{seconds / _M:g}m"
    if seconds < _D:
        return f"{seconds / _H:g}h"
    return f"{seconds / _D:g}d"


def age_bucket(years: float) -> int:
    return int(min(max(years, 0) // AGE_BUCKET_YEARS, len(AGE_BUCKETS) - 1))


# ------------------------------------------------------------------ sex-specific codes


def _icd10cm_sex(c: str) -> int:
    """1 = female only, 2 = male only, 0 = either (ICD-10-CM code without the dot)."""
    if not c:
        return 0
    if c[0] == "O" or c[:3] in {"Z33", "Z34", "Z36", "Z37", "Z39"}:
        return 1
    head = c[:3]
    if len(head) == 3 and head[1:].isdigit():
        n = int(head[1:])
        if head[0] == "N" and 70 <= n <= 98:
            return 1
        if head[0] == "N" and 40 <= n <= 53:
            return 2
        if head[0] == "C" and 51 <= n <= 58:
            return 1
        if head[0] == "C" and 60 <= n <= 63:
            return 2
        if head[0] == "D" and (n == 6 or 25 <= n <= 28 or n == 39):
            return 1
        if head[0] == "D" and n in (29, 40):
            return 2
        if head[0] == "Q" and 50 <= n <= 52:
            return 1
        if head[0] == "Q" and 53 <= n <= 55:
            return 2
        if head == "R87":
            return 1
        if head == "R86":
            return 2
    return 0


def _icd9cm_sex(c: str) -> int:
    if not c:
        return 0
    if c[0] == "V":
        return 1 if c[:3] in {"V22", "V23", "V24", "V27", "V28"} else 0
    if not c[:3].isdigit():
        return 0
    n = int(c[:3])
    if 630 <= n <= 679 or 614 <= n <= 629 or 179 <= n <= 184:
        return 1
    if 600 <= n <= 608 or 185 <= n <= 187:
        return 2
    return 0


def sex_restriction(code: str) -> int:
    """Sex-specific codes from the ICD code structure: 1 = female only, 2 = male only, 0 = either."""
    parts = code.split("//")
    if len(parts) < 4 or parts[1] != "ICD":
        return 0
    kind, version, c = parts[0], parts[2], parts[3].replace(".", "").upper()
    if kind == "DIAGNOSIS":
        return _icd10cm_sex(c) if version == "10" else _icd9cm_sex(c) if version == "9" else 0
    if kind == "PROCEDURE":
        if version == "9" and c[:2].isdigit():
            n = int(c[:2])
            return 2 if 60 <= n <= 64 else 1 if 65 <= n <= 75 else 0
        if version == "10":
            return 2 if c[:2] == "0V" else 1 if c[:2] in ("0U", "10") else 0
    return 0


# ------------------------------------------------------------------ hierarchy


def _icd10_chapter(c: str) -> str:
    if not c:
        return "?"
    ch, num = c[0], int(c[1:3]) if c[1:3].isdigit() else 0
    if ch in "AB":
        return "01"
    if ch == "C" or (ch == "D" and num < 50):
        return "02"
    if ch == "D":
        return "03"
    if ch == "H":
        return "07" if num < 60 else "08"
    table = {"E": "04", "F": "05", "G": "06", "I": "09", "J": "10", "K": "11", "L": "12", "M": "13", "N": "14",
             "O": "15", "P": "16", "Q": "17", "R": "18", "S": "19", "T": "19", "V": "20", "W": "20", "X": "20",
             "Y": "20", "Z": "21", "U": "22"}
    return table.get(ch, "?")


_ICD9_CHAPTERS = [(139, "01"), (239, "02"), (279, "03"), (289, "04"), (319, "05"), (389, "06"), (459, "07"),
                  (519, "08"), (579, "09"), (629, "10"), (679, "11"), (709, "12"), (739, "13"), (759, "14"),
                  (779, "15"), (799, "16"), (999, "17")]


def _icd9_chapter(c: str) -> str:
    if not c:
        return "?"
    if c[0] in "VE":
        return {"V": "18", "E": "19"}[c[0]]
    if c[:3].isdigit():
        n = int(c[:3])
        return next(ch for hi, ch in _ICD9_CHAPTERS if n <= hi)
    return "?"


def hierarchy_nodes(code: str, parents: Iterable[str] = ()) -> list[str]:
    """Ancestor node names of a code: its `//` prefixes, ICD chapter and categories, metadata parents."""
    parts = code.split("//")
    nodes = ["//".join(parts[:i]) for i in range(1, len(parts))]
    if len(parts) >= 4 and parts[1] == "ICD":
        base = "//".join(parts[:3])
        kind, version, c = parts[0], parts[2], parts[3].replace(".", "").upper()
        if kind == "DIAGNOSIS" and version == "10":
            nodes.append(f"{base}//chapter {_icd10_chapter(c)}")
            nodes += [f"{base}//{c[:k]}" for k in range(3, len(c))]
        elif kind == "DIAGNOSIS" and version == "9":
            nodes.append(f"{base}//chapter {_icd9_chapter(c)}")
            first = 4 if c[:1] == "E" else 3
            nodes += [f"{base}//{c[:k]}" for k in range(first, len(c))]
        elif kind == "PROCEDURE" and version == "9":
            nodes += [f"{base}//{c[:k]}" for k in range(2, len(c))]
        elif kind == "PROCEDURE" and version == "10":
            nodes += [f"{base}//{c[:k]}" for k in range(1, min(len(c), 5))]
    nodes += [f"PARENT//{p}" for p in parents if p]
    return nodes


# ------------------------------------------------------------------ the vocabulary


@dataclass
class Vocabulary:
    tokens: list[str]
    cat: np.ndarray            # (V,) int8 Cat
    nbins: np.ndarray          # (V,) int8: value bins of a code (0 = takes no value)
    edges: np.ndarray          # (V, n_bins - 1) float64 inner bin edges, +inf padded
    reps: np.ndarray           # (V, n_bins) float32 representative value of each bin
    sex_rule: np.ndarray       # (V,) int8: 0 either, 1 female only, 2 male only
    node_names: list[str]
    h_tok: np.ndarray          # (E,) int64 token of each (token, node) edge
    h_node: np.ndarray         # (E,) int64 node of each edge
    default_closer: dict[str, int]
    icu_in_hospital: bool
    n_value_bins: int
    stats: dict = field(default_factory=dict)
    code_metadata: dict[str, list] = field(default_factory=dict)  # code -> [description, parent_codes]

    def __post_init__(self):
        self.index = {t: i for i, t in enumerate(self.tokens)}

    def __len__(self) -> int:
        return len(self.tokens)

    # ids of fixed tokens
    @property
    def pad(self) -> int:
        return 0

    @property
    def bos(self) -> int:
        return 1

    @property
    def eos(self) -> int:
        return 2

    def ids_of(self, c: Cat) -> np.ndarray:
        return np.flatnonzero(self.cat == int(c))

    def first_id(self, c: Cat) -> int:
        return int(self.ids_of(c)[0])

    def sex_id(self, sex: str) -> int:
        return self.index[f"SEX//{sex if sex in SEXES else 'UNK'}"]

    def age_id(self, years: float | None) -> tuple[int, int]:
        if years is None or not np.isfinite(years):
            return self.index["AGE//UNK"], self.index["AGEYR//0"]
        b = age_bucket(years)
        off = int(min(max(years, 0) - b * AGE_BUCKET_YEARS, AGE_BUCKET_YEARS - 1))
        return self.index[f"AGE//{AGE_BUCKETS[b]}"], self.index[f"AGEYR//{max(off, 0)}"]

    def race_id(self, race: str | None) -> int:
        if race is None:
            return self.index["RACE//UNK"]
        return self.index.get(f"RACE//{race}", self.index["RACE//OTHER"])

    def code_to_id(self, code: str) -> int:
        """The code's token, its prefix's OTHER token, or the generic OTHER token."""
        i = self.index.get(code)
        if i is not None and self.cat[i] in CODE_LIKE:
            return i
        i = self.index.get(f"{code_prefix(code)}//OTHER")
        return i if i is not None else self.index["OTHER"]

    @property
    def gap_ids(self) -> np.ndarray:
        return self.ids_of(Cat.GAP)

    @property
    def year_id(self) -> int:
        return self.first_id(Cat.YEAR)

    @property
    def value_ids(self) -> np.ndarray:
        return self.ids_of(Cat.VALUE)

    def time_increments_hours(self) -> np.ndarray:
        """(V,) hours each token moves the clock: TIME//1y a year, TIME//<gap> its gap, others 0."""
        inc = np.zeros(len(self.tokens))
        inc[self.cat == Cat.YEAR] = YEAR_SECONDS / 3600.0
        inc[self.gap_ids] = GAP_SECONDS / 3600.0
        return inc

    def value_codes(self) -> set[str]:
        return {self.tokens[i] for i in np.flatnonzero(self.nbins > 0)}

    # ------------------------------------------------------------ persistence
    def get_state(self) -> tuple[dict[str, np.ndarray], dict]:
        tensors = {"vocab.cat": self.cat.astype(np.int8), "vocab.nbins": self.nbins.astype(np.int8),
                   "vocab.edges": self.edges.astype(np.float64), "vocab.reps": self.reps.astype(np.float32),
                   "vocab.sex_rule": self.sex_rule.astype(np.int8), "vocab.h_tok": self.h_tok.astype(np.int64),
                   "vocab.h_node": self.h_node.astype(np.int64)}
        state = {"tokens": self.tokens, "node_names": self.node_names, "default_closer": self.default_closer,
                 "icu_in_hospital": self.icu_in_hospital, "n_value_bins": self.n_value_bins, "stats": self.stats,
                 "code_metadata": self.code_metadata}
        return tensors, state

    @classmethod
    def from_state(cls, tensors: dict[str, np.ndarray], state: dict) -> "Vocabulary":
        v = cls(tokens=list(state["tokens"]), cat=tensors["vocab.cat"], nbins=tensors["vocab.nbins"],
                edges=tensors["vocab.edges"], reps=tensors["vocab.reps"], sex_rule=tensors["vocab.sex_rule"],
                node_names=list(state["node_names"]), h_tok=tensors["vocab.h_tok"], h_node=tensors["vocab.h_node"],
                default_closer={k: int(x) for k, x in state["default_closer"].items()},
                icu_in_hospital=bool(state["icu_in_hospital"]), n_value_bins=int(state["n_value_bins"]),
                stats=dict(state.get("stats", {})), code_metadata=dict(state.get("code_metadata", {})))
        v.validate()
        return v

    def validate(self) -> None:
        from synthehr.errors import ModelFileError

        V = len(self.tokens)
        if len(self.index) != V:
            raise ModelFileError("vocabulary has duplicate tokens")
        for name, arr, shape in (("cat", self.cat, (V,)), ("nbins", self.nbins, (V,)), ("sex_rule", self.sex_rule, (V,)),
                                 ("edges", self.edges, (V, max(self.n_value_bins - 1, 0))),
                                 ("reps", self.reps, (V, self.n_value_bins))):
            if tuple(arr.shape) != shape:
                raise ModelFileError(f"vocabulary array {name} has shape {tuple(arr.shape)}, expected {shape}")
        if self.h_tok.shape != self.h_node.shape or (self.h_tok.size and (
                self.h_tok.max() >= V or self.h_node.max() >= len(self.node_names) or min(self.h_tok.min(), self.h_node.min()) < 0)):
            raise ModelFileError("vocabulary hierarchy edges are out of range")
        if (self.cat.min() < 0) or (self.cat.max() > max(Cat)) or self.nbins.max() > self.n_value_bins:
            raise ModelFileError("vocabulary categories or value bins are out of range")
        for k in ("hospital", "icu"):
            if k in self.default_closer and not 0 <= self.default_closer[k] < V:
                raise ModelFileError(f"vocabulary default {k} closer is out of range")


# ------------------------------------------------------------------ building


def _bin_edges(values: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Quantile edges (bin k holds edges[k-1] < v <= edges[k]) with no empty bin, and each bin's median."""
    values = np.sort(values[np.isfinite(values)])
    if values.size == 0:
        return np.empty(0), np.empty(0)
    edges = np.unique(np.quantile(values, np.linspace(0, 1, n_bins + 1)[1:-1]))
    while True:
        bins = np.searchsorted(edges, values, side="left")
        counts = np.bincount(bins, minlength=edges.size + 1)
        empty = np.flatnonzero(counts == 0)
        if empty.size == 0:
            break
        k = int(empty[0])
        edges = np.delete(edges, min(k, edges.size - 1))  # merge the empty bin into its neighbour
    reps = np.array([np.median(values[bins == k]) for k in range(edges.size + 1)])
    return edges, reps


@dataclass
class _Counts:
    """What one pass over the training shards accumulates (memory bounded by codes x reservoir)."""
    subjects: dict[str, int] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)
    values: dict[str, np.ndarray] = field(default_factory=dict)
    value_events: dict[str, int] = field(default_factory=dict)
    races: dict[str, int] = field(default_factory=dict)
    n_subjects: int = 0
    n_events: int = 0
    icu_subjects: int = 0
    icu_and_hosp_subjects: int = 0


def accumulate(counts: _Counts, shard: pl.DataFrame, reservoir: int, rng: np.random.Generator) -> None:
    counts.n_subjects += shard["subject_id"].n_unique()
    counts.n_events += shard.height
    per_code = shard.group_by("code").agg(pl.col("subject_id").n_unique().alias("s"), pl.len().alias("n"))
    for code, s, n in per_code.iter_rows():
        counts.subjects[code] = counts.subjects.get(code, 0) + s
        counts.events[code] = counts.events.get(code, 0) + n
    vals = (shard.filter(pl.col("numeric_value").is_not_null() & pl.col("numeric_value").is_finite())
            .group_by("code").agg(pl.len().alias("n"),
                                  pl.col("numeric_value").cast(pl.Float64).shuffle(seed=int(rng.integers(1 << 30)))
                                  .head(reservoir).alias("v")))
    for code, n, v in vals.iter_rows():
        v = np.asarray(v, dtype=np.float64)
        old = counts.values.get(code)
        seen = counts.value_events.get(code, 0)
        if old is not None:
            # weighted merge of two uniform samples: keep each side in proportion to what it stands for
            k_old = int(round(reservoir * seen / (seen + n)))
            v = np.r_[rng.permutation(old)[:k_old], v[: reservoir - min(k_old, old.size)]]
        counts.values[code] = v[:reservoir]
        counts.value_events[code] = seen + n
    if "race" in shard.columns:
        race = (shard.filter(pl.col("race").is_not_null()).group_by("subject_id")
                .agg(pl.col("race").mode().sort().first()))
        for r, n in race.group_by("race").len().iter_rows():
            counts.races[r] = counts.races.get(r, 0) + n
    pre = shard.select("subject_id", pl.col("code").str.split("//").list.first().alias("p")).unique()
    icu = set(pre.filter(pl.col("p") == ICU_OPEN_PREFIX)["subject_id"].to_list())
    hosp = set(pre.filter(pl.col("p") == HOSP_OPEN_PREFIX)["subject_id"].to_list())
    counts.icu_subjects += len(icu)
    counts.icu_and_hosp_subjects += len(icu & hosp)


def build_vocabulary(shards: Iterable[pl.DataFrame], *, min_subjects: int = 2, max_codes: int | None = None,
                     n_value_bins: int = 10, min_value_share: float = 0.0, reservoir: int = 2000,
                     code_metadata: pl.DataFrame | None = None, seed: int = 0) -> Vocabulary:
    """One streaming pass over the training shards → Vocabulary.

    A code is kept when it occurs in at least `min_subjects` training subjects (rarer codes become their
    prefix's OTHER token; MEDS_DEATH and HOSPITAL_DISCHARGE//DIED are always kept); `max_codes` keeps the
    most frequent.  A kept code takes values when it has finite numeric values in the training data
    (and they make up at least `min_value_share` of its events); its values are cut at quantiles of a
    reservoir sample (`reservoir` values per code) into at most `n_value_bins` bins.
    """
    rng = np.random.default_rng(seed)
    counts = _Counts()
    for shard in shards:
        accumulate(counts, shard, reservoir, rng)
    timeline_codes = {c: s for c, s in counts.subjects.items()
                      if c != BIRTH_CODE and code_prefix(c) != SEX_PREFIX}
    kept = [c for c, s in timeline_codes.items() if s >= min_subjects or c in (DEATH_CODE, HOSP_DIED_CODE)]
    kept.sort(key=lambda c: (-counts.events[c], c))
    if max_codes is not None:
        kept = kept[:max_codes]
    kept_set = set(kept)
    prefixes = sorted({code_prefix(c) for c in timeline_codes})
    other_tokens = [f"{p}//OTHER" for p in prefixes if f"{p}//OTHER" not in kept_set]
    other_tokens += [] if "OTHER" in kept_set else ["OTHER"]

    races = sorted(r for r, n in counts.races.items() if n >= min_subjects and r not in ("OTHER", "UNK"))
    tokens: list[str] = ["[PAD]", "[BOS]", "[EOS]"]
    cats: list[int] = [Cat.PAD, Cat.BOS, Cat.EOS]
    for s in SEXES:
        tokens.append(f"SEX//{s}"); cats.append(Cat.SEX)
    for b in AGE_BUCKETS + ["UNK"]:
        tokens.append(f"AGE//{b}"); cats.append(Cat.AGE)
    for k in range(AGE_BUCKET_YEARS):
        tokens.append(f"AGEYR//{k}"); cats.append(Cat.AGEYR)
    for r in races + ["OTHER", "UNK"]:
        tokens.append(f"RACE//{r}"); cats.append(Cat.RACE)
    for g in GAP_SECONDS:
        tokens.append(f"TIME//{gap_label(g)}"); cats.append(Cat.GAP)
    tokens.append("TIME//1y"); cats.append(Cat.YEAR)
    for k in range(n_value_bins):
        tokens.append(f"VAL//{k}"); cats.append(Cat.VALUE)
    n_fixed = len(tokens)
    fixed = set(tokens)
    kept = [c for c in kept if c not in fixed]  # a code spelled like a fixed token falls to OTHER
    for c in kept:
        tokens.append(c); cats.append(code_category(c))
    for c in other_tokens:
        cat = code_category(c)
        tokens.append(c); cats.append(Cat.OTHER if cat == Cat.CODE else cat)

    V = len(tokens)
    nbins = np.zeros(V, np.int8)
    edges = np.full((V, max(n_value_bins - 1, 0)), np.inf)
    reps = np.full((V, n_value_bins), np.nan, np.float32)
    for i, c in enumerate(tokens[n_fixed:n_fixed + len(kept)], start=n_fixed):
        vals = counts.values.get(c)
        if vals is None or counts.value_events.get(c, 0) < min_value_share * counts.events[c]:
            continue
        e, r = _bin_edges(vals, n_value_bins)
        if r.size == 0:
            continue
        nbins[i] = r.size
        edges[i, : e.size] = e
        reps[i, : r.size] = r
    sex_rule = np.array([sex_restriction(t) if i >= n_fixed else 0 for i, t in enumerate(tokens)], np.int8)

    # hierarchy: nodes with at least two tokens under them
    meta_parents: dict[str, list[str]] = {}
    meta_rows: dict[str, list] = {}
    if code_metadata is not None and code_metadata.height:
        cols = code_metadata.columns
        for row in code_metadata.select([c for c in ("code", "description", "parent_codes") if c in cols]).iter_rows(named=True):
            parents = [p for p in (row.get("parent_codes") or []) if p]
            meta_parents[row["code"]] = parents
            if row["code"] in kept_set:
                meta_rows[row["code"]] = [row.get("description"), parents]
    members: dict[str, list[int]] = {}
    for i, t in enumerate(tokens):
        if i < n_fixed:
            nodes = [f"CAT//{Cat(cats[i]).name}"]
        else:
            base = t[: -len("//OTHER")] if t.endswith("//OTHER") else t
            nodes = hierarchy_nodes(t, meta_parents.get(t, ())) if base == t else [base]
        for n in nodes:
            members.setdefault(n, []).append(i)
    node_names = sorted(n for n, m in members.items() if len(m) >= 2)
    node_index = {n: j for j, n in enumerate(node_names)}
    pairs = [(i, node_index[n]) for n in node_names for i in members[n]]
    pairs.sort()
    h_tok = np.array([p[0] for p in pairs], np.int64)
    h_node = np.array([p[1] for p in pairs], np.int64)

    def _most_frequent(cat: Cat) -> int | None:
        ids = [i for i in range(n_fixed, V) if cats[i] == cat]
        if not ids:
            return None
        return max(ids, key=lambda i: (counts.events.get(tokens[i], 0), -i))

    default_closer = {}
    for name, cat in (("hospital", Cat.HOSP_CLOSE), ("icu", Cat.ICU_CLOSE)):
        i = _most_frequent(cat)
        if i is not None:
            default_closer[name] = int(i)
    icu_in_hospital = counts.icu_subjects > 0 and counts.icu_and_hosp_subjects >= 0.9 * counts.icu_subjects
    kept_events = sum(counts.events[c] for c in kept)
    timeline_events = sum(counts.events[c] for c in timeline_codes)
    stats = {"n_subjects": counts.n_subjects, "n_events": counts.n_events, "n_codes_seen": len(timeline_codes),
             "n_codes_kept": len(kept), "n_other_tokens": len(other_tokens), "vocab_size": V,
             "n_hierarchy_nodes": len(node_names), "n_value_codes": int((nbins > 0).sum()),
             "event_coverage": kept_events / timeline_events if timeline_events else 1.0,
             "min_subjects": min_subjects, "n_races": len(races)}
    vocab = Vocabulary(tokens=tokens, cat=np.array(cats, np.int8), nbins=nbins, edges=edges, reps=reps,
                       sex_rule=sex_rule, node_names=node_names, h_tok=h_tok, h_node=h_node,
                       default_closer=default_closer, icu_in_hospital=bool(icu_in_hospital),
                       n_value_bins=n_value_bins, stats=stats, code_metadata=meta_rows)
    vocab.validate()
    return vocab
