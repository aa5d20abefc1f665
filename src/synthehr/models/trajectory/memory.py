"""The seen-codes memory every token carries: which codes the record has held so far.

Why: a training window holds `context` tokens, about 12 of PhysioNet's 48 ICU hours and a sliver of a
MIMIC record, so without a memory the model cannot tell whether this patient has had a liver panel or a
troponin before; each window then orders them at their marginal rate and far too many synthetic patients
get at least one (issue 6: ALT in 63% of synthetic patients against 43% of real ones, TroponinT 39%
against 22%, with most synthetic troponins a single isolated value).

The memory at a token is m = (sum of the tied embeddings of the distinct code-like tokens seen up to and
including it) / sqrt(their number): a bag of codes, summed once per code so that a code's repetitions do
not crowd out the rest.  Demographics, time gaps and value bins never enter it.  A linear layer adds it
to the token's input.

The same quantity is computed two ways — for packed training windows (first-occurrence flags stored with
the tokens, plus the codes first seen before the window began) and one token at a time while sampling —
and a test checks they agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


def first_occurrences(tokens: np.ndarray, offsets: np.ndarray, code_like: np.ndarray) -> np.ndarray:
    """For records back to back (`offsets` bounds them): (N,) uint8, 1 where a code-like token appears for
    the first time in its record."""
    tokens = np.asarray(tokens, np.int64)
    offsets = np.asarray(offsets, np.int64)
    out = np.zeros(tokens.size, np.uint8)
    idx = np.flatnonzero(code_like[tokens])
    if idx.size:
        rec = np.searchsorted(offsets, idx, side="right") - 1
        key = rec * (int(tokens.max()) + 1) + tokens[idx]
        _, first = np.unique(key, return_index=True)  # index of each key's first (lowest) position
        out[idx[first]] = 1
    return out


@dataclass
class SeenInput:
    """What a packed batch (B rows of R tokens, several windows per row) needs to build the memory.

    first: (B, R) bool, the input token is a code's first occurrence in its record;
    doc_begin: (B, R) long, the row index where each token's window begins (sums restart there);
    base_pos / base_tok: (M,) flat positions (row * R + index) and tokens of the codes first seen before a
    window began, deposited at the window's first timeline token.
    """

    first: torch.Tensor
    doc_begin: torch.Tensor
    base_pos: torch.Tensor
    base_tok: torch.Tensor


def normalised(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    return total / torch.sqrt(count.clamp(min=1.0))[..., None]


def _memory_events(tokens: torch.Tensor, seen: SeenInput) -> tuple[torch.Tensor, torch.Tensor]:
    """Where codes enter a packed batch's memory: flat positions (row * R + index) and their tokens —
    each code's first occurrence in its record, plus the codes seen before a window began."""
    flat_first = torch.nonzero(seen.first.reshape(-1))[:, 0]
    return (torch.cat([flat_first, seen.base_pos]),
            torch.cat([tokens.reshape(-1)[flat_first], seen.base_tok]))


def _window_running_sums(ev: torch.Tensor, seen: SeenInput) -> torch.Tensor:
    """ev (B, R, k) deposits → (B, R, k) running sums along each row, restarted at each window's beginning.
    In ev's dtype: uint8 sums may wrap past 255 along a row, and the restarted difference is still exact
    while it stays below 256 (modular arithmetic)."""
    B, R, k = ev.shape
    cum = torch.cat([ev.new_zeros(B, 1, k), ev.cumsum(1, dtype=ev.dtype)], 1)
    return cum[:, 1:] - cum.gather(1, seen.doc_begin[..., None].expand(B, R, k))


def window_memory(E: torch.Tensor, tokens: torch.Tensor, seen: SeenInput) -> torch.Tensor:
    """(B, R, d) memory of every input position of a packed batch."""
    B, R = tokens.shape
    pos, tok = _memory_events(tokens, seen)
    # the code vectors and a count in one deposit, so both run through the same restarted sums
    ev = E.new_zeros(B * R, E.shape[1] + 1).index_add(0, pos, F.pad(E[tok], (0, 1), value=1.0))
    sums = _window_running_sums(ev.view(B, R, -1), seen)
    return normalised(sums[..., :-1], sums[..., -1])


def window_seen(tokens: torch.Tensor, seen: SeenInput, codes: torch.Tensor) -> torch.Tensor:
    """(B, R, len(codes)) bool: whether each of `codes` (sorted, unique) is among the codes the record has
    held up to and including each input position of a packed batch — the flags the sampler keeps in
    RunningMemory.seen.  Codes of the batch outside `codes` must not occur.  Built in uint8 (a window
    deposits a code at most once, so its restarted sum is 0 or 1): a quarter of float32's memory, since
    this buffer is positions x the batch's distinct codes (~2,500 on the MIMIC-IV demo)."""
    B, R = tokens.shape
    pos, tok = _memory_events(tokens, seen)
    ev = torch.zeros(B * R, int(codes.numel()), dtype=torch.uint8).index_put_(
        (pos, torch.searchsorted(codes, tok)), torch.ones(pos.shape[0], dtype=torch.uint8), accumulate=True)
    return _window_running_sums(ev.view(B, R, -1), seen).bool()


def batch_seen_codes(tokens: torch.Tensor, seen: SeenInput) -> torch.Tensor:
    """The sorted distinct codes a packed batch's memory can hold (its first occurrences and base codes)."""
    return torch.unique(_memory_events(tokens, seen)[1])


class RunningMemory:
    """The same memory, advanced one token per row during sampling (the embeddings are frozen then)."""

    def __init__(self, code_like: np.ndarray, batch: int, d_model: int):
        self._code_like = torch.as_tensor(code_like, dtype=torch.bool)
        self.seen = torch.zeros(batch, len(code_like), dtype=torch.bool)
        self.total = torch.zeros(batch, d_model)
        self.count = torch.zeros(batch)

    def reset_rows(self, rows) -> None:
        self.seen[rows] = False
        self.total[rows] = 0.0
        self.count[rows] = 0.0

    def keep_rows(self, rows: torch.Tensor) -> None:
        self.seen, self.total, self.count = self.seen[rows].clone(), self.total[rows].clone(), self.count[rows].clone()

    def advance(self, feed: torch.Tensor, E: torch.Tensor) -> None:
        rows = torch.arange(feed.shape[0])
        new = self._code_like[feed] & ~self.seen[rows, feed]
        if bool(new.any()):
            r, t = rows[new], feed[new]
            self.seen[r, t] = True
            self.total[r] += E[t]
            self.count[r] += 1.0

    def vector(self) -> torch.Tensor:
        """(B, d) memory after the last fed token."""
        return normalised(self.total, self.count)
