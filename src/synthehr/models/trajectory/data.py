"""Token store on disk and packed training batches (memory stays flat as the cohort grows).

A store is a folder: tokens.bin (int32, all patients back to back), offsets.npy, subjects.npy.  Training
windows are `demographics prefix + a chunk of at most context - 5 timeline tokens`; a long record gives
overlapping chunks (stride = 3/4 of a chunk) whose loss covers each token once; windows are packed into
rows of `context` tokens with a block-diagonal causal mask, so short records waste no compute.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from synthehr.models.trajectory.clock import ClockRoles, record_clocks, records_holding_stays
from synthehr.models.trajectory.memory import SeenInput, first_occurrences
from synthehr.models.trajectory.model import stay_bucket
from synthehr.models.trajectory.tokenizer import PREFIX_LEN, Encoded


class TokenStore:
    """tokens.bin (int32), hours.bin (float32: hours since the record's first event after each token),
    stay.bin (float32 pairs: hours since the open ICU / hospital stay began, -1 when none; see clock.py)
    and first.bin (uint8: 1 where a code appears for the first time in its record; see memory.py).

    Windows are read with positioned reads (`os.pread`), not a memory map: mapped pages of a file count
    in the process's resident memory, so a memory map would make RSS grow with the corpus."""

    _FILES = (("tokens", np.int32, 1), ("hours", np.float32, 1), ("stay", np.float32, 2), ("first", np.uint8, 1))

    def __init__(self, root: str | Path, roles: ClockRoles):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._roles = roles
        self._offsets: list[int] = [0]
        self._subjects: list[int] = []
        self._offsets_arr: np.ndarray | None = None
        self._fds: dict[str, int] = {}
        self.longest_stay_hours = np.full(2, -1.0)  # [ICU, hospital] longest open-stay clock seen; -1: none
        self.records_with_stay = np.zeros(2, np.int64)  # [ICU, hospital] records that open such a stay
        for name, _, _ in self._FILES:
            (self.root / f"{name}.bin").write_bytes(b"")

    def append(self, enc: Encoded) -> None:
        hours, stay = record_clocks(enc.tokens, enc.offsets, self._roles)
        first = first_occurrences(enc.tokens, enc.offsets, self._roles.code_like)
        if stay.size:
            self.longest_stay_hours = np.maximum(self.longest_stay_hours, stay.max(axis=0))
        self.records_with_stay += records_holding_stays(enc.tokens, enc.offsets, self._roles).sum(axis=0)
        for (name, dt, _), arr in zip(self._FILES, (enc.tokens, hours, stay, first)):
            with open(self.root / f"{name}.bin", "ab") as f:
                f.write(np.ascontiguousarray(arr, dt).tobytes())
        base = self._offsets[-1]
        self._offsets += (base + enc.offsets[1:]).tolist()
        self._offsets_arr = None
        self._subjects += enc.subject_ids.tolist()

    def finish(self) -> "TokenStore":
        np.save(self.root / "offsets.npy", np.asarray(self._offsets, np.int64))
        np.save(self.root / "subjects.npy", np.asarray(self._subjects, np.int64))
        return self

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}

    def __enter__(self) -> "TokenStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def offsets(self) -> np.ndarray:
        # read once per training batch: keep the array until the next append
        if self._offsets_arr is None:
            self._offsets_arr = np.asarray(self._offsets, np.int64)
        return self._offsets_arr

    def read(self, start: int, n: int, fields: tuple[str, ...] = ("tokens", "hours", "stay", "first")
             ) -> tuple[np.ndarray, ...]:
        """The stored positions [start, start + n) of each field: tokens (n,), hours (n,), stay clocks
        (n, 2), first-occurrence flags (n,)."""
        out = []
        for name, dt, width in self._FILES:
            if name not in fields:
                continue
            fd = self._fds.get(name)
            if fd is None:
                fd = self._fds[name] = os.open(self.root / f"{name}.bin", os.O_RDONLY)
            size = np.dtype(dt).itemsize * width
            a = np.frombuffer(os.pread(fd, n * size, start * size), dtype=dt)
            if a.size != n * width:
                raise IndexError(f"{self.root / (name + '.bin')}: positions {start}..{start + n} past the end")
            out.append(a.reshape(n, width) if width > 1 else a)
        return tuple(out)

    def __len__(self) -> int:
        return len(self._subjects)

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def sequence(self, i: int) -> np.ndarray:
        a, b = self._offsets[i], self._offsets[i + 1]
        return self.read(a, b - a, ("tokens",))[0].copy()


