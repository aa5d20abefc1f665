"""Temporal VAE of FLEXGEN-EHR: an LSTM (§4.2) or 1D-CNN (App. B.1) encoder over the time bins.

Input: (batch, L, in_dim) — per time step the codec's encoded temporal features and their
observed mask.  Output of the decoder: (batch, L, out_dim) codec outputs per step.

* ``encoder="lstm"``: a one-layer LSTM; the last hidden state → (mu, logvar).
* ``encoder="cnn"``: three blocks Conv1d(k=3) → BatchNorm1d → ReLU → MaxPool1d(2, ceil_mode)
  as in App. B.1 (adapted from AdaTime, Ragab et al. 2022); the pooled map is flattened → (mu, logvar).

The decoder is an LSTM fed, at each step, the latent z and a learned embedding of the step index;
a linear head maps its hidden state to the codec outputs of that step.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["TemporalVAE"]


class _CNNEncoder(nn.Module):
    def __init__(self, in_dim: int, hidden: int, steps: int):
        super().__init__()
        blocks, c_in, length = [], in_dim, steps
        for _ in range(3):
            blocks += [nn.Conv1d(c_in, hidden, kernel_size=3, padding=1), nn.BatchNorm1d(hidden), nn.ReLU(),
                       nn.MaxPool1d(2, ceil_mode=True)]
            c_in, length = hidden, -(-length // 2)
        self.net = nn.Sequential(*blocks)
        self.out_dim = hidden * length

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, L, C)
        return self.net(x.transpose(1, 2)).flatten(1)


class TemporalVAE(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, steps: int, latent_dim: int, hidden: int,
                 encoder: str = "lstm"):
        super().__init__()
        if encoder not in ("lstm", "cnn"):
            raise ValueError(f"encoder must be 'lstm' or 'cnn', got {encoder!r}")
        self.kind, self.steps, self.latent_dim = encoder, steps, latent_dim
        if encoder == "lstm":
            self.enc_rnn = nn.LSTM(in_dim, hidden, batch_first=True)
            enc_out = hidden
        else:
            self.enc_cnn = _CNNEncoder(in_dim, hidden, steps)
            enc_out = self.enc_cnn.out_dim
        self.to_latent = nn.Linear(enc_out, 2 * latent_dim)
        self.step_embed = nn.Embedding(steps, 16)
        self.init_h = nn.Linear(latent_dim, hidden)
        self.dec_rnn = nn.LSTM(latent_dim + 16, hidden, batch_first=True)
        self.head = nn.Linear(hidden, out_dim)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.kind == "lstm":
            _, (h, _) = self.enc_rnn(x)
            feats = h[-1]
        else:
            feats = self.enc_cnn(x)
        mu, logvar = self.to_latent(feats).chunk(2, dim=-1)
        return mu, logvar.clamp(-12.0, 8.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        b = z.shape[0]
        pos = self.step_embed.weight.unsqueeze(0).expand(b, -1, -1)
        inp = torch.cat([z.unsqueeze(1).expand(-1, self.steps, -1), pos], dim=-1)
        h0 = torch.tanh(self.init_h(z)).unsqueeze(0)
        out, _ = self.dec_rnn(inp, (h0, torch.zeros_like(h0)))
        return self.head(out)
