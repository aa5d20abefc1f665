"""Latent DDPM of FLEXGEN-EHR with classifier-free guidance, a DDIM sampler and latent inpainting.

* Forward process (§3): q(z_t | z_0) = N(√ᾱ_t z_0, (1 − ᾱ_t) I), ᾱ_t = Π_{i≤t} (1 − β_i), with the
  paper's T = 50 and β linear from 1e-4 to 1e-2 by default.
* Training (eq. 1): ε-prediction MSE; the label is replaced by a "null" class with probability
  `p_uncond`, so one network gives ε(z_t, y, t) and ε(z_t, ∅, t) (Ho 2022, App. A.3).
* Guidance (eq. 10): ε̂ = (1 + w) ε(z_t, y, t) − w ε(z_t, ∅, t).
* Samplers: ancestral DDPM over all T steps (posterior variance β̃_t), or DDIM (App. A.1, eq. 8)
  over `steps` evenly spaced timesteps, η = 0 by default (deterministic given the start).
* Start: with this schedule ᾱ_T ≈ 0.78, i.e. z_T still holds most of the signal and is *not*
  N(0, I).  The sampler therefore starts from the forward marginal with a moment-matched z_0:
  z_T = √ᾱ_T ẑ_0 + √(1 − ᾱ_T) ε, ẑ_0 drawn from a Gaussian fitted to the training latents of the
  requested label (conditioned on any known latent coordinates).  The caller supplies ẑ_0.
* Inpainting: coordinates marked known are replaced after every step by their forward-noised
  known value at the new noise level (and set exactly at t = 0) — the "replacement" method.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

__all__ = ["Denoiser", "Schedule", "denoiser_steps", "sample_latents", "train_denoiser"]


class Schedule:
    def __init__(self, timesteps: int = 50, beta_start: float = 1e-4, beta_end: float = 1e-2):
        self.T = int(timesteps)
        self.betas = torch.linspace(float(beta_start), float(beta_end), self.T, dtype=torch.float64)
        self.alphas = 1.0 - self.betas
        abar = torch.cumprod(self.alphas, 0)
        self.abar = torch.cat([torch.ones(1, dtype=torch.float64), abar])  # abar[0] = 1, abar[t] for t = 1..T

    def abar_at(self, t: int) -> float:
        return float(self.abar[t])


def _timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None, :]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


class Denoiser(nn.Module):
    """ε_θ(z_t, y, t): an MLP over [z_t, time embedding, label embedding]; label index n_classes = null."""

    def __init__(self, dim: int, n_classes: int, hidden: int = 256, layers: int = 3, emb: int = 64):
        super().__init__()
        self.n_classes, self.emb = n_classes, emb
        self.label_embed = nn.Embedding(n_classes + 1, emb)
        self.time_mlp = nn.Sequential(nn.Linear(emb, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.inp = nn.Linear(dim + 2 * emb, hidden)
        self.blocks = nn.ModuleList([nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden)) for _ in range(layers - 1)])
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, z: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.inp(torch.cat([z, self.time_mlp(_timestep_embedding(t, self.emb)), self.label_embed(y)], -1))
        return self.head(h)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Everything after the input layer: residual blocks and the output layer."""
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)


class _GuidedEps:
    """ε̂(x_t, y, t) of eq. 10 for one sampling run, with the per-run constant work hoisted out of the loop.

    The input layer is linear in [z, time embedding, label embedding], so it splits into
    z W_z + (time_mlp(t) W_t + b) + label_embed(y) W_l.  The label term is computed once per run, the
    time term once per step for a single row (not for every row), and z W_z once per step for the
    conditional and the unconditional pass together; only the rows that are guided get the second
    (unconditional) pass through the rest of the network.  Equal to `_guided_eps` up to float rounding
    (tested).  Used by both samplers alike.
    """

    def __init__(self, net: Denoiser, y: torch.Tensor, w: float):
        dim = net.inp.in_features - 2 * net.emb
        weight = net.inp.weight
        self.net, self.w, self.n = net, float(w), len(y)
        self.wz = weight[:, :dim].t().contiguous()
        self.wt = weight[:, dim:dim + net.emb].t().contiguous()
        self.bias = net.inp.bias
        label_terms = net.label_embed.weight @ weight[:, dim + net.emb:].t()      # (n_classes + 1, hidden)
        self.cond_term = label_terms[y]
        self.null_term = label_terms[net.n_classes]
        guided = (y != net.n_classes) & (self.w != 0.0)
        self.all_guided = bool(guided.all())
        self.guided = None if self.all_guided else torch.nonzero(guided).squeeze(1)
        if self.guided is not None and len(self.guided) == 0:
            self.guided = torch.zeros(0, dtype=torch.long)

    def __call__(self, x: torch.Tensor, t: int) -> torch.Tensor:
        net = self.net
        temb = net.time_mlp(_timestep_embedding(torch.tensor([t]), net.emb))
        zp = x @ self.wz + (temb @ self.wt + self.bias)                           # (n, hidden)
        h_cond = zp + self.cond_term
        if self.guided is not None and len(self.guided) == 0:
            return net.head(h_cond)
        h_null = (zp if self.all_guided else zp[self.guided]) + self.null_term
        both = net.head(torch.cat([h_cond, h_null]))
        cond, uncond = both[: self.n], both[self.n:]
        if self.all_guided:
            return (1.0 + self.w) * cond - self.w * uncond
        eps = cond.clone()
        eps[self.guided] = (1.0 + self.w) * cond[self.guided] - self.w * uncond
        return eps


