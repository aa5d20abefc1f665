"""Posterior Matching VAE (Strauss & Oliva, 2022), as used by InterGenEHR (§II-B).

A plain VAE — encoder q_ψ(z | x), decoder p(x | z), prior N(0, I), mixed-type likelihoods of
`MixedCodec` — plus a posterior-matching network q_θ(z | x_o, b) that learns the partially
observed posterior p(z | x_o) = E_{x_u ~ p(·|x_o)} q_ψ(z | x_o, x_u). q_θ must be able to
represent multimodal posteriors (a few observed features are often consistent with several
latent regions), so it outputs a mixture of `n_components` (default 10) diagonal Gaussians.

Training, jointly, per batch:
    loss = −ELBO(x) + L_PM,   L_PM = −log q_θ(z | x_o, b),  z ~ q_ψ(z | x)  (one sample)
where o is a fresh random observed-subset of each row (`random_observed_mask`: per-row
unobserved rate r ~ U(0, 1) by default, or a fixed `mask_rate`). z is the ELBO's own
reparameterized sample, *detached* in L_PM: posterior matching fits q_θ to the VAE's encoder
and must not pull the VAE (encoder or decoder) toward whatever q_θ finds easy to match — so
L_PM's gradient reaches θ only, and the VAE is exactly the VAE it would be alone.
Training-data missing cells: the encoder sees only present cells (plus the present-mask), the
ELBO scores only present cells, and o ⊂ present.

Conditioning: z ~ q_θ(z | x_o, b), x ~ p(x | z), observed cells kept. Unconditional sampling:
z from a mixture fitted to the encoder's aggregate posterior (`prior="aggregate"`, see
`encoding`; `prior="model"`: N(0, I)). Defaults: `n_components=10`; the shared ones (`latent_dim`, `hidden`, `epochs`,
`transform`, …) are `encoding.TorchGenerator`'s.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from synthehr.models.base import register
from synthehr.models.conditional.encoding import (
    LATENT_MIN_LOG_VAR,
    TorchGenerator,
    gaussian_log_prob,
    kl_diag_normal,
    mlp,
    random_observed_mask,
    reparameterize,
    soft_floor,
)

__all__ = ["PosteriorMatchingVAE"]


@register
class PosteriorMatchingVAE(TorchGenerator):
    model_type = "pmvae"

    def __init__(self, *, n_components: int = 10, **common: Any):
        if isinstance(n_components, bool) or int(n_components) != n_components or int(n_components) < 1:
            raise ValueError(f"n_components must be a positive integer, got {n_components!r}")
        super().__init__(n_components=int(n_components), **common)

    def _build_nets(self) -> dict[str, nn.Module]:
        c, L, K = self.codec_, self.latent_dim, self.n_components
        return {"encoder": mlp(c.in_dim + c.n_columns, self.hidden, 2 * L),
                "decoder": mlp(L, self.hidden[::-1], c.out_dim),
                "matching": mlp(c.in_dim + c.n_columns, self.hidden, K * (1 + 2 * L))}

    # ------------------------------------------------------------ q_θ(z | x_o, b)
    def _mixture(self, x: torch.Tensor, observed: torch.Tensor):
        """(log weights (n, K), means (n, K, L), log-variances (n, K, L))."""
        K, L = self.n_components, self.latent_dim
        out = self.nets_["matching"](self._observed_input(x, observed))
        logits, rest = out[..., :K], out[..., K:].reshape(*out.shape[:-1], K, 2 * L)
        mu, raw = rest.chunk(2, dim=-1)
        return F.log_softmax(logits, dim=-1), mu, soft_floor(raw, LATENT_MIN_LOG_VAR)

    @staticmethod
    def _mixture_log_prob(z: torch.Tensor, log_w: torch.Tensor, mu: torch.Tensor, lv: torch.Tensor) -> torch.Tensor:
        """log Σ_k w_k N(z; mu_k, diag e^lv_k) for z (n, L)."""
        comp = gaussian_log_prob(z.unsqueeze(-2), mu, lv).sum(-1)  # (n, K)
        return torch.logsumexp(log_w + comp, dim=-1)

    # ------------------------------------------------------------------- training
    def _loss(self, x: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        mu, lv = self._gaussian_net("encoder", x, present)
        z = reparameterize(mu, lv)
        ll = self.codec_.log_lik(self.nets_["decoder"](z), x)
        neg_elbo = self._reconstruction(ll, present) + kl_diag_normal(mu, lv)
        observed = random_observed_mask(present, self.mask_rate)
        return (neg_elbo + self._matching_loss(z, x, observed)).mean()

    def _matching_loss(self, z: torch.Tensor, x: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
        """L_PM per row: −log q_θ(z | x_o, b), z detached so only θ learns from it."""
        return -self._mixture_log_prob(z.detach(), *self._mixture(x, observed))

    # ----------------------------------------------------------------- generation
    def _prior_latent(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.latent_dim)

    def _posterior(self, x: torch.Tensor, present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._gaussian_net("encoder", x, present)

    def _conditional_latent(self, x: torch.Tensor, observed: torch.Tensor, k: int) -> torch.Tensor:
        """k draws per row from the mixture: Gumbel-max picks components, one batched Gaussian draw."""
        log_w, mu, lv = self._mixture(x, observed)  # (n, K), (n, K, L)
        u = torch.rand((k, *log_w.shape)).clamp_min(1e-12)
        comp = torch.argmax(log_w - torch.log(-torch.log(u)), dim=-1)  # (k, n)
        idx = comp[..., None, None].expand(k, x.shape[0], 1, self.latent_dim)
        mu_k = torch.gather(mu.expand(k, *mu.shape), 2, idx).squeeze(2)
        lv_k = torch.gather(lv.expand(k, *lv.shape), 2, idx).squeeze(2)
        return reparameterize(mu_k, lv_k)

    def _decode_params(self, z: torch.Tensor, x: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
        return self.nets_["decoder"](z)

    # ------------------------------------------------------------------ diagnostics
    def matching_log_prob(self, z: torch.Tensor, x: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
        """log q_θ(z | x_o, b) for encoded rows (exposed for tests and diagnostics)."""
        with torch.no_grad():
            return self._mixture_log_prob(z, *self._mixture(x, observed))