def make_windows(lengths: np.ndarray, context: int, stride_frac: float = 0.75) -> np.ndarray:
    """(n_windows, 3) int64: patient, body start, body index where the loss starts."""
    W = context - PREFIX_LEN
    stride = max(1, int(W * stride_frac))
    out = []
    for i, n in enumerate(lengths.tolist()):
        nb = n - PREFIX_LEN
        out.append((i, 0, 0))
        if nb <= W:
            continue
        s, covered = 0, W
        while covered < nb:
            s = min(s + stride, nb - W)
            out.append((i, s, covered))
            covered = s + W
    return np.asarray(out, np.int64).reshape(-1, 3)


@dataclass
class Batch:
    tokens: torch.Tensor   # (B, R) long
    pos: torch.Tensor      # (B, R) long rotary positions (jittered)
    rec_pos: torch.Tensor  # (B, R) long true positions in the record
    hours: torch.Tensor    # (B, R) float hours since the first event
    stay: torch.Tensor     # (B, R, 2) float hours since the open ICU / hospital stay began (-1: none)
    mask: torch.Tensor     # (B, 1, R, R) bool
    targets: torch.Tensor  # (B, R) long, -100 = no loss
    n_tokens: int          # real (non-pad) input tokens
    seen: SeenInput | None = None  # what the seen-codes memory needs (memory.py)
    left: torch.Tensor | None = None  # (B, R) long: tokens each input token's record holds after it (length budget)


