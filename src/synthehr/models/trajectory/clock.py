"""The record clocks every token carries: hours since the record's first event, and hours since the
current ICU stay and the current hospital stay opened.

Why stay clocks: a transformer window over a long record rarely holds the admission token, and hours
since the *first* event say nothing about how long the *current* stay has lasted; without them a model
cannot learn that PhysioNet stays stop at 48 h or that an ICU stay of 10 days is long.  Generated
stays then run on (issue 6: 107 h of ICU events against 48 h real).

The same definition is computed two ways — over whole stored records (numpy, for training) and one
token at a time (torch, for sampling) — and a test checks they agree token for token.  A stay clock is
-1 when no stay of that kind is open after the token.

The stay clocks enter the model as smooth features (Gaussian bumps over log2(1 + h), half an octave
apart, and over h, two hours apart up to a week), a linear ramp, and sines and cosines of h at periods
from 30 minutes to 512 hours (sub-hour resolution at any point of a stay, as in Time2Vec), so
neighbouring hours share parameters: a fine clock with no rarely trained buckets late in long stays.  The 2-hour spacing is
there because 6-hour bumps let PhysioNet's hard 48 h cut blur into measurements until ~60 h.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from synthehr.models.trajectory.vocab import CODE_LIKE, Cat, Vocabulary

LOG_CENTRES = np.arange(0.0, 12.01, 0.5)        # log2(1 + hours): 0 h … ~170 days
LOG_WIDTH = 0.5
LINEAR_CENTRES = np.arange(0.0, 168.01, 2.0)     # hours: the first week at 2 h spacing
LINEAR_WIDTH = 1.5
RAMP_HOURS = 168.0                               # + a linear ramp min(h, 2 weeks) / 1 week
PERIODS_HOURS = 2.0 ** np.arange(-1, 10)         # + sin/cos of h at periods 30 min … 512 h
N_STAY_CLOCKS = 2                                # ICU, hospital
FEATURES_PER_CLOCK = len(LOG_CENTRES) + len(LINEAR_CENTRES) + 2 * len(PERIODS_HOURS) + 2  # + ramp + "open"
N_STAY_FEATURES = N_STAY_CLOCKS * FEATURES_PER_CLOCK


@dataclass(frozen=True)
class ClockRoles:
    """Per-token facts the clocks need: (V,) hours each token moves time, and which tokens open and
    close ICU and hospital stays (the grammar's definition: ICU_DISCHARGE closes an ICU stay,
    HOSPITAL_DISCHARGE[//DIED] a hospital stay); and which tokens are codes, the ones the seen-codes
    memory holds (memory.py)."""

    inc_hours: np.ndarray
    icu_open: np.ndarray
    icu_close: np.ndarray
    hosp_open: np.ndarray
    hosp_close: np.ndarray
    code_like: np.ndarray

    @classmethod
    def of(cls, vocab: Vocabulary) -> "ClockRoles":
        cat = vocab.cat
        return cls(vocab.time_increments_hours(), cat == Cat.ICU_OPEN, cat == Cat.ICU_CLOSE,
                   cat == Cat.HOSP_OPEN, (cat == Cat.HOSP_CLOSE) | (cat == Cat.HOSP_DIED),
                   np.isin(cat, np.asarray(CODE_LIKE, dtype=cat.dtype)))


def _since_open(hours: np.ndarray, starts: np.ndarray, is_open: np.ndarray, is_close: np.ndarray) -> np.ndarray:
    n = hours.size
    idx = np.arange(n)
    last_open = np.maximum.accumulate(np.where(is_open, idx, -1))
    last_close = np.maximum.accumulate(np.where(is_close, idx, -1))
    open_now = (last_open >= starts) & (last_open > last_close)
    out = np.full(n, -1.0, np.float32)
    out[open_now] = hours[open_now] - hours[last_open[open_now]]
    return out


def record_clocks(tokens: np.ndarray, offsets: np.ndarray, roles: ClockRoles) -> tuple[np.ndarray, np.ndarray]:
    """For records back to back (`offsets` bounds them): hours since each record's first event after
    each token (N,), and the stay clocks (N, 2) = [ICU, hospital] hours since the open stay began, -1
    when none is open."""
    tokens = np.asarray(tokens, np.int64)
    offsets = np.asarray(offsets, np.int64)
    lens = np.diff(offsets)
    c = np.cumsum(roles.inc_hours[tokens])
    base = np.r_[0.0, c][offsets[:-1]]
    hours = c - np.repeat(base, lens)
    starts = np.repeat(offsets[:-1], lens)
    stay = np.stack([_since_open(hours, starts, roles.icu_open[tokens], roles.icu_close[tokens]),
                     _since_open(hours, starts, roles.hosp_open[tokens], roles.hosp_close[tokens])], axis=1)
    return hours.astype(np.float32), stay


def records_holding_stays(tokens: np.ndarray, offsets: np.ndarray, roles: ClockRoles) -> np.ndarray:
    """(n, 2) bool for records back to back: does each record open an [ICU, hospital] stay?"""
    tokens = np.asarray(tokens, np.int64)
    offsets = np.asarray(offsets, np.int64)
    record = np.repeat(np.arange(offsets.size - 1), np.diff(offsets))
    held = np.zeros((offsets.size - 1, N_STAY_CLOCKS), bool)
    for k, opens in enumerate((roles.icu_open, roles.hosp_open)):
        held[record[opens[tokens]], k] = True
    return held


class RunningClock:
    """The same clocks, advanced one token per row during sampling."""

    def __init__(self, roles: ClockRoles, batch: int):
        self._inc = torch.as_tensor(roles.inc_hours, dtype=torch.float64)
        as_t = lambda a: torch.as_tensor(a, dtype=torch.bool)  # noqa: E731
        self._open = (as_t(roles.icu_open), as_t(roles.hosp_open))
        self._close = (as_t(roles.icu_close), as_t(roles.hosp_close))
        self.hours = torch.zeros(batch, dtype=torch.float64)
        self.opened_at = torch.full((batch, N_STAY_CLOCKS), -1.0, dtype=torch.float64)

    def reset_rows(self, rows) -> None:
        self.hours[rows] = 0.0
        self.opened_at[rows] = -1.0

    def keep_rows(self, rows: torch.Tensor) -> None:
        self.hours = self.hours[rows].clone()
        self.opened_at = self.opened_at[rows].clone()

    def advance(self, feed: torch.Tensor) -> None:
        self.hours = self.hours + self._inc[feed]
        for k in range(N_STAY_CLOCKS):
            col = self.opened_at[:, k]
            col = torch.where(self._open[k][feed], self.hours, col)
            self.opened_at[:, k] = torch.where(self._close[k][feed], torch.full_like(col, -1.0), col)

    def stay(self) -> torch.Tensor:
        """(B, 2) hours since the open ICU / hospital stay began, -1 when none is open."""
        return torch.where(self.opened_at >= 0, self.hours[:, None] - self.opened_at,
                           torch.full_like(self.opened_at, -1.0)).float()


# built once: stay_features runs at every sampling step
_LOG_CENTRES_T = torch.as_tensor(LOG_CENTRES, dtype=torch.float32)
_LINEAR_CENTRES_T = torch.as_tensor(LINEAR_CENTRES, dtype=torch.float32)
_FREQS_T = torch.as_tensor(2 * np.pi / PERIODS_HOURS, dtype=torch.float32)


def stay_features(stay: torch.Tensor) -> torch.Tensor:
    """(..., 2) stay clocks (-1 = closed) → (..., N_STAY_FEATURES) smooth features (zeros when closed)."""
    is_open = (stay >= 0).to(torch.float32)
    h = stay.clamp(min=0).to(torch.float32)
    u = torch.log2(1 + h)
    f_log = torch.exp(-0.5 * ((u[..., None] - _LOG_CENTRES_T) / LOG_WIDTH) ** 2)
    f_lin = torch.exp(-0.5 * ((h[..., None] - _LINEAR_CENTRES_T) / LINEAR_WIDTH) ** 2)
    ang = h[..., None] * _FREQS_T
    ramp = (h.clamp(max=2 * RAMP_HOURS) / RAMP_HOURS)[..., None]
    f = torch.cat([f_log, f_lin, torch.sin(ang), torch.cos(ang), ramp, torch.ones_like(h)[..., None]],
                  dim=-1) * is_open[..., None]
    return f.flatten(-2)
