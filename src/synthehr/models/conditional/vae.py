"""Vanilla VAE (Kingma & Welling) over the mixed-type encoding: the InterGenEHR paper's baseline.

Encoder q(z | x̃, m): an MLP on the row with untrusted cells zeroed (x̃) plus the per-column mask
m of cells it may trust; output: diagonal Gaussian. Decoder p(x | z): an MLP emitting the
per-feature likelihood parameters of `MixedCodec`. Prior N(0, I) in training; `sample` draws z
from a mixture fitted to the aggregate posterior afterwards (`prior`, see `encoding`). Loss = −ELBO per row:
−Σ_j present_j · log p(x_j | z) + KL(q || N(0, I)), averaged over the batch.

Conditioning "by encoding the masked input, as the paper does": x̃ holds only the observed
cells (the others at 0 = the standardized mean / an empty one-hot), the mask says which they
are, z ~ q(z | x̃, m) is decoded and observed cells are kept. A plain VAE never sees a masked
row during training, so its encoder would be asked something out of distribution. Masking
augmentation: each batch, a fraction `mask_augment` (default 0.5) of the rows is shown to the
encoder with a random subset of its cells hidden (`random_observed_mask`, `mask_rate`), while
the decoder is still asked to reconstruct every present cell of those rows. The other rows are
plain VAE rows, so unconditional sampling is unaffected. This is a denoising-style VAE, not an
arbitrary-conditioning model: nothing trains q(z | x_o) to match the posterior it stands in for
(the gap that VAEAC and Posterior Matching close).

Defaults: `mask_augment=0.5`, `mask_rate=None`; the shared ones (`latent_dim`, `hidden`, `epochs`,
`transform`, …) are `encoding.TorchGenerator`'s, see "Defaults and speed" in `encoding`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from synthehr.models.base import register
from synthehr.models.conditional.encoding import (
    TorchGenerator,
    kl_diag_normal,
    mlp,
    random_observed_mask,
    reparameterize,
)

__all__ = ["VAE"]


@register
class VAE(TorchGenerator):
    model_type = "vae"

    def __init__(self, *, mask_augment: float = 0.5, **common: Any):
        if not 0.0 <= float(mask_augment) <= 1.0:
            raise ValueError(f"mask_augment must be in [0, 1], got {mask_augment!r}")
        super().__init__(mask_augment=float(mask_augment), **common)

    def _build_nets(self) -> dict[str, nn.Module]:
        c = self.codec_
        return {"encoder": mlp(c.in_dim + c.n_columns, self.hidden, 2 * self.latent_dim),
                "decoder": mlp(self.latent_dim, self.hidden[::-1], c.out_dim)}

    def _encode(self, x: torch.Tensor, observed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._gaussian_net("encoder", x, observed)

    def _loss(self, x: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        masked = random_observed_mask(present, self.mask_rate)
        augment = torch.rand(len(x), 1) < self.mask_augment
        seen = torch.where(augment, masked, present)
        mu, lv = self._encode(x, seen)
        z = reparameterize(mu, lv)
        ll = self.codec_.log_lik(self.nets_["decoder"](z), x)
        return (self._reconstruction(ll, present) + kl_diag_normal(mu, lv)).mean()

    def _prior_latent(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.latent_dim)

    def _posterior(self, x: torch.Tensor, present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._encode(x, present)

    def _conditional_latent(self, x: torch.Tensor, observed: torch.Tensor, k: int) -> torch.Tensor:
        mu, lv = self._encode(x, observed)
        return reparameterize(mu, lv, k)

    def _decode_params(self, z: torch.Tensor, x: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
        return self.nets_["decoder"](z)
