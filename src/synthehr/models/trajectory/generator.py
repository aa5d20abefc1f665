"""TrajectoryGenerator: whole-patient MEDS trajectories — fit / sample / condition / save / load.

Not a tabular `Generator` (its data are event streams, not one row per record), but it keeps the same
verbs and the same file safety: a saved model is a folder with config.json (hyper-parameters,
vocabulary, training summary, synthehr version), weights.safetensors (no pickle) and manifest.json
(sha256 of both), all validated before anything is built.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import polars as pl
import torch
from safetensors.numpy import save_file

from synthehr.errors import ConditioningError, DataError, ModelFileError
from synthehr.models.base import FORMAT_VERSION, _json_default, _sha256, read_verified_folder
from synthehr.models.trajectory.clock import ClockRoles, record_clocks, records_holding_stays
from synthehr.models.trajectory.data import TokenStore, evaluate_loss, train
from synthehr.models.trajectory.grammar import Grammar
from synthehr.models.trajectory.model import TrajectoryTransformer
from synthehr.models.trajectory.sampler import SampleStats, draw_record_lengths, generate
from synthehr.models.trajectory.tokenizer import PREFIX_LEN, Encoded, Tokenizer, normalize_events
from synthehr.models.trajectory.vocab import AGE_BUCKETS, Vocabulary, build_vocabulary

MODEL_TYPE = "trajectory"
DEFAULTS: dict[str, Any] = {
    # vocabulary
    "min_subjects": 2, "max_codes": None, "n_value_bins": 10,
    # network
    "d_model": 128, "n_layers": 4, "n_heads": 4, "context": 256, "dropout": 0.0, "hierarchy": True,
    "kv_heads": 1,        # key/value heads shared by the query heads (None: one per query head); fewer shrink the
                          # sampler's KV cache, which bounds sampling speed (1,304 vs 695 PhysioNet patients/min)
    "stay_clock": True,   # hours since the current ICU / hospital stay began as an input (clock.py)
    "seen_memory": True,  # the codes the record has held so far as an input (memory.py)
    "seen_bias": True,    # a learned logit offset per code once the record has held it (model.py)
    "novel_bias": True,   # a learned logit offset per (stay-clock bucket, token) until the record holds it (model.py)
    "length_budget": False,  # each record's length drawn from the training lengths first, counted down as an input
                             # (model.py; off: it helped the MIMIC-IV demo, hurt PhysioNet)
    "seen_embedding": "tied",  # the memory's code vectors: "tied" (the token embeddings) or "own" (a table of its own)
    # training
    "epochs": 2.0, "batch_rows": 16, "lr": 2e-3, "max_steps": None, "max_seconds": None, "seed": 0,
    # sampling
    "max_len": None,      # token cap per generated record; default: the longest training record
    "stay_cap": 1.0,      # no sampled ICU / hospital stay longer than this x the longest in training (0: no cap)
    "require_stays": False,  # every sampled record opens an ICU / hospital stay when every training record does
    "threads": None,      # torch CPU threads (default: torch's own)
}
_INT_PARAMS = {"min_subjects", "max_codes", "n_value_bins", "d_model", "n_layers", "n_heads", "context", "batch_rows",
               "max_steps", "seed", "max_len", "threads", "kv_heads"}
LENGTH_QUANTILES = 101  # training record lengths kept for the length budget: percentiles, not the lengths
TASK_BATCHES = 64  # most batches' worth of prompts in one parallel sampling task (parallel.py)
_STAY_KINDS = ("ICU", "hospital")  # display names, in the order of every (ICU, hospital) pair
BIRTH_WINDOW = (np.datetime64("2050-01-01", "us"), np.datetime64("2150-01-01", "us"))


def meds_shards(data, split: str = "train", shard_subjects: int = 20000) -> Iterator[pl.DataFrame]:
    """MEDS root folder (its data/<split>/*.parquet, one shard at a time) or an events table."""
    if isinstance(data, (str, Path)):
        root = Path(data)
        d = root / "data" / split
        files = sorted(d.glob("*.parquet")) if d.is_dir() else []
        if not files:
            have = sorted(p.name for p in (root / "data").iterdir() if p.is_dir()) if (root / "data").is_dir() else []
            raise DataError(f"no data/{split}/*.parquet shards (splits found: {have or 'none'})", file=str(root))
        for f in files:
            cols = pl.read_parquet_schema(f)
            want = [c for c in ("subject_id", "time", "code", "numeric_value", "race") if c in cols]
            yield normalize_events(pl.read_parquet(f, columns=want))
        return
    ev = normalize_events(data)
    ids = ev["subject_id"].unique(maintain_order=True)
    for k in range(0, len(ids), shard_subjects):
        part = ids[k: k + shard_subjects]
        yield ev.filter(pl.col("subject_id").is_in(part)) if len(ids) > shard_subjects else ev


def codes_metadata_of(data) -> pl.DataFrame | None:
    if isinstance(data, (str, Path)):
        p = Path(data) / "metadata" / "codes.parquet"
        if p.is_file():
            return pl.read_parquet(p)
    return None


class TrajectoryGenerator:
    model_type = MODEL_TYPE

    def __init__(self, **hyperparameters: Any):
        unknown = sorted(set(hyperparameters) - set(DEFAULTS))
        if unknown:
            raise ConditioningError(f"unknown hyper-parameter(s) {unknown}; known: {sorted(DEFAULTS)}")
        hp = {**DEFAULTS, **hyperparameters}
        for k in _INT_PARAMS:
            if hp[k] is not None:
                hp[k] = int(hp[k])
        for k in ("hierarchy", "stay_clock", "seen_memory", "seen_bias", "novel_bias", "length_budget",
                  "require_stays"):
            hp[k] = bool(hp[k]) if not isinstance(hp[k], str) else hp[k].lower() in ("1", "true", "yes")
        if hp["seen_bias"] and not hp["seen_memory"]:
            raise ConditioningError("seen_bias needs seen_memory (it reads the memory's seen-code flags)")
        if hp["novel_bias"] and not hp["seen_bias"]:
            raise ConditioningError("novel_bias needs seen_bias (it applies where the seen bias does not)")
        if hp["seen_embedding"] not in ("tied", "own"):
            raise ConditioningError(f"seen_embedding must be 'tied' or 'own', got {hp['seen_embedding']!r}")
        try:
            hp["stay_cap"] = float(hp["stay_cap"] or 0.0)
        except (TypeError, ValueError):
            raise ConditioningError(f"stay_cap must be a number (0 for no cap), got {hp['stay_cap']!r}") from None
        if not hp["stay_cap"] >= 0 or (0 < hp["stay_cap"] < 1):
            raise ConditioningError(f"stay_cap must be 0 (no cap) or at least 1 (x the longest training stay), "
                                    f"got {hp['stay_cap']}")
        if hp["context"] <= PREFIX_LEN + 8:
            raise ConditioningError(f"context must exceed {PREFIX_LEN + 8} tokens, got {hp['context']}")
        self.hyperparameters = hp
        self.vocab_: Vocabulary | None = None
        self.model_: TrajectoryTransformer | None = None
        self.info_: dict = {}
        self.last_sample_stats_: SampleStats | None = None

    # ------------------------------------------------------------------ fitting
    def fit(self, data, split: str = "train", codes_metadata: pl.DataFrame | None = None,
            work_dir: str | Path | None = None, progress: Callable[[str], None] | None = None) -> "TrajectoryGenerator":
        """Fit on a MEDS folder (its `split`) or an events table; shards stream from disk twice (vocabulary,
        then tokens to an on-disk store) and training reads windows from that store."""
        hp = self.hyperparameters
        self._threads()
        t0 = time.perf_counter()
        meta = codes_metadata if codes_metadata is not None else codes_metadata_of(data)
        vocab = build_vocabulary(meds_shards(data, split), min_subjects=hp["min_subjects"], max_codes=hp["max_codes"],
                                 n_value_bins=hp["n_value_bins"], code_metadata=meta, seed=hp["seed"])
        t_vocab = time.perf_counter() - t0
        if vocab.stats["n_subjects"] == 0:
            raise DataError("the training data hold no subjects")
        tok = Tokenizer(vocab)
        repairs: Counter = Counter()
        with tempfile.TemporaryDirectory(prefix="synthehr-traj-", dir=work_dir) as tmp, \
                TokenStore(tmp, ClockRoles.of(vocab)) as store:
            t1 = time.perf_counter()
            for shard in meds_shards(data, split):
                enc, rep = tok.encode(shard)
                repairs.update(rep)
                store.append(enc)
            store.finish()
            t_tok = time.perf_counter() - t1
            lengths = store.lengths()
            model = self._build(vocab)
            if progress:
                progress(f"vocabulary {len(vocab):,} tokens; {len(store):,} records, {int(lengths.sum()):,} tokens")
            log = train(model, store, context=hp["context"], rows=hp["batch_rows"], epochs=hp["epochs"], lr=hp["lr"],
                        seed=hp["seed"], max_steps=hp["max_steps"], max_seconds=hp["max_seconds"], progress=progress)
            train_loss = evaluate_loss(model, store, hp["context"], max_batches=20)
        self.vocab_, self.model_ = vocab, model
        n_real = int(sum(v for k, v in repairs.items() if k != "out_of_vocabulary_events"))
        self.info_ = {
            "split": split, "n_subjects": int(len(lengths)), "n_tokens": int(lengths.sum()),
            "record_tokens": {"median": float(np.median(lengths)), "p95": float(np.percentile(lengths, 95)),
                              "max": int(lengths.max()),
                              # what the length budget draws from (sampler.draw_record_lengths)
                              "quantiles": np.quantile(lengths, np.linspace(0, 1, LENGTH_QUANTILES)).tolist()},
            "max_len": int(hp["max_len"] or lengths.max()),
            "longest_stay_hours": _longest_stays(store.longest_stay_hours),
            "records_with_stay": _records_with_stay(store.records_with_stay, len(lengths)),
            "repairs": dict(repairs), "repaired_events": n_real,
            "vocab": vocab.stats, "seconds": {"vocabulary": t_vocab, "tokenize": t_tok, "train": log.seconds},
            "train": {"steps": log.steps, "tokens": log.tokens, "tokens_per_second": log.tokens_per_second,
                      "losses": log.losses, "final_train_nll": train_loss},
        }
        return self

    def _build(self, vocab: Vocabulary) -> TrajectoryTransformer:
        hp = self.hyperparameters
        torch.manual_seed(hp["seed"])
        use_h = hp["hierarchy"] and len(vocab.node_names) > 0
        return TrajectoryTransformer(len(vocab), d_model=hp["d_model"], n_layers=hp["n_layers"], n_heads=hp["n_heads"],
                                     n_nodes=len(vocab.node_names) if use_h else 0,
                                     h_tok=vocab.h_tok if use_h else None, h_node=vocab.h_node if use_h else None,
                                     dropout=hp["dropout"], stay_clock=hp["stay_clock"],
                                     seen_memory=hp["seen_memory"], kv_heads=hp["kv_heads"],
                                     seen_embedding=hp["seen_embedding"], seen_bias=hp["seen_bias"],
                                     novel_bias=hp["novel_bias"], length_budget=hp["length_budget"])

    def _threads(self) -> None:
        if self.hyperparameters.get("threads"):
            torch.set_num_threads(int(self.hyperparameters["threads"]))

    def _check_fitted(self) -> None:
        if self.model_ is None or self.vocab_ is None:
            raise ConditioningError("TrajectoryGenerator is not fitted: call fit() or load a saved model")

    @property
    def tokenizer(self) -> Tokenizer:
        self._check_fitted()
        return Tokenizer(self.vocab_)

    def stay_limits_hours(self) -> tuple[float | None, float | None] | None:
        """(ICU, hospital) hours no sampled stay may pass: stay_cap x the longest training stay of that kind
        (a stay under an hour counts as an hour); None without a cap or for models saved before it."""
        cap = float(self.hyperparameters.get("stay_cap") or 0.0)
        longest = self.info_.get("longest_stay_hours")
        if cap <= 0 or not longest:
            return None
        lim = tuple(None if longest.get(k) is None else cap * max(float(longest[k]), 1.0) for k in ("icu", "hospital"))
        return None if lim == (None, None) else lim

    def stay_rules_text(self) -> tuple[str, str]:
        """The stay limits ("ICU 468.2 h, hospital 817.9 h") and the required stays ("ICU") as text, "" for none
        (for the CLI and the benchmark notes)."""
        lim = self.stay_limits_hours() or (None, None)
        limits = ", ".join(f"{k} {h:,.1f} h" for k, h in zip(_STAY_KINDS, lim) if h is not None)
        return limits, ", ".join(k for k, on in zip(_STAY_KINDS, self.required_stays()) if on)

    def required_stays(self) -> tuple[bool, bool]:
        """(ICU, hospital): must every sampled record open such a stay?  Yes for a kind every training
        record holds (with require_stays); (False, False) for models saved before it was counted."""
        held = self.info_.get("records_with_stay")
        if not self.hyperparameters.get("require_stays", False) or not held or not held.get("records"):
            return (False, False)
        return tuple(int(held[k]) == int(held["records"]) for k in ("icu", "hospital"))

    def measure_training_stays(self, data, split: str = "train") -> dict:
        """Longest ICU / hospital stay (hours, token time) and how many records hold one, in real records
        (a MEDS folder's `split`, or an events table), as info_["longest_stay_hours"] and
        info_["records_with_stay"], for the stay limits and required stays; fit() sets both from the
        training data, this sets them for a model saved before they existed."""
        self._check_fitted()
        tok, roles = self.tokenizer, ClockRoles.of(self.vocab_)
        longest = np.full(2, -1.0)
        held, n = np.zeros(2, np.int64), 0
        for shard in meds_shards(data, split):
            enc = tok.encode(shard)[0]
            if enc.tokens.size:
                longest = np.maximum(longest, record_clocks(enc.tokens, enc.offsets, roles)[1].max(axis=0))
                held += records_holding_stays(enc.tokens, enc.offsets, roles).sum(axis=0)
                n += len(enc)
        self.info_["longest_stay_hours"] = _longest_stays(longest)
        self.info_["records_with_stay"] = _records_with_stay(held, n)
        return {"longest_stay_hours": self.info_["longest_stay_hours"],
                "records_with_stay": self.info_["records_with_stay"]}

    def grammar(self, max_len: int | None = None) -> Grammar:
        self._check_fitted()
        return Grammar(self.vocab_, max_len or self.info_.get("max_len") or 4096,
                       stay_limits_hours=self.stay_limits_hours(), required_stays=self.required_stays())

    def nll(self, data, split: str = "train", max_tokens: int | None = 2_000_000) -> float:
        """Mean next-token negative log-likelihood (nats) of real records (a MEDS folder's `split`, or an
        events table), each timeline token scored once with the same windows as in training."""
        self._check_fitted()
        self._threads()
        tok = self.tokenizer
        with tempfile.TemporaryDirectory(prefix="synthehr-traj-nll-") as tmp, \
                TokenStore(tmp, ClockRoles.of(self.vocab_)) as store:
            for shard in meds_shards(data, split):
                store.append(tok.encode(shard)[0])
                if max_tokens and store.offsets[-1] >= max_tokens:
                    break
            store.finish()
            ctx = self.hyperparameters["context"]
            n_batches = int(np.ceil(store.offsets[-1] / (16 * ctx * 0.6))) + 1
            return evaluate_loss(self.model_, store, ctx, max_batches=n_batches)

    # ------------------------------------------------------------------ sampling
    def sample_tokens(self, prompts: list[np.ndarray], seed: int = 0, temperature: float = 1.0, top_p: float = 1.0,
                      batch_size: int = 64, max_len: int | None = None, use_mask: bool = True,
                      on_record=None, min_prob: float = 0.0, workers: int = 1,
                      record_ids: np.ndarray | None = None) -> list[np.ndarray] | None:
        """Complete token prompts (sampler.generate).  Record i draws from the random stream (seed,
        record_ids[i]) (default i), so the records are the same for any number of workers (up to the
        rounding of batched kernels).  workers > 1 samples in that many processes of one thread each
        (parallel.py) once there are more than 2 x batch_size prompts, in tasks of about n / workers
        prompts (at most TASK_BATCHES batches, which bounds what a stream to disk holds in memory)."""
        self._check_fitted()
        workers = int(workers)
        if workers < 1:
            raise ConditioningError(f"workers must be >= 1, got {workers}")
        stats = SampleStats()
        batch_size = max(1, int(batch_size))
        if workers > 1 and len(prompts) > 2 * batch_size:
            from synthehr.models.trajectory.parallel import sample_in_processes

            task_size = min(max(2 * batch_size, -(-len(prompts) // workers)), TASK_BATCHES * batch_size)
            results: list = [None] * len(prompts)
            sink = on_record if on_record is not None else results.__setitem__
            sample_in_processes(self, prompts, workers=workers, seed=seed, task_size=task_size, on_record=sink,
                                stats=stats, record_ids=record_ids, temperature=temperature, top_p=top_p,
                                batch_size=batch_size, max_len=max_len, use_mask=use_mask, min_prob=min_prob)
            self.last_sample_stats_ = stats
            return results if on_record is None else None
        self._threads()
        grammar = self.grammar(max_len)
        lengths = None
        if self.hyperparameters["length_budget"]:
            ids = np.arange(len(prompts), dtype=np.int64) if record_ids is None else np.asarray(record_ids, np.int64)
            # at least one token after the prompt, then [EOS]; at most the grammar's cap, where it closes records.
            # Drawn from all training records: a demographic prompt gets the population's lengths, not its group's
            lengths = draw_record_lengths(self.info_["record_tokens"]["quantiles"], seed, ids,
                                          np.array([len(p) + 2 for p in prompts], np.int64),
                                          at_most=grammar.max_len - grammar.force_margin)
        out = generate(self.model_, grammar, prompts, context=self.hyperparameters["context"],
                       temperature=temperature, top_p=top_p, min_prob=min_prob, batch_size=batch_size, seed=seed,
                       use_mask=use_mask, on_record=on_record, stats=stats, record_ids=record_ids, lengths=lengths)
        self.last_sample_stats_ = stats
        return out

    def _anchors(self, n: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng([seed, 7])
        day = 86_400_000_000
        lo, hi = (int(x.astype(np.int64)) // day for x in BIRTH_WINDOW)
        return rng.integers(lo, hi, size=n).astype(np.int64) * day  # midnight of a uniform day

    def sample(self, n: int, seed: int = 0, temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 64,
               max_len: int | None = None, use_mask: bool = True, subject_id_start: int = 1,
               min_prob: float = 0.0, workers: int = 1) -> pl.DataFrame:
        """n synthetic patients as MEDS events (subject_id, time, code, numeric_value, text_value, race).

        Birth dates are drawn uniformly in 2050–2150 (the model has no calendar; MIMIC dates are shifted
        anyway); every other time follows from the sampled age and time tokens."""
        n = _check_n(n)
        seqs = self.sample_tokens([np.array([self.vocab_.bos])] * n, seed, temperature, top_p, batch_size, max_len,
                                  use_mask, min_prob=min_prob, workers=workers)
        return self.decode(seqs, np.arange(subject_id_start, subject_id_start + n), self._anchors(n, seed))

    def decode(self, seqs: list[np.ndarray], subject_ids, anchors_us) -> pl.DataFrame:
        lens = np.array([len(s) for s in seqs], np.int64)
        enc = Encoded(subject_ids=np.asarray(subject_ids, np.int64), offsets=np.r_[0, np.cumsum(lens)],
                      tokens=np.concatenate(seqs).astype(np.int32) if seqs else np.zeros(0, np.int32),
                      anchor_us=np.asarray(anchors_us, np.int64))
        return self.tokenizer.decode(enc)

    def sample_to_meds(self, out_dir: str | Path, n: int, seed: int = 0, shard_size: int = 10000,
                       temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 64, max_len: int | None = None,
                       subject_id_start: int = 1, progress: Callable[[str], None] | None = None,
                       min_prob: float = 0.0, workers: int = 1) -> dict:
        """Generate n patients straight to a MEDS folder (data/train/<k>.parquet of `shard_size` patients,
        metadata/codes.parquet, dataset.json, subject_splits.parquet); memory holds one shard at most."""
        n = _check_n(n)
        out_dir = Path(out_dir)
        data_dir = out_dir / "data" / "train"
        data_dir.mkdir(parents=True, exist_ok=True)
        for old in data_dir.glob("*.parquet"):
            old.unlink()
        anchors = self._anchors(n, seed)
        pending: dict[int, np.ndarray] = {}
        written = {"shards": 0, "events": 0}
        codes_seen: set[str] = set()
        next_shard = [0]

        def flush(force: bool = False) -> None:
            while True:
                k = next_shard[0]
                lo, hi = k * shard_size, min((k + 1) * shard_size, n)
                if lo >= n or not all(i in pending for i in range(lo, hi)):
                    return
                seqs = [pending.pop(i) for i in range(lo, hi)]
                ev = self.decode(seqs, np.arange(subject_id_start + lo, subject_id_start + hi), anchors[lo:hi])
                ev.write_parquet(data_dir / f"{k}.parquet")
                codes_seen.update(ev["code"].unique().to_list())
                written["shards"] += 1
                written["events"] += ev.height
                next_shard[0] += 1
                if progress:
                    progress(f"wrote shard {k} ({hi}/{n} patients)")

        done = [0]
        step = max(1, n // 10)

        def on_record(i: int, seq: np.ndarray) -> None:
            pending[i] = seq
            done[0] += 1
            if progress and done[0] % step == 0:
                progress(f"{done[0]:,}/{n:,} patients generated")
            flush()

        self.sample_tokens([np.array([self.vocab_.bos])] * n, seed, temperature, top_p, batch_size, max_len,
                           on_record=on_record, min_prob=min_prob, workers=workers)
        flush()
        self.write_metadata(out_dir, sorted(codes_seen), n, subject_id_start)
        return {**written, "patients": n, **self.last_sample_stats_.as_dict()}

    def write_metadata(self, out_dir: Path, codes: list[str], n: int, subject_id_start: int = 1) -> None:
        from synthehr import __version__

        meta = self.vocab_.code_metadata
        (out_dir / "metadata").mkdir(parents=True, exist_ok=True)
        pl.DataFrame({"code": codes, "description": [meta.get(c, [None, []])[0] for c in codes],
                      "parent_codes": [meta.get(c, [None, []])[1] or [] for c in codes]},
                     schema={"code": pl.Utf8, "description": pl.Utf8, "parent_codes": pl.List(pl.Utf8)}) \
            .write_parquet(out_dir / "metadata" / "codes.parquet")
        pl.DataFrame({"subject_id": np.arange(subject_id_start, subject_id_start + n, dtype=np.int64),
                      "split": ["train"] * n}).write_parquet(out_dir / "metadata" / "subject_splits.parquet")
        (out_dir / "metadata" / "dataset.json").write_text(json.dumps(
            {"dataset_name": "synthehr-trajectory-synthetic", "dataset_version": __version__, "etl_name": "synthehr",
             "etl_version": __version__, "meds_version": "0.3.3",
             "created_at": np.datetime64("now", "s").astype(str)}, indent=2))

    # ------------------------------------------------------------------ conditioning
    def demographic_prompt(self, sex: str | None = None, age: float | str | None = None,
                           race: str | None = None) -> np.ndarray:
        """[BOS] + the given prefix tokens; -1 where the model samples (unknown parts of the prefix)."""
        self._check_fitted()
        v = self.vocab_
        p = np.array([v.bos, -1, -1, -1, -1], np.int64)
        if sex is not None:
            if f"SEX//{sex}" not in v.index:
                raise ConditioningError(f"sex {sex!r} unknown; use F, M or UNK")
            p[1] = v.index[f"SEX//{sex}"]
        if age is not None:
            if isinstance(age, str) and not age.replace(".", "", 1).isdigit():
                if f"AGE//{age}" not in v.index:
                    raise ConditioningError(f"age bucket {age!r} unknown; known: {AGE_BUCKETS + ['UNK']}")
                p[2] = v.index[f"AGE//{age}"]
            else:
                a = float(age)
                if not 0 <= a < 130:
                    raise ConditioningError(f"age must be in [0, 130) years, got {age!r}")
                p[2], p[3] = v.age_id(a)
        if race is not None:
            if f"RACE//{race}" not in v.index:
                known = [t.split("//", 1)[1] for t in v.tokens if t.startswith("RACE//")]
                raise ConditioningError(f"race {race!r} unknown; known: {known}")
            p[4] = v.index[f"RACE//{race}"]
        last = max(i for i in range(5) if p[i] >= 0)
        return p[: last + 1]

    def history_prompt(self, history, until=None) -> tuple[np.ndarray, int, int]:
        """One real patient's events up to `until` (inclusive) → (prompt tokens, subject_id, anchor µs)."""
        ev = normalize_events(history)
        ids = ev["subject_id"].unique()
        if len(ids) != 1:
            raise ConditioningError(f"history must hold exactly one subject, got {len(ids)}")
        if until is not None:
            until = np.datetime64(until, "us")
            ev = ev.filter(pl.col("time").is_null() | (pl.col("time") <= pl.lit(until).cast(pl.Datetime("us"))))
        tok = self.tokenizer
        subjects, tl, _ = tok.canonicalize(ev, close_open=False)
        enc = tok.encode_canonical(subjects, tl, eos=False)
        return enc.sequence(0).astype(np.int64), int(ids[0]), int(enc.anchor_us[0])

    def condition(self, prompt: Mapping[str, Any], n: int = 1, seed: int = 0, temperature: float = 1.0,
                  top_p: float = 1.0, batch_size: int = 64, max_len: int | None = None,
                  min_prob: float = 0.0, workers: int = 1) -> pl.DataFrame:
        """n records given a prompt: {"sex", "age", "race"} (any subset: demographic prompt), or
        {"history": events of one patient, "until": time} (continue that patient after `until`; the
        returned records hold the history as the tokenizer encodes it, then the generated future)."""
        self._check_fitted()
        n = _check_n(n)
        prompt = dict(prompt)
        if "history" in prompt:
            extra = set(prompt) - {"history", "until"}
            if extra:
                raise ConditioningError(f"a history prompt takes 'history' and 'until' only, got {sorted(extra)}")
            p, sid, anchor = self.history_prompt(prompt["history"], prompt.get("until"))
            ml = max_len or max(self.info_.get("max_len", 0), p.size + 1024)
            seqs = self.sample_tokens([p] * n, seed, temperature, top_p, batch_size, ml, min_prob=min_prob,
                                      workers=workers)
            return self.decode(seqs, np.arange(1, n + 1), np.full(n, anchor))
        extra = set(prompt) - {"sex", "age", "race"}
        if extra:
            raise ConditioningError(f"unknown prompt field(s) {sorted(extra)}; use sex, age, race or history, until")
        p = self.demographic_prompt(prompt.get("sex"), prompt.get("age"), prompt.get("race"))
        seqs = self.sample_tokens([p] * n, seed, temperature, top_p, batch_size, max_len, min_prob=min_prob,
                                  workers=workers)
        return self.decode(seqs, np.arange(1, n + 1), self._anchors(n, seed))

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        self._check_fitted()
        from synthehr import __version__

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {f"model.{k}": v.detach().cpu().numpy() for k, v in self.model_.state_dict().items()}
        vt, vstate = self.vocab_.get_state()
        tensors.update(vt)
        tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
        save_file(tensors, str(path / "weights.safetensors"))
        config = {"format_version": FORMAT_VERSION, "synthehr_version": __version__, "model_type": MODEL_TYPE,
                  "hyperparameters": self.hyperparameters, "state": {"vocab": vstate, "info": self.info_},
                  "tensors": {k: {"dtype": str(v.dtype), "shape": list(v.shape)} for k, v in tensors.items()}}
        (path / "config.json").write_text(json.dumps(config, indent=2, default=_json_default))
        manifest = {name: _sha256(path / name) for name in ("config.json", "weights.safetensors")}
        (path / "manifest.json").write_text(json.dumps(manifest, indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "TrajectoryGenerator":
        config, tensors = read_verified_folder(path)
        if config["model_type"] != MODEL_TYPE:
            raise ModelFileError(f"{path}: holds a {config['model_type']!r} model, not {MODEL_TYPE!r}")
        try:
            # a model saved before a feature existed (the stay clock, the seen-codes memory, the seen and novel
            # biases, shared key/value heads, the length budget) was built without it: default those features off
            gen = cls(**{"stay_clock": False, "seen_memory": False, "seen_bias": False, "novel_bias": False,
                         "kv_heads": None, "length_budget": False, **config["hyperparameters"]})
            vocab = Vocabulary.from_state({k: v for k, v in tensors.items() if k.startswith("vocab.")},
                                          config["state"]["vocab"])
        except (KeyError, TypeError, ConditioningError) as e:
            raise ModelFileError(f"{path / 'config.json'}: invalid trajectory model state ({e})") from None
        gen.vocab_ = vocab
        gen.info_ = dict(config["state"].get("info", {}))
        if gen.hyperparameters["length_budget"] and "quantiles" not in gen.info_.get("record_tokens", {}):
            raise ModelFileError(f"{path / 'config.json'}: a length-budget model without state.info.record_tokens."
                                 f"quantiles (the training lengths it samples from)")
        model = gen._build(vocab)
        sd = {k[len("model."):]: torch.from_numpy(np.array(v)) for k, v in tensors.items() if k.startswith("model.")}
        try:
            model.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            raise ModelFileError(f"{path / 'weights.safetensors'}: weights do not fit the configured network ({e})") from None
        model.eval()
        gen.model_ = model
        return gen


def is_trajectory_model(path: str | Path) -> bool:
    """True when `path` is a model folder whose config.json says model_type 'trajectory'."""
    p = Path(path) / "config.json"
    if not p.is_file():
        return False
    try:
        return json.loads(p.read_text()).get("model_type") == MODEL_TYPE
    except (json.JSONDecodeError, OSError):
        return False


def _longest_stays(hours: np.ndarray) -> dict:
    """[ICU, hospital] longest stay clock (-1: no stay of that kind) → {"icu": h | None, "hospital": h | None}."""
    return {k: (float(h) if h >= 0 else None) for k, h in zip(("icu", "hospital"), hours)}


def _records_with_stay(held: np.ndarray, n_records: int) -> dict:
    """[ICU, hospital] records that open such a stay, out of n_records."""
    return {"icu": int(held[0]), "hospital": int(held[1]), "records": int(n_records)}


def _check_n(n) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ConditioningError(f"n must be a positive integer, got {n!r}")
    return int(n)
