"""Token store on disk and packed training batches (memory stays flat as the cohort grows).

A store is a folder: tokens.bin (int32, all patients back to back), offsets.npy, subjects.npy.  Training
windows are `demographics prefix + a chunk of at most context - 5 timeline tokens`; a long record gives
overlapping chunks (stride = 3/4 of a chunk) whose loss covers each token once; windows are packed into
rows of `context` tokens with a block-diagonal causal mask, so short records waste no compute.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from synthehr.models.trajectory.tokenizer import PREFIX_LEN, Encoded


class TokenStore:
    """tokens.bin (int32) and hours.bin (float32: hours since the record's first event after each token)."""

    def __init__(self, root: str | Path, inc_hours: np.ndarray):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._tok = self.root / "tokens.bin"
        self._hours = self.root / "hours.bin"
        self._inc = np.asarray(inc_hours, np.float64)
        self._offsets: list[int] = [0]
        self._subjects: list[int] = []
        self._tok.write_bytes(b"")
        self._hours.write_bytes(b"")
        self._mm: np.memmap | None = None
        self._hm: np.memmap | None = None

    def append(self, enc: Encoded) -> None:
        inc = self._inc[enc.tokens]
        c = np.cumsum(inc)
        starts = enc.offsets[:-1]
        base = np.r_[0.0, c][starts]
        hours = (c - np.repeat(base, np.diff(enc.offsets))).astype(np.float32)
        with open(self._tok, "ab") as f:
            f.write(enc.tokens.astype(np.int32).tobytes())
        with open(self._hours, "ab") as f:
            f.write(hours.tobytes())
        self._hm = None
        base = self._offsets[-1]
        self._offsets += (base + enc.offsets[1:]).tolist()
        self._subjects += enc.subject_ids.tolist()
        self._mm = None

    def finish(self) -> "TokenStore":
        np.save(self.root / "offsets.npy", np.asarray(self._offsets, np.int64))
        np.save(self.root / "subjects.npy", np.asarray(self._subjects, np.int64))
        return self

    @property
    def offsets(self) -> np.ndarray:
        return np.asarray(self._offsets, np.int64)

    @property
    def tokens(self) -> np.ndarray:
        if self._mm is None:
            n = self._offsets[-1]
            self._mm = np.memmap(self._tok, dtype=np.int32, mode="r", shape=(n,)) if n else np.zeros(0, np.int32)
        return self._mm

    @property
    def hours(self) -> np.ndarray:
        if self._hm is None:
            n = self._offsets[-1]
            self._hm = np.memmap(self._hours, dtype=np.float32, mode="r", shape=(n,)) if n else np.zeros(0, np.float32)
        return self._hm

    def __len__(self) -> int:
        return len(self._subjects)

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def sequence(self, i: int) -> np.ndarray:
        return np.asarray(self.tokens[self._offsets[i]: self._offsets[i + 1]])


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
    mask: torch.Tensor     # (B, 1, R, R) bool
    targets: torch.Tensor  # (B, R) long, -100 = no loss
    n_tokens: int          # real (non-pad) input tokens


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
    hrs = np.zeros((rows, R), np.float32)
    doc = np.zeros((rows, R), np.int64)
    tgt = np.full((rows, R), -100, np.int64)
    offs = store.offsets
    toks = store.tokens
    hours = store.hours
    r, fill, used, ndoc = 0, 0, 0, 0
    for i, s, lf in windows.tolist():
        start = offs[i]
        n = offs[i + 1] - start
        nb = min(n - PREFIX_LEN, W)
        seq = np.concatenate([toks[start: start + PREFIX_LEN], toks[start + PREFIX_LEN + s: start + PREFIX_LEN + s + nb]])
        hr = np.concatenate([hours[start: start + PREFIX_LEN], hours[start + PREFIX_LEN + s: start + PREFIX_LEN + s + nb]])
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
        hrs[r, sl] = hr[:-1]
        doc[r, sl] = ndoc
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
    return Batch(torch.from_numpy(tok), torch.from_numpy(pos), torch.from_numpy(rpos), torch.from_numpy(hrs),
                 mask[:, None], torch.from_numpy(tgt), int((doc > 0).sum())), used


def batch_loss(model, batch: Batch) -> tuple[torch.Tensor, int]:
    h, E = model.hidden(batch.tokens, batch.pos, batch.mask, batch.rec_pos, batch.hours)
    sel = batch.targets >= 0
    logits = model.logits_of(h[sel], E)
    tg = batch.targets[sel]
    return F.cross_entropy(logits, tg), int(tg.numel())


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
