"""Batched, grammar-masked sampling with a KV cache and continuous batching.

Every row of the batch is one record in progress.  Each step feeds one token per row (a prompt token
while the row's prompt lasts — prompt positions given as -1 are sampled —, else the token sampled at
the previous step); a row whose record ends takes the next waiting prompt at once, so short records do
not hold up long ones.  Sampling is plain ancestral sampling at `temperature`, with nucleus (top-p)
truncation only when `top_p < 1` and epsilon truncation (tokens below `min_prob` dropped) only when
`min_prob > 0`; there is no hidden top-k.  The grammar mask removes the tokens that
would make the record invalid; the probability mass it removes is measured at every sampled step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from synthehr.errors import ConditioningError
from synthehr.models.trajectory.clock import ClockRoles, RunningClock
from synthehr.models.trajectory.grammar import Grammar
from synthehr.models.trajectory.memory import RunningMemory
from synthehr.models.trajectory.model import TrajectoryTransformer
from synthehr.models.trajectory.tokenizer import PREFIX_LEN


@dataclass
class SampleStats:
    records: int = 0
    sampled_tokens: int = 0
    forced_tokens: int = 0
    steps: int = 0
    removed_mass_sum: float = 0.0
    removed_mass_max: float = 0.0
    masked_steps: int = 0          # sampled steps where the mask removed more than 1e-6
    truncated_mass_sum: float = 0.0  # probability mass below min_prob that was dropped (0 unless min_prob > 0)
    stay_cut_mass_sum: float = 0.0   # of the mask's removed mass: time tokens cut by the stay limits (grammar.py)
    closed_by_length_cap: int = 0  # records that reached the closing-only zone near max_len
    seconds: float = 0.0
    processes: int = 1             # sampling processes actually used (parallel.py)
    lengths: list = field(default_factory=list)

    def add(self, other: "SampleStats") -> None:
        """Fold in the counts of a run sampled elsewhere (a worker process); wall time and the process
        count stay the caller's."""
        for k in ("records", "sampled_tokens", "forced_tokens", "steps", "removed_mass_sum", "masked_steps",
                  "truncated_mass_sum", "stay_cut_mass_sum", "closed_by_length_cap"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        self.removed_mass_max = max(self.removed_mass_max, other.removed_mass_max)
        self.lengths.extend(other.lengths)

    @property
    def mean_removed_mass(self) -> float:
        return self.removed_mass_sum / self.sampled_tokens if self.sampled_tokens else 0.0

    def as_dict(self) -> dict:
        return {"records": self.records, "sampled_tokens": self.sampled_tokens, "forced_tokens": self.forced_tokens,
                "steps": self.steps, "mask_removed_mass_mean": self.mean_removed_mass,
                "mask_removed_mass_max": self.removed_mass_max,
                "masked_step_share": self.masked_steps / self.sampled_tokens if self.sampled_tokens else 0.0,
                "min_prob_truncated_mass_mean": self.truncated_mass_sum / self.sampled_tokens if self.sampled_tokens else 0.0,
                "stay_cut_mass_mean": self.stay_cut_mass_sum / self.sampled_tokens if self.sampled_tokens else 0.0,
                "closed_by_length_cap": self.closed_by_length_cap, "seconds": self.seconds,
                "processes": self.processes,
                "records_per_minute": 60 * self.records / self.seconds if self.seconds else float("nan"),
                "mean_tokens_per_record": float(np.mean(self.lengths)) if self.lengths else float("nan")}


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser (uint64, wrapping arithmetic): a bijection that scatters nearby inputs."""
    x = (x + _GOLDEN) & np.uint64(0xFFFFFFFFFFFFFFFF)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def record_uniforms(seed: int, records: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """(n,) float64 uniforms in [0, 1), one per (record, token position), from a counter-based hash of
    (seed, record, position).  Why: each record draws from a random stream of its own, so its tokens do not
    depend on which other records share its batch, process or task — the same records for any number of
    workers and any task size (up to the rounding of batched kernels)."""
    with np.errstate(over="ignore"):
        h = _mix64(np.full(len(records), np.uint64(int(seed) & 0xFFFFFFFFFFFFFFFF)))
        h = _mix64(h ^ np.asarray(records, np.int64).astype(np.uint64))
        h = _mix64(h ^ np.asarray(positions, np.int64).astype(np.uint64))
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


LENGTH_STREAM = -1  # record_uniforms position of a record's length draw (token positions are >= 1)


def draw_record_lengths(quantiles: Sequence[float], seed: int, records: np.ndarray, at_least: np.ndarray,
                        at_most: int | None = None) -> np.ndarray:
    """(n,) int64 record lengths in tokens ([BOS] to [EOS]), one per record, from the piecewise-linear
    inverse of the training lengths' quantiles (evenly spaced probabilities 0..1), drawn from the part
    of the distribution in [at_least, at_most]: a history prompt's continuation is longer than the
    prompt, and no record runs past the sampler's length cap.  The uniform comes from the record's own
    stream, so a record's length, like its tokens, does not depend on its batch or process.  A prompt
    already past the longest training record gets `at_least`."""
    q = np.maximum.accumulate(np.asarray(quantiles, np.float64))
    if q.ndim != 1 or q.size < 2:
        raise ConditioningError(f"length quantiles must be a list of at least 2 numbers, got {len(q)}")
    grid = np.linspace(0.0, 1.0, q.size)
    at_least = np.asarray(at_least, np.float64)
    u = record_uniforms(seed, records, np.full(len(records), LENGTH_STREAM))
    # the CDF just below the floor and just above the cap (half a token: lengths are whole, draws are
    # rounded, and a run of tied quantiles would otherwise count as above the floor)
    lo = np.interp(at_least - 0.5, q, grid, left=0.0, right=1.0)
    hi = 1.0 if at_most is None else float(np.interp(at_most + 0.5, q, grid, left=0.0, right=1.0))
    hi = np.maximum(hi, lo)
    lengths = np.rint(np.interp(lo + u * (hi - lo), grid, q))
    if at_most is not None:
        lengths = np.minimum(lengths, at_most)
    return np.maximum(lengths, at_least).astype(np.int64)


def _draw(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """One exact draw per row by inverting the cumulative weights (float64) at the row's uniform u (B,).

    torch.multinomial takes ~8 ms for 64 rows x 4k tokens on this CPU and dominated sampling; a cumsum
    plus a binary search draws from the same distribution in a fraction of that.  A token of weight 0
    is never drawn: its cumulative value equals its predecessor's, which the search finds first.
    """
    cdf = torch.cumsum(weights.to(torch.float64), dim=-1)
    total = cdf[:, -1:]
    idx = torch.searchsorted(cdf, u[:, None] * total, right=True)[:, 0]
    # u can round up to the total: fall back to the last token with positive weight
    over = idx >= weights.shape[1]
    if bool(over.any()):
        last = weights.shape[1] - 1 - torch.argmax((weights[over].flip(-1) > 0).to(torch.int8), dim=-1)
        idx[over] = last
    return idx


def _sample_rows(weights: torch.Tensor, top_p: float, u: torch.Tensor) -> torch.Tensor:
    """One draw per row from non-negative (unnormalised) weights, nucleus-truncated when top_p < 1."""
    if top_p < 1.0:
        probs = weights / weights.sum(-1, keepdim=True)
        sp, si = torch.sort(probs, dim=-1, descending=True)
        keep = (torch.cumsum(sp, -1) - sp) < top_p  # always keeps the most likely token
        choice = _draw(sp * keep, u)
        return si.gather(1, choice[:, None])[:, 0]
    return _draw(weights, u)


@torch.no_grad()
def generate(model: TrajectoryTransformer, grammar: Grammar, prompts: Sequence[np.ndarray], *, context: int,
             temperature: float = 1.0, top_p: float = 1.0, min_prob: float = 0.0, batch_size: int = 64, seed: int = 0,
             use_mask: bool = True, on_record: Callable[[int, np.ndarray], None] | None = None,
             stats: SampleStats | None = None, roles: ClockRoles | None = None,
             record_ids: Sequence[int] | None = None, lengths: Sequence[int] | None = None) -> list[np.ndarray] | None:
    """Complete every prompt (token ids; -1 = sample this position) into a record ending in [EOS].

    Record i draws its tokens from the random stream (seed, record_ids[i]) (record_uniforms; default
    record_ids: 0, 1, ...): a caller that splits one run into parts passes each part's global indices.
    A model with a length budget needs each prompt's target `lengths` (tokens, [BOS] to [EOS];
    draw_record_lengths): every step tells it how many tokens the record has left.  The grammar, not the
    budget, decides when a record may end, so a record can end before or after its target.

    `min_prob` > 0 drops every token whose probability (after temperature) is below it — epsilon
    sampling (Hewitt et al. 2022): a model smooths a little mass onto every token, and over a record of
    hundreds of steps that mass adds up to events no real record holds.  If it would drop every token the
    grammar allows, the step samples from the allowed tokens untruncated.

    Returns the records in prompt order, or None when `on_record(index, tokens)` receives them as they
    finish (so a caller can stream them to disk).
    """
    if temperature <= 0:
        raise ConditioningError(f"temperature must be > 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ConditioningError(f"top_p must be in (0, 1], got {top_p}")
    if not 0 <= min_prob < 1:
        raise ConditioningError(f"min_prob must be in [0, 1), got {min_prob}")
    stats = stats if stats is not None else SampleStats()
    model.eval()
    model.freeze_embeddings()
    max_len = grammar.max_len
    rec_ids = np.arange(len(prompts), dtype=np.int64) if record_ids is None else np.asarray(record_ids, np.int64)
    if rec_ids.shape != (len(prompts),):
        raise ConditioningError(f"record_ids must hold one id per prompt ({len(prompts)}), got shape {rec_ids.shape}")
    bos = grammar.vocab.bos
    eos = grammar.vocab.eos
    prompts = [np.asarray(p, np.int64) for p in prompts]
    for i, p in enumerate(prompts):
        if p.size == 0 or p[0] != bos:
            raise ConditioningError(f"prompt {i} must start with [BOS]")
        if p.size >= max_len - grammar.force_margin:
            raise ConditioningError(f"prompt {i} has {p.size} tokens; max_len is {max_len}")
    budget = None
    if model.left_emb is not None:
        if lengths is None:
            raise ConditioningError("this model has a length budget: pass each prompt's target length")
        budget = np.asarray(lengths, np.int64)
        if budget.shape != (len(prompts),):
            raise ConditioningError(f"lengths must hold one length per prompt ({len(prompts)}), got shape {budget.shape}")
    any_prompt = any(p.size > 1 for p in prompts)  # beyond [BOS]: rows may have tokens to force
    results: list[np.ndarray | None] = [None] * len(prompts) if on_record is None else []
    B = max(1, min(batch_size, len(prompts)))
    cache = model.new_cache(B, PREFIX_LEN, context - PREFIX_LEN)
    state = grammar.initial(B)
    row_prompt = np.full(B, -1, np.int64)  # each row's prompt index (rec_ids[row_prompt]: its random stream)
    # tokens of each row's record so far: a preallocated buffer, so a step appends with one vectorised write
    buf = np.zeros((B, max_len + 1), np.int32)
    rlen = np.zeros(B, np.int64)
    pos = torch.zeros(B, dtype=torch.long)
    feed = torch.zeros(B, dtype=torch.long)
    roles = roles if roles is not None else ClockRoles.of(grammar.vocab)
    clock = RunningClock(roles, B)
    memory = RunningMemory(roles.code_like, B, model.d_model) if model.seen_proj is not None else None
    E = model.embedding_matrix()
    E_mem = model.memory_matrix(E)
    active = np.zeros(B, bool)
    next_prompt = 0

    def start_row(r: int) -> bool:
        nonlocal next_prompt
        if next_prompt >= len(prompts):
            active[r] = False
            return False
        row_prompt[r] = next_prompt
        buf[r, 0] = bos
        rlen[r] = 1
        next_prompt += 1
        pos[r] = 0
        feed[r] = bos
        clock.reset_rows(r)
        if memory is not None:
            memory.reset_rows(r)
        cache.reset_rows(r)
        state.set_rows(r, grammar.initial(1))
        active[r] = True
        return True

    for r in range(B):
        start_row(r)
    t0 = time.perf_counter()
    while active.any():
        rows = torch.from_numpy(np.flatnonzero(active))
        if len(rows) < 0.75 * cache.written.shape[0]:
            # compact the batch: drop finished rows from the cache and every per-row array
            keep = rows
            cache = cache.keep_rows(keep)
            state = state.index(keep)
            pos, feed = pos[keep].clone(), feed[keep].clone()
            clock.keep_rows(keep)
            if memory is not None:
                memory.keep_rows(keep)
            kl = keep.tolist()
            row_prompt = row_prompt[kl]
            buf, rlen = buf[kl], rlen[kl]
            active = np.ones(len(kl), bool)
            rows = torch.arange(len(kl))
        state = grammar.advance(state, feed)
        clock.advance(feed)
        if memory is not None:
            memory.advance(feed, E_mem)
        stay = clock.stay()
        allowed = grammar.allowed(state) if use_mask else None
        left = None
        if budget is not None:
            left = torch.from_numpy(budget[row_prompt] - 1) - pos
            if allowed is not None:
                # past its budget with [EOS] not yet allowed (a stay still open): "one token, then the end"
                # rather than "end now", which in training always came right before an [EOS]
                left = torch.where(allowed[:, eos], left, left.clamp(min=2))
        logits = model.step(feed, pos, cache, clock.hours, stay, memory.vector() if memory is not None else None,
                            memory.seen if memory is not None else None, left)
        stats.steps += 1
        nb = logits.shape[0]
        # which rows are forced by their prompt
        forced = np.full(nb, -1, np.int64)
        for r in (range(nb) if any_prompt else ()):
            if active[r]:
                p = prompts[row_prompt[r]]
                k = int(rlen[r])
                if k < p.size and p[k] >= 0:
                    forced[r] = p[k]
        samp = np.flatnonzero(active & (forced < 0))
        nxt = torch.from_numpy(forced.copy())
        if samp.size:
            ts = torch.from_numpy(samp)
            whole = samp.size == nb
            lg = logits if whole else logits[ts]
            probs = torch.softmax(lg / temperature if temperature != 1.0 else lg, dim=-1)
            if allowed is not None:
                al = allowed.clone() if whole else allowed[ts]
                if grammar.has_stay_limits:
                    cut = grammar.stay_cut(stay if whole else stay[ts])
                    tid = grammar.time_ids
                    stats.stay_cut_mass_sum += float((probs[:, tid] * al[:, tid] * cut).sum())
                    al[:, tid] &= ~cut
                kept = probs * al
                ksum = kept.sum(-1)
                removed = 1.0 - ksum
                tiny = ksum < 1e-30
                if bool(tiny.any()):  # every allowed token underflowed: renormalise over them in log space
                    kept[tiny] = torch.softmax((lg[tiny] / temperature).masked_fill(~al[tiny], float("-inf")), dim=-1)
                stats.removed_mass_sum += float(removed.sum())
                stats.removed_mass_max = max(stats.removed_mass_max, float(removed.max()))
                stats.masked_steps += int((removed > 1e-6).sum())
            else:
                kept = probs
                kept[:, grammar.vocab.pad] = 0.0
            if min_prob > 0:
                small = probs < min_prob
                trunc = kept.masked_fill(small, 0.0)
                empty = trunc.sum(-1) <= 0
                if bool(empty.any()):  # nothing allowed is that likely: keep the step untruncated
                    trunc[empty] = kept[empty]
                stats.truncated_mass_sum += float((kept.sum(-1) - trunc.sum(-1)).sum())
                kept = trunc
            u = torch.from_numpy(record_uniforms(seed, rec_ids[row_prompt[samp]], rlen[samp]))
            nxt[ts] = _sample_rows(kept, top_p, u)
            stats.sampled_tokens += int(samp.size)
        if use_mask:
            fr = np.flatnonzero(forced >= 0)
            if fr.size:
                ok = allowed[torch.from_numpy(fr), torch.from_numpy(forced[fr])]
                if not bool(ok.all()):
                    bad = int(fr[int(torch.nonzero(~ok)[0, 0])])
                    raise ConditioningError(
                        f"prompt {row_prompt[bad]}: token {grammar.vocab.tokens[forced[bad]]!r} at position "
                        f"{int(rlen[bad])} breaks the record grammar")
        stats.forced_tokens += int((forced >= 0).sum())
        act = np.flatnonzero(active)
        tok = nxt.numpy()[act]
        buf[act, rlen[act]] = tok
        rlen[act] += 1
        fin = (tok == eos) | (rlen[act] >= max_len)
        go = act[~fin]
        pos[go] += 1
        feed[go] = torch.from_numpy(tok[~fin])
        for r in act[fin].tolist():
            seq = buf[r, : rlen[r]].copy()
            if seq[-1] != eos:  # only possible without the mask
                seq = np.r_[seq, np.int32(eos)]
            stats.records += 1
            stats.lengths.append(int(seq.size))
            if bool(state.forced[r]):
                stats.closed_by_length_cap += 1
            if on_record is None:
                results[int(row_prompt[r])] = seq
            else:
                on_record(int(row_prompt[r]), seq)
            start_row(r)
    stats.seconds += time.perf_counter() - t0
    return results if on_record is None else None
