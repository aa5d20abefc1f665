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


def window_memory(E: torch.Tensor, tokens: torch.Tensor, seen: SeenInput) -> torch.Tensor:
    """(B, R, d) memory of every input position of a packed batch."""
    B, R = tokens.shape
    d = E.shape[1]
    flat_first = torch.nonzero(seen.first.reshape(-1))[:, 0]
    pos = torch.cat([flat_first, seen.base_pos])
    tok = torch.cat([tokens.reshape(-1)[flat_first], seen.base_tok])
    add = E.new_zeros(B * R, d).index_add(0, pos, E[tok])
    cnt = E.new_zeros(B * R).index_add(0, pos, E.new_ones(pos.shape[0]))
    # running sums along each row, restarted at each window's beginning
    cum = torch.cat([E.new_zeros(B, 1, d), add.view(B, R, d).cumsum(1)], 1)
    ccum = torch.cat([E.new_zeros(B, 1), cnt.view(B, R).cumsum(1)], 1)
    total = cum[:, 1:] - cum.gather(1, seen.doc_begin[..., None].expand(B, R, d))
    count = ccum[:, 1:] - ccum.gather(1, seen.doc_begin)
    return normalised(total, count)


def window_seen(tokens: torch.Tensor, seen: SeenInput, codes: torch.Tensor) -> torch.Tensor:
    """(B, R, len(codes)) 0/1: whether each of `codes` (sorted, unique) is among the codes the record has
    held up to and including each input position of a packed batch — the flags the sampler keeps in
    RunningMemory.seen.  Codes of the batch outside `codes` must not occur."""
    B, R = tokens.shape
    u = int(codes.numel())
    flat_first = torch.nonzero(seen.first.reshape(-1))[:, 0]
    pos = torch.cat([flat_first, seen.base_pos])
    col = torch.searchsorted(codes, torch.cat([tokens.reshape(-1)[flat_first], seen.base_tok]))
    ev = torch.zeros(B * R, u).index_put_((pos, col), torch.ones(pos.shape[0]), accumulate=True)
    cum = torch.cat([torch.zeros(B, 1, u), ev.view(B, R, u).cumsum(1)], 1)
    return cum[:, 1:] - cum.gather(1, seen.doc_begin[..., None].expand(B, R, u))


def batch_seen_codes(tokens: torch.Tensor, seen: SeenInput) -> torch.Tensor:
    """The sorted distinct codes a packed batch's memory can hold (its first occurrences and base codes)."""
    return torch.unique(torch.cat([tokens.reshape(-1)[seen.first.reshape(-1)], seen.base_tok]))


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