def pack(store: TokenStore, windows: np.ndarray, context: int, rows: int, rng: np.random.Generator | None = None,
         jitter: int = 0) -> tuple[Batch, int]:
    """Pack windows (in order) into `rows` rows of `context` tokens; returns the batch and how many
    windows it used.  With `jitter`, each window's timeline positions are shifted by a random offset in
    [0, jitter): the model learns that nothing depends on the distance between the demographic prefix and
    the timeline chunk it sees, which is what lets the sampler run far past the first window."""
    W = context - PREFIX_LEN
    R = context
    tok = np.zeros((rows, R), np.int64)
    pos = np.zeros((rows, R), np.int64)
    rpos = np.zeros((rows, R), np.int64)
    left = np.ones((rows, R), np.int64)
    hrs = np.zeros((rows, R), np.float32)
    sty = np.full((rows, R, 2), -1.0, np.float32)
    doc = np.zeros((rows, R), np.int64)
    tgt = np.full((rows, R), -100, np.int64)
    first = np.zeros((rows, R), bool)
    begin = np.zeros((rows, R), np.int64)
    base_pos: list[np.ndarray] = []
    base_tok: list[np.ndarray] = []
    offs = store.offsets
    r, fill, used, ndoc = 0, 0, 0, 0
    for i, s, lf in windows.tolist():
        start = offs[i]
        n = offs[i + 1] - start
        nb = min(n - PREFIX_LEN, W)
        pre, body = store.read(start, PREFIX_LEN), store.read(start + PREFIX_LEN + s, nb)
        seq, hr, st, fo = (np.concatenate([x, y]) for x, y in zip(pre, body))
        true_p = np.concatenate([np.arange(PREFIX_LEN), PREFIX_LEN + s + np.arange(nb)])
        u = int(rng.integers(0, jitter)) if jitter and rng is not None else 0
        p = np.concatenate([np.arange(PREFIX_LEN), PREFIX_LEN + s + u + np.arange(nb)])
        L = seq.size - 1
        if fill + L > R:
            r += 1
            fill = 0
            if r >= rows:
                break
        ndoc += 1
        sl = slice(fill, fill + L)
        tok[r, sl] = seq[:-1]
        pos[r, sl] = p[:-1]
        rpos[r, sl] = true_p[:-1]
        left[r, sl] = n - 1 - true_p[:-1]
        hrs[r, sl] = hr[:-1]
        sty[r, sl] = st[:-1]
        doc[r, sl] = ndoc
        first[r, sl] = fo[:-1] > 0
        begin[r, sl] = fill
        if s > 0 and L > PREFIX_LEN:
            # codes first seen before this window: they enter the memory at its first timeline token
            bt, bf = store.read(start + PREFIX_LEN, s, ("tokens", "first"))
            seen_before = bt[bf > 0].astype(np.int64)
            base_tok.append(seen_before)
            base_pos.append(np.full(seen_before.size, r * R + fill + PREFIX_LEN, np.int64))
        t = seq[1:].astype(np.int64).copy()
        if s > 0 or lf > 0:
            body_idx = p[1:] - PREFIX_LEN - u      # body index of each target
            t[body_idx < lf] = -100
        tgt[r, sl] = t
        fill += L
        used += 1
    d = torch.from_numpy(doc)
    ar = torch.arange(R)
    mask = (d[:, :, None] == d[:, None, :]) & (ar[None, None, :] <= ar[None, :, None])
    mask = (mask & (d[:, :, None] > 0)) | torch.eye(R, dtype=torch.bool)[None]
    cat = lambda parts: torch.from_numpy(np.concatenate(parts) if parts else np.zeros(0, np.int64))  # noqa: E731
    seen = SeenInput(torch.from_numpy(first), torch.from_numpy(begin), cat(base_pos), cat(base_tok))
    return Batch(torch.from_numpy(tok), torch.from_numpy(pos), torch.from_numpy(rpos), torch.from_numpy(hrs),
                 torch.from_numpy(sty), mask[:, None], torch.from_numpy(tgt), int((doc > 0).sum()), seen, torch.from_numpy(left)), used


LOSS_CHUNK = 1024  # target positions per logits block: caps the (positions x vocabulary) buffers


def _chunk_nll(model, h: torch.Tensor, E: torch.Tensor, tg: torch.Tensor, codes: torch.Tensor | None = None,
               flags: torch.Tensor | None = None, buckets: torch.Tensor | None = None) -> torch.Tensor:
    logits = model.logits_of(h, E)
    if codes is not None:  # the seen bias, over the batch's codes only (not a positions x vocabulary buffer)
        if buckets is None:
            logits = logits.index_add(1, codes, flags * model.seen_bias[codes])
        else:  # the novel bias of each position's stay bucket everywhere, swapped for the seen bias where held
            nov = model.novel_bias[buckets]
            logits = (logits + nov).index_add(1, codes, flags * (model.seen_bias[codes] - nov[:, codes]))
    return F.cross_entropy(logits, tg, reduction="sum")


def batch_loss(model, batch: Batch) -> tuple[torch.Tensor, int]:
    """Mean next-token NLL of the batch's targets.  The logits are computed LOSS_CHUNK positions at a
    time and recomputed in the backward pass (activation checkpointing), so at ~32,000 event types the
    largest buffer is one chunk's logits, not every position's (16 x 256 x 32k floats = 0.5 GB)."""
    h, E = model.hidden(batch.tokens, batch.pos, batch.mask, batch.rec_pos, batch.hours, batch.stay, batch.seen,
                        batch.left)
    sel = batch.targets >= 0
    hs, tg = h[sel], batch.targets[sel]
    codes, flags = model.seen_codes_of(batch.tokens, batch.seen)
    fs = flags[sel] if flags is not None else None
    bk = stay_bucket(batch.stay[sel]) if codes is not None and model.novel_bias is not None else None
    n = int(tg.numel())
    if n <= LOSS_CHUNK:
        return _chunk_nll(model, hs, E, tg, codes, fs, bk) / max(n, 1), n
    total = hs.new_zeros(())
    for a in range(0, n, LOSS_CHUNK):
        cut = lambda x: x[a:a + LOSS_CHUNK] if x is not None else None  # noqa: E731
        part = (model, hs[a:a + LOSS_CHUNK], E, tg[a:a + LOSS_CHUNK], codes, cut(fs), cut(bk))
        total = total + (checkpoint(_chunk_nll, *part, use_reentrant=False) if torch.is_grad_enabled()
                         else _chunk_nll(*part))
    return total / n, n


