"""PyTorch generators for arbitrary conditioning: VAE baseline, VAEAC and Posterior Matching VAE.

All three share `encoding.MixedCodec` (mixed-type encoding and likelihoods) and
`encoding.TorchGenerator` (training loop, generation, Monte-Carlo conditional log-likelihood,
safetensors state). Importing this package registers "vae", "vaeac" and "pmvae".
"""

from synthehr.models.conditional.encoding import MixedCodec, TorchGenerator
from synthehr.models.conditional.pmvae import PosteriorMatchingVAE
from synthehr.models.conditional.vae import VAE
from synthehr.models.conditional.vaeac import VAEAC

__all__ = ["MixedCodec", "PosteriorMatchingVAE", "TorchGenerator", "VAE", "VAEAC"]
