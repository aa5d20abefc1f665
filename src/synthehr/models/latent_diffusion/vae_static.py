"""Mixed-type column codec and the static MLP-VAE of FLEXGEN-EHR (§4.2: "an MLP encoder for static").

`ColumnCodec` turns a list of column specs into a float matrix and back:

* continuous: optional log1p for skewed non-negative columns, then standardization
  (mean 0, std 1); one encoded slot; decoder output is the value itself (Gaussian, unit variance
  during training; `resid_std` = per-column reconstruction RMSE is kept for likelihood scoring);
* binary: one slot, 0/1; decoder output is a logit (Bernoulli);
* categorical: one-hot block of K slots; decoder output is K logits (categorical).

Missing cells (NaN) are encoded as 0 (the standardized mean / an all-zero one-hot) and carry
mask 0, so they take no part in the reconstruction loss.  The same codec serves the temporal VAE
(one row per time step, columns = temporal features).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

from synthehr.models.schema import ColumnSpec

__all__ = ["ColumnCodec", "StaticVAE", "kl_divergence", "mlp"]


@dataclass
class _Block:
    spec: ColumnSpec
    start: int
    width: int


class ColumnCodec:
    """Encode/decode a fixed list of columns (see module docstring).  Fitted state is numeric only."""

    def __init__(self, specs: list[ColumnSpec]):
        self.specs = list(specs)
        self.blocks: list[_Block] = []
        start = 0
        for s in self.specs:
            w = len(s.categories) if s.kind == "categorical" else 1
            self.blocks.append(_Block(s, start, w))
            start += w
        self.width = start
        n = len(self.specs)
        self.loc = np.zeros(n)
        self.scale = np.ones(n)
        self.log = np.zeros(n)          # 1 = log1p transform before standardizing
        self.resid_std = np.ones(n)     # per-column reconstruction RMSE (standardized units)

    # ----------------------------------------------------------------- fitting
    def fit(self, values: list[np.ndarray], log_skewed: bool = True) -> "ColumnCodec":
        """`values[c]`: the raw numeric codes of column c (float; categorical = level index; NaN = missing)."""
        for c, (b, x) in enumerate(zip(self.blocks, values)):
            if b.spec.kind != "continuous":
                continue
            x = x[np.isfinite(x)]
            if len(x) == 0:
                continue
            if log_skewed and len(x) > 8 and x.min() >= 0:
                sd = x.std()
                skew = float(((x - x.mean()) ** 3).mean() / sd**3) if sd > 0 else 0.0
                if skew > 2.0:
                    self.log[c] = 1.0
                    x = np.log1p(x)
            self.loc[c] = float(x.mean())
            sd = float(x.std())
            self.scale[c] = sd if sd > 1e-12 else 1.0
        return self

    # ---------------------------------------------------------------- encoding
    @staticmethod
    def raw_codes(series: pd.Series, spec: ColumnSpec) -> np.ndarray:
        """A column as float codes: numbers, 0/1, or the level index for categoricals; NaN = missing."""
        if spec.kind == "categorical":
            index = {str(c): i for i, c in enumerate(spec.categories)}
            out = np.full(len(series), np.nan)
            present = series.notna().to_numpy()
            out[present] = [index[str(v)] for v in series[present]]
            return out
        return pd.to_numeric(series, errors="coerce").to_numpy(dtype=float)

    def encode(self, values: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(x (n, width) float32, mask (n, n_columns) float32) from per-column raw codes."""
        n = len(values[0]) if values else 0
        x = np.zeros((n, self.width), dtype=np.float32)
        mask = np.zeros((n, len(self.specs)), dtype=np.float32)
        for c, (b, v) in enumerate(zip(self.blocks, values)):
            ok = np.isfinite(v)
            mask[:, c] = ok
            if b.spec.kind == "continuous":
                t = np.log1p(np.clip(v, 0, None)) if self.log[c] else v
                x[ok, b.start] = ((t[ok] - self.loc[c]) / self.scale[c]).astype(np.float32)
            elif b.spec.kind == "binary":
                x[ok, b.start] = v[ok]
            else:
                rows = np.flatnonzero(ok)
                x[rows, b.start + v[ok].astype(int)] = 1.0
        return x, mask

    # ------------------------------------------------------------------ losses
    def loss(self, out: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per-row masked negative log-likelihood (continuous as unit-variance Gaussian, up to constants)."""
        total = out.new_zeros(out.shape[:-1])
        for c, b in enumerate(self.blocks):
            m = mask[..., c]
            o, t = out[..., b.start:b.start + b.width], x[..., b.start:b.start + b.width]
            if b.spec.kind == "continuous":
                nll = 0.5 * (o[..., 0] - t[..., 0]) ** 2
            elif b.spec.kind == "binary":
                nll = F.binary_cross_entropy_with_logits(o[..., 0], t[..., 0], reduction="none")
            else:
                nll = -(F.log_softmax(o, dim=-1) * t).sum(-1)
            total = total + m * nll
        return total

    def loglik(self, out: np.ndarray, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Per-row log-likelihood of the observed cells; continuous cells use `resid_std` as the noise."""
        total = np.zeros(out.shape[:-1])
        for c, b in enumerate(self.blocks):
            m = mask[..., c] > 0
            if not m.any():
                continue
            o, t = out[..., b.start:b.start + b.width], x[..., b.start:b.start + b.width]
            if b.spec.kind == "continuous":
                s = max(float(self.resid_std[c]), 0.05)
                ll = -0.5 * ((o[..., 0] - t[..., 0]) / s) ** 2 - np.log(s)
            elif b.spec.kind == "binary":
                p = 1.0 / (1.0 + np.exp(-np.clip(o[..., 0], -30, 30)))
                ll = np.where(t[..., 0] > 0.5, np.log(p + 1e-9), np.log(1 - p + 1e-9))
            else:
                lo = o - o.max(-1, keepdims=True)
                lsm = lo - np.log(np.exp(lo).sum(-1, keepdims=True))
                ll = (lsm * t).sum(-1)
            total += np.where(m, ll, 0.0)
        return total

    def set_residuals(self, out: np.ndarray, x: np.ndarray, mask: np.ndarray) -> None:
        """Store the per-column reconstruction RMSE of continuous columns (standardized units)."""
        flat_o, flat_x = out.reshape(-1, self.width), x.reshape(-1, self.width)
        flat_m = mask.reshape(-1, len(self.specs))
        for c, b in enumerate(self.blocks):
            if b.spec.kind != "continuous":
                continue
            m = flat_m[:, c] > 0
            if m.any():
                self.resid_std[c] = float(np.sqrt(np.mean((flat_o[m, b.start] - flat_x[m, b.start]) ** 2)))

    # ---------------------------------------------------------------- decoding
    def decode(self, out: np.ndarray, rng: np.random.Generator, stochastic: bool = True,
               noise: float = 0.0) -> list[np.ndarray]:
        """Decoder outputs (n, width) → per-column raw codes (continuous values, 0/1, level index).

        Continuous cells are the decoder's mean plus, with `noise` > 0, a Gaussian draw of
        `noise` × `resid_std` (the reconstruction RMSE, in the standardized — possibly log — space);
        binary and categorical cells are drawn from the decoder's probabilities (`stochastic`) or set
        to the most likely level.
        """
        cols = []
        for c, b in enumerate(self.blocks):
            o = out[:, b.start:b.start + b.width]
            if b.spec.kind == "continuous":
                mean = o[:, 0].astype(float)
                if noise > 0:
                    mean = mean + float(noise) * float(self.resid_std[c]) * rng.standard_normal(len(mean))
                v = mean * self.scale[c] + self.loc[c]
                cols.append(np.expm1(np.clip(v, None, 50.0)) if self.log[c] else v)
            elif b.spec.kind == "binary":
                p = 1.0 / (1.0 + np.exp(-np.clip(o[:, 0].astype(float), -30, 30)))
                cols.append((rng.random(len(p)) < p).astype(float) if stochastic else (p > 0.5).astype(float))
            else:
                lo = o.astype(float) - o.max(1, keepdims=True)
                pr = np.exp(lo)
                pr /= pr.sum(1, keepdims=True)
                if stochastic:
                    u = rng.random((len(pr), 1))
                    idx = np.minimum((pr.cumsum(1) < u).sum(1), pr.shape[1] - 1)
                else:
                    idx = pr.argmax(1)
                cols.append(idx.astype(float))
        return cols

    # ------------------------------------------------------------------- state
    def state(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}.loc": self.loc, f"{prefix}.scale": self.scale, f"{prefix}.log": self.log,
                f"{prefix}.resid_std": self.resid_std}

    def load_state(self, tensors: dict[str, np.ndarray], prefix: str) -> None:
        for name in ("loc", "scale", "log", "resid_std"):
            setattr(self, name, np.asarray(tensors[f"{prefix}.{name}"], dtype=float).copy())


def mlp(sizes: list[int], act: type[nn.Module] = nn.SiLU) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-2], sizes[1:-1]):
        layers += [nn.Linear(a, b), act()]
    layers.append(nn.Linear(sizes[-2], sizes[-1]))
    return nn.Sequential(*layers)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per row."""
    return 0.5 * (mu**2 + logvar.exp() - 1.0 - logvar).sum(-1)


class StaticVAE(nn.Module):
    """MLP encoder → (mu, logvar) of the static latent z^S; MLP decoder → codec outputs.

    The encoder sees the encoded values and the per-column observed mask side by side
    (in_dim = codec width + number of columns), so a missing cell is not mistaken for a mean value.
    """

    def __init__(self, in_dim: int, out_dim: int, latent_dim: int, hidden: list[int]):
        super().__init__()
        self.encoder = mlp([in_dim, *hidden, 2 * latent_dim])
        self.decoder = mlp([latent_dim, *reversed(hidden), out_dim])
        self.latent_dim = latent_dim

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        mu, logvar = h.chunk(2, dim=-1)
        return mu, logvar.clamp(-12.0, 8.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)