@dataclass
class TrainLog:
    steps: int = 0
    tokens: int = 0
    loss_tokens: int = 0
    seconds: float = 0.0
    losses: list = None
    tuning_loss: float | None = None

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else float("nan")


def train(model, store: TokenStore, *, context: int, rows: int, epochs: float, lr: float, seed: int,
          max_steps: int | None = None, max_seconds: float | None = None, jitter: int = 1 << 16,
          weight_decay: float = 0.01,
          warmup: float = 0.05, log_every: int = 50, progress=None) -> TrainLog:
    """AdamW with linear warm-up and cosine decay; each epoch visits every window once in random order."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    windows = make_windows(store.lengths(), context)
    avg_len = float(np.mean(np.minimum(store.lengths(), context))) if len(store) else 1.0
    per_batch = max(1, int(rows * context / max(avg_len, 1.0)))
    steps_per_epoch = max(1, math.ceil(len(windows) / per_batch))
    total = max(1, int(round(epochs * steps_per_epoch)))
    if max_steps is not None:
        total = min(total, int(max_steps))
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (decay if p.dim() >= 2 and "emb" not in n else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95))
    n_warm = max(1, int(warmup * total))
    plan = {"total": total}  # shortened once the speed is known when a time budget binds

    def lr_at(s: int) -> float:
        return min(1.0, (s + 1) / n_warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s / plan["total"], 1.0))))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    log = TrainLog(losses=[])
    model.train()
    model.unfreeze_embeddings()
    order = rng.permutation(len(windows))
    cursor = 0
    t0 = time.perf_counter()
    running = []
    step = 0
    while step < plan["total"]:
        if step == 20 and max_seconds is not None:
            per_step = (time.perf_counter() - t0) / 20
            plan["total"] = max(21, min(plan["total"], int(0.95 * max_seconds / per_step)))
        if cursor >= len(order):
            order, cursor = rng.permutation(len(windows)), 0
        batch, used = pack(store, windows[order[cursor:cursor + 4 * per_batch]], context, rows, rng, jitter)
        cursor += max(used, 1)
        loss, n_loss = batch_loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        log.steps += 1
        log.tokens += batch.n_tokens
        log.loss_tokens += n_loss
        running.append(float(loss.detach()))
        step += 1
        if step % log_every == 0 or step == plan["total"]:
            log.losses.append((step, float(np.mean(running))))
            if progress:
                progress(f"step {step}/{plan['total']} loss {np.mean(running):.3f} "
                         f"{log.tokens / (time.perf_counter() - t0):,.0f} tok/s")
            running = []
        if max_seconds is not None and time.perf_counter() - t0 > max_seconds:
            break
    log.seconds = time.perf_counter() - t0
    model.eval()
    return log


@torch.no_grad()
def evaluate_loss(model, store: TokenStore, context: int, rows: int = 16, max_batches: int = 50) -> float:
    """Mean next-token NLL over the store's windows (each token once)."""
    model.eval()
    windows = make_windows(store.lengths(), context)
    total, count, cursor = 0.0, 0, 0
    for _ in range(max_batches):
        if cursor >= len(windows):
            break
        batch, used = pack(store, windows[cursor:], context, rows)
        cursor += max(used, 1)
        loss, n = batch_loss(model, batch)
        total += float(loss) * n
        count += n
    return total / count if count else float("nan")