def train_denoiser(net: Denoiser, z0: torch.Tensor, y: torch.Tensor, schedule: Schedule, *, epochs: int,
                   batch_size: int, lr: float, p_uncond: float, generator: torch.Generator) -> list[float]:
    """ε-prediction training (eq. 1) with label dropout for CFG; returns mean loss per epoch."""
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    abar = schedule.abar.float()
    n, history = len(z0), []
    net.train()
    for _ in range(int(epochs)):
        perm = torch.randperm(n, generator=generator)
        total = 0.0
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            x0, yy = z0[idx], y[idx].clone()
            t = torch.randint(1, schedule.T + 1, (len(idx),), generator=generator)
            eps = torch.randn(x0.shape, generator=generator)
            a = abar[t].unsqueeze(1)
            xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
            drop = torch.rand(len(idx), generator=generator) < p_uncond
            yy[drop] = net.n_classes
            loss = ((net(xt, t, yy) - eps) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        history.append(total / n)
    net.eval()
    return history


@torch.no_grad()
def _guided_eps(net: Denoiser, x: torch.Tensor, t: int, y: torch.Tensor, w: float) -> torch.Tensor:
    tt = torch.full((len(x),), t, dtype=torch.long)
    guided = (y != net.n_classes) & (w != 0.0)
    if not bool(guided.any()):
        return net(x, tt, y)
    null = torch.full_like(y, net.n_classes)
    both = net(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([y, null]))
    cond, uncond = both[: len(x)], both[len(x):]
    eps = (1.0 + w) * cond - w * uncond
    return torch.where(guided.unsqueeze(1), eps, cond)


def denoiser_steps(timesteps: int, sampler: str, steps: int | None = None) -> list[int]:
    """The timesteps at which the denoiser is evaluated (one guided network call each)."""
    if sampler == "ddpm":
        return list(range(int(timesteps), 0, -1))
    if sampler == "ddim":
        k = max(1, min(int(steps or timesteps), int(timesteps)))
        return sorted({int(round(v)) for v in np.linspace(int(timesteps), 1, k)}, reverse=True)
    raise ValueError(f"sampler must be 'ddpm' or 'ddim', got {sampler!r}")


@torch.no_grad()
def sample_latents(net: Denoiser, schedule: Schedule, z0_start: torch.Tensor, y: torch.Tensor, *,
                   generator: torch.Generator, guidance_weight: float = 1.0, sampler: str = "ddpm",
                   steps: int | None = None, eta: float = 0.0, known: torch.Tensor | None = None,
                   known_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Reverse process from z_T = √ᾱ_T z0_start + √(1 − ᾱ_T) ε to z_0 (see module docstring)."""
    T = schedule.T
    abar = schedule.abar
    x = math.sqrt(abar[T]) * z0_start + math.sqrt(1 - abar[T]) * torch.randn(z0_start.shape, generator=generator)
    times = denoiser_steps(T, sampler, steps)
    prevs = [t - 1 for t in times] if sampler == "ddpm" else times[1:] + [0]
    has_known = known is not None and known_mask is not None and bool(known_mask.any())
    guided_eps = _GuidedEps(net, y, guidance_weight)
    for t, tp in zip(times, prevs):
        a_t, a_p = float(abar[t]), float(abar[tp])
        eps = guided_eps(x, t)
        x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
        if sampler == "ddpm":
            beta = float(schedule.betas[t - 1])
            c0 = beta * math.sqrt(a_p) / (1 - a_t)
            ct = (1 - a_p) * math.sqrt(1 - beta) / (1 - a_t)
            x = c0 * x0 + ct * x
            if tp > 0:
                var = beta * (1 - a_p) / (1 - a_t)
                x = x + math.sqrt(var) * torch.randn(x.shape, generator=generator)
        else:
            sigma = eta * math.sqrt(max((1 - a_p) / (1 - a_t) * (1 - a_t / a_p), 0.0))
            x = math.sqrt(a_p) * x0 + math.sqrt(max(1 - a_p - sigma**2, 0.0)) * eps
            if sigma > 0 and tp > 0:
                x = x + sigma * torch.randn(x.shape, generator=generator)
        if has_known:
            noisy = math.sqrt(a_p) * known + math.sqrt(1 - a_p) * torch.randn(known.shape, generator=generator)
            x = torch.where(known_mask, noisy if tp > 0 else known, x)
    return x
