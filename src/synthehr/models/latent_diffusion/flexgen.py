"""FLEXGEN-EHR (He et al.): latent diffusion over static + temporal EHR that trains with a missing modality.

Record = one row of a stay table (`stay_table`): static columns, temporal columns
``f"{feature}__t{k}"`` and the outcome label.  Pipeline (§4, Algorithm 1):

1. **Dual VAEs.**  An MLP-VAE over the static columns (mixed types: continuous, binary, one-hot
   categorical) and an LSTM-VAE (or the 1D-CNN encoder of App. B.1, ``encoder="cnn"``) over the
   L × d temporal grid.  Each is trained on the records that *have* its modality, so a
   static-only or temporal-only record still trains its own VAE.  With ``vae_epoch_scale``
   (default True) a VAE whose modality only a share f of the records carry runs vae_epochs / f
   epochs, i.e. as many updates as on a complete table (a fixed epoch count under-trained them:
   see `alignment` for the measurement).  Cells missing inside a present
   modality are masked out of the loss; with probability `encoder_dropout` a training row also
   hides a random share (≤ 50 %) of its cells from the encoder, so encoders cope with the partly
   observed records that `condition`/`impute` feed them.
2. **Alignment (§4.3).**  Posterior means z^T, z^S.  For records missing a modality the other
   embedding is imputed: an entropic Gromov–Wasserstein coupling (POT) between the two embedding
   spaces with the paper's label-aware loss, then least-squares maps A (T → S) and B (S → T) fitted
   on the coupling's barycentric pseudo-pairs plus the records that hold both modalities, each of
   those exact pairs weighing ``gw_pair_weight`` (default 10) pseudo-pairs; with ``gw_label_map``
   (default True) the maps also take the one-hot label, so the imputed embedding follows the
   record's outcome.  The imputed embedding is then the mean partner of ``gw_donors`` (default 5)
   same-label complete records whose mapped predictions are nearest to the record's own
   (predictive mean matching: the map is the matching metric); ``gw_donors=0`` uses A z itself.
   With ``impute_noise=True`` one donor is drawn instead of the mean (or, with ``gw_donors=0``,
   a draw of the per-class residual is added: stochastic regression imputation); the default
   False measured better downstream (see `alignment` for the measurements behind every choice).
   ``imputation="knn"`` uses the mean partner of the k nearest complete records instead (the §5.5
   comparison, in the observed modality's embedding space).
3. **Latent DDPM.**  Fused z = [z^T; z^S], standardized per dimension; DDPM with T = 50 and β
   linear 1e-4 → 1e-2 (the paper's values), ε-prediction, label dropout `p_uncond` for
   classifier-free guidance with weight `guidance_weight`.  Sampling: ancestral DDPM over all T
   steps or DDIM with `ddim_steps` (``sampler``).  With this short schedule ᾱ_T ≈ 0.78, so the
   reverse process starts from the forward marginal of a label-specific Gaussian fitted to the
   training latents (documented in `diffusion`), not from N(0, I).
4. **Decode** z^T → temporal grid, z^S → static columns.  Continuous cells are the decoder mean
   plus Gaussian noise of `decoder_noise` × the column's reconstruction RMSE (default 1.0: a draw
   from the decoder's Gaussian with the residual sd fitted on the training stays; the mean alone is
   smoother than the data).  The noise is independent across cells, so it restores the marginal
   spread, not the within-stay autocorrelation of the residuals; binary / categorical cells are
   drawn from the decoder's probabilities.

Deviation from Algorithm 1: its loop alternates alignment, diffusion and encoder updates every
epoch ("train encoders and decoders based on G(z)").  Here the VAEs are trained first and frozen,
then aligned once, then the diffusion model is trained — the usual latent-diffusion recipe
(Rombach et al.); with frozen encoders the alternation reduces to one pass.

Generation:
* `sample(n)`: labels drawn from the training label frequencies, then label-guided diffusion; the
  label column holds the label each record was generated for.
* `condition({label: 1}, n=500)`: 500 records generated with guidance towards label 1.
* Conditioning on other cells (`condition` / `impute`) — an approximation, stated plainly:
  - a modality with at least `condition_known_fraction` of its cells observed is *encoded* (the
    mask-aware encoder's posterior mean) and held fixed; the other modality's latent is generated
    by latent inpainting (replacement) under guidance, starting from the label Gaussian
    conditioned on the known latent.  Its unobserved cells are decoded from that fixed latent, so
    continuous ones are the decoder's point reconstruction (plus `decoder_noise`; they vary between
    draws only by that noise);
  - observed cells of a less-observed modality are honoured by sampling-importance-resampling:
    `condition_candidates` candidates per row are generated and one is drawn with probability
    ∝ the decoder likelihood of the observed cells (continuous noise = the VAE's reconstruction
    RMSE).  With many observed cells and few candidates this is close to "best of K";
  - an unobserved label is drawn from a logistic model p(y | known latents) fitted on the
    training latents (or the label prior when no modality is known), then reweighted by SIR;
  - whatever the model produces, the base class puts every observed cell back exactly.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from synthehr.errors import DataError, ModelFileError
from synthehr.models.base import Generator, register
from synthehr.models.latent_diffusion.alignment import (barycentric_projection, fit_affine_map, gw_coupling,
                                                       knn_impute, label_design, pmm_impute, residual_noise)
from synthehr.models.latent_diffusion.diffusion import (Denoiser, Schedule, denoiser_steps, sample_latents,
                                                       train_denoiser)
from synthehr.models.latent_diffusion.stay_table import modality_columns, parse_temporal, temporal_name
from synthehr.models.latent_diffusion.vae_static import ColumnCodec, StaticVAE, kl_divergence
from synthehr.models.latent_diffusion.vae_temporal import TemporalVAE
from synthehr.models.schema import ColumnSpec

__all__ = ["FlexGenEHR"]

_SAMPLERS = ("ddpm", "ddim")
# Chosen on a 3000/1000 split of PhysioNet 2012 set-a (benchmarks/results/flexgen-physionet2012.md): the
# decoder mean is smoother than the data (decoding the encoder means of the training stays already gives a
# kernel MMD of 0.012); 1.0 = draw continuous cells from the decoder's Gaussian with the fitted residual sd.
DEFAULT_DECODER_NOISE = 1.0
_IMPUTATIONS = ("gw", "knn")


def _int(name: str, v: Any, lo: int = 1) -> int:
    if isinstance(v, bool) or int(v) != v or int(v) < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    return int(v)


@contextmanager
def _torch_threads(n: int):
    """Run with `n` intra-op threads (0 = leave torch's setting); small nets on a shared CPU run
    much faster on one thread than on several contended ones.  The previous setting is restored."""
    before = torch.get_num_threads()
    if n > 0 and n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def _levels(spec: ColumnSpec, codes: np.ndarray) -> pd.Series:
    levels = np.empty(len(spec.categories), dtype=object)
    levels[:] = list(spec.categories)
    return pd.Series(levels[codes.astype(int)]).infer_objects()


@register
class FlexGenEHR(Generator):
    """FLEXGEN-EHR latent diffusion (see the module docstring for the method and its approximations).

    Hyper-parameters:
      label                     outcome column for guidance; None, or a name not in the table → unconditional
      static_latent / temporal_latent, static_hidden / temporal_hidden   VAE sizes
      encoder                   "lstm" (§4.2) or "cnn" (App. B.1) temporal encoder
      vae_epochs, kl_weight, encoder_dropout, batch_size, lr              VAE training (Adam)
      diffusion_hidden / diffusion_layers / diffusion_epochs               denoiser MLP and its training
      timesteps, beta_start, beta_end   DDPM schedule (paper: 50, 1e-4, 1e-2)
      p_uncond, guidance_weight  classifier-free guidance (label dropout, w)
      sampler, ddim_steps, ddim_eta      "ddpm" (all T steps) or "ddim"; `use_sampler` switches after fit
      imputation                 "gw" (entropic GW + least squares, §4.3) or "knn" for missing modalities
      gw_epsilon, gw_max_points, gw_label_aware, knn_k, impute_noise       alignment details
      gw_pair_weight             least-squares weight of a record with both modalities relative to a GW
                                 pseudo-pair (default 10; 1 = the old equal weighting)
      gw_label_map               maps take [z, onehot(label)] and the imputation noise is per label class
                                 (default True; False = the old label-blind affine map)
      gw_donors                  k > 0 (default 5): predictive mean matching, the mean partner embedding of the
                                 k same-label complete records whose mapped prediction is nearest (one of them
                                 at random with impute_noise; `alignment.pmm_impute`); 0: the map's output
      impute_noise               default False: donor mean / map output; True: a random donor, or with
                                 gw_donors=0 map output + per-class residual draw (the old default was True
                                 with gw_donors=0)
      vae_epoch_scale            scale each VAE's epochs by (rows / rows with its modality), default True
      condition_candidates, condition_known_fraction                       conditioning (module docstring)
      log_skewed                 log1p skewed non-negative continuous columns before standardizing
      decoder_noise              continuous cells = decoder mean + decoder_noise × (per-column reconstruction
                                 RMSE) × N(0, 1) when generating; 0 = the decoder mean (see module docstring)
      threads                    torch intra-op threads while fitting/sampling (0 = leave as is)
      seed                       training seed; sampling is seeded by `sample(..., seed=)`
    """

    model_type = "flexgen"

    def __init__(self, label: str | None = "in_hospital_mortality", static_latent: int = 8,
                 temporal_latent: int = 16, static_hidden: Sequence[int] = (128, 128), temporal_hidden: int = 64,
                 encoder: str = "lstm", vae_epochs: int = 60, kl_weight: float = 0.1,
                 encoder_dropout: float = 0.25, batch_size: int = 128, lr: float = 1e-3,
                 diffusion_hidden: int = 256, diffusion_layers: int = 3, diffusion_epochs: int = 200,
                 timesteps: int = 50, beta_start: float = 1e-4, beta_end: float = 1e-2, p_uncond: float = 0.1,
                 guidance_weight: float = 1.0, sampler: str = "ddpm", ddim_steps: int = 10, ddim_eta: float = 0.0,
                 imputation: str = "gw", gw_epsilon: float = 0.005, gw_max_points: int = 500,
                 gw_label_aware: bool = True, knn_k: int = 5, impute_noise: bool = False,
                 gw_pair_weight: float = 10.0, gw_label_map: bool = True, gw_donors: int = 5,
                 vae_epoch_scale: bool = True,
                 condition_candidates: int = 32, condition_known_fraction: float = 0.5, log_skewed: bool = True,
                 decoder_noise: float = DEFAULT_DECODER_NOISE, threads: int = 1, seed: int = 0):
        static_hidden = [_int("static_hidden sizes", h) for h in static_hidden]
        if encoder not in ("lstm", "cnn"):
            raise ValueError(f"encoder must be 'lstm' or 'cnn', got {encoder!r}")
        if sampler not in _SAMPLERS:
            raise ValueError(f"sampler must be one of {_SAMPLERS}, got {sampler!r}")
        if imputation not in _IMPUTATIONS:
            raise ValueError(f"imputation must be one of {_IMPUTATIONS}, got {imputation!r}")
        if not 0.0 < float(beta_start) < float(beta_end) < 1.0:
            raise ValueError(f"need 0 < beta_start < beta_end < 1, got {beta_start}, {beta_end}")
        for name, v in (("kl_weight", kl_weight), ("guidance_weight", guidance_weight), ("gw_epsilon", gw_epsilon),
                        ("gw_pair_weight", gw_pair_weight),
                        ("lr", lr), ("ddim_eta", ddim_eta), ("decoder_noise", decoder_noise)):
            if not float(v) >= 0.0:
                raise ValueError(f"{name} must be non-negative, got {v!r}")
        for name, v in (("p_uncond", p_uncond), ("encoder_dropout", encoder_dropout),
                        ("condition_known_fraction", condition_known_fraction)):
            if not 0.0 <= float(v) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v!r}")
        hp = dict(label=label, static_latent=_int("static_latent", static_latent),
                  temporal_latent=_int("temporal_latent", temporal_latent), static_hidden=static_hidden,
                  temporal_hidden=_int("temporal_hidden", temporal_hidden), encoder=encoder,
                  vae_epochs=_int("vae_epochs", vae_epochs, 0), kl_weight=float(kl_weight),
                  encoder_dropout=float(encoder_dropout), batch_size=_int("batch_size", batch_size), lr=float(lr),
                  diffusion_hidden=_int("diffusion_hidden", diffusion_hidden),
                  diffusion_layers=_int("diffusion_layers", diffusion_layers),
                  diffusion_epochs=_int("diffusion_epochs", diffusion_epochs, 0),
                  timesteps=_int("timesteps", timesteps), beta_start=float(beta_start), beta_end=float(beta_end),
                  p_uncond=float(p_uncond), guidance_weight=float(guidance_weight), sampler=sampler,
                  ddim_steps=_int("ddim_steps", ddim_steps), ddim_eta=float(ddim_eta), imputation=imputation,
                  gw_epsilon=float(gw_epsilon), gw_max_points=_int("gw_max_points", gw_max_points, 2),
                  gw_label_aware=bool(gw_label_aware), knn_k=_int("knn_k", knn_k), impute_noise=bool(impute_noise),
                  gw_pair_weight=float(gw_pair_weight), gw_label_map=bool(gw_label_map),
                  gw_donors=_int("gw_donors", gw_donors, 0), vae_epoch_scale=bool(vae_epoch_scale),
                  condition_candidates=_int("condition_candidates", condition_candidates),
                  condition_known_fraction=float(condition_known_fraction), log_skewed=bool(log_skewed),
                  decoder_noise=float(decoder_noise), threads=_int("threads", threads, 0), seed=_int("seed", seed, 0))
        super().__init__(**hp)
        for k, v in hp.items():
            setattr(self, k, v)
        self.history_: dict[str, list[float]] = {}
        self.info_: dict[str, Any] = {}

    # ------------------------------------------------------------------ sampler switch
    def use_sampler(self, sampler: str, steps: int | None = None) -> "FlexGenEHR":
        """Switch the sampler of a fitted model in place ("ddpm" or "ddim" with `steps`); returns self."""
        if sampler not in _SAMPLERS:
            raise ValueError(f"sampler must be one of {_SAMPLERS}, got {sampler!r}")
        self.sampler = self.hyperparameters["sampler"] = sampler
        if steps is not None:
            self.ddim_steps = self.hyperparameters["ddim_steps"] = _int("ddim_steps", steps)
        return self

    # ------------------------------------------------------------------ layout
    def _layout(self) -> None:
        """Column roles from the schema: static specs, temporal features × steps, label."""
        schema = self.schema_
        label = self.label if (self.label is not None and self.label in schema) else None
        if label is not None and schema[label].kind == "continuous":
            raise DataError("the label must be a binary or categorical column", column=label)
        static, temporal = modality_columns(schema.names, label)
        if not temporal:
            raise DataError("flexgen models one row per stay with temporal columns named FEATURE__tK "
                            "(build the table with synthehr.models.latent_diffusion.stay_table); none found")
        if not static:
            raise DataError("flexgen needs at least one static column beside the FEATURE__tK columns")
        features: list[str] = []
        first: dict[str, ColumnSpec] = {}
        steps = 0
        for c in temporal:
            f, k = parse_temporal(c)
            if f not in first:
                features.append(f)
                first[f] = schema[c]
            elif schema[c].kind != first[f].kind or tuple(schema[c].categories) != tuple(first[f].categories):
                raise DataError(f"temporal feature {f!r} changes kind between time steps", column=c)
            steps = max(steps, k + 1)
        self.label_ = label
        self.static_specs_ = [schema[c] for c in static]
        self.temporal_features_ = features
        self.steps_ = steps
        self.temporal_specs_ = [ColumnSpec(f, first[f].kind, first[f].categories) for f in features]
        self.classes_ = (list(schema[label].categories) if label is not None and schema[label].kind == "categorical"
                         else [0, 1] if label is not None else [])

    def _static_codes(self, table: pd.DataFrame) -> list[np.ndarray]:
        return [ColumnCodec.raw_codes(table[s.name], s) for s in self.static_specs_]

    def _temporal_codes(self, table: pd.DataFrame) -> list[np.ndarray]:
        """Per temporal feature an (n, L) array of raw codes (NaN where the column or cell is missing)."""
        n, out = len(table), []
        for spec in self.temporal_specs_:
            a = np.full((n, self.steps_), np.nan)
            for k in range(self.steps_):
                name = temporal_name(spec.name, k)
                if name in table.columns:
                    a[:, k] = ColumnCodec.raw_codes(table[name], self.schema_[name])
            out.append(a)
        return out

    def _label_codes(self, table: pd.DataFrame) -> np.ndarray:
        """Label as class index; -1 where missing (or no label)."""
        if self.label_ is None:
            return np.full(len(table), -1, dtype=np.int64)
        s = table[self.label_]
        idx = {str(c): i for i, c in enumerate(self.classes_)}
        out = np.full(len(table), -1, dtype=np.int64)
        for i, v in enumerate(s.to_numpy(dtype=object)):
            if not pd.isna(v):
                key = str(int(float(v))) if self.schema_[self.label_].kind == "binary" else str(v)
                out[i] = idx[key]
        return out

    def _encode_tables(self, table: pd.DataFrame):
        xs, ms = self.static_codec_.encode(self._static_codes(table))
        t_codes = self._temporal_codes(table)
        n, L = len(table), self.steps_
        flat = [a.reshape(-1) for a in t_codes]
        xt, mt = self.temporal_codec_.encode(flat)
        return xs, ms, xt.reshape(n, L, -1), mt.reshape(n, L, -1)

    # ------------------------------------------------------------------ networks
    def _build_nets(self) -> None:
        sc, tc = self.static_codec_, self.temporal_codec_
        self.static_vae_ = StaticVAE(sc.width + len(sc.specs), sc.width, self.static_latent, list(self.static_hidden))
        self.temporal_vae_ = TemporalVAE(tc.width + len(tc.specs), tc.width, self.steps_, self.temporal_latent,
                                         self.temporal_hidden, self.encoder)
        self.n_classes_ = max(len(self.classes_), 1)
        self.denoiser_ = Denoiser(self.temporal_latent + self.static_latent, self.n_classes_,
                                  hidden=self.diffusion_hidden, layers=self.diffusion_layers)

    def _train_vae(self, vae, x: np.ndarray, m: np.ndarray, codec: ColumnCodec, gen: torch.Generator,
                   temporal: bool, epochs: int | None = None) -> list[float]:
        xt, mt = torch.from_numpy(x), torch.from_numpy(m)
        n = len(xt)
        opt = torch.optim.Adam(vae.parameters(), lr=self.lr)
        history = []
        vae.train()
        expand = self._expand_mask
        for _ in range(self.vae_epochs if epochs is None else epochs):
            perm = torch.randperm(n, generator=gen)
            total = 0.0
            for i in range(0, n, self.batch_size):
                idx = perm[i:i + self.batch_size]
                if len(idx) < 2 and n >= 2:
                    continue
                xb, mb = xt[idx], mt[idx]
                enc_m = mb
                if self.encoder_dropout > 0:
                    rows = (torch.rand(len(idx), generator=gen) < self.encoder_dropout).float()
                    rate = torch.rand(len(idx), generator=gen) * 0.5 * rows
                    shape = (len(idx),) + tuple(mb.shape[1:])
                    keep = (torch.rand(shape, generator=gen) >= rate.view(-1, *([1] * (mb.dim() - 1)))).float()
                    enc_m = mb * keep
                enc_x = xb * expand(enc_m, codec)
                mu, logvar = vae.encode(torch.cat([enc_x, enc_m], -1))
                z = mu + torch.randn(mu.shape, generator=gen) * (0.5 * logvar).exp()
                out = vae.decode(z)
                rec = codec.loss(out, xb, mb)
                if temporal:
                    rec = rec.sum(-1)
                loss = (rec + self.kl_weight * kl_divergence(mu, logvar)).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            history.append(total / max(n, 1))
        vae.eval()
        return history

    @staticmethod
    def _expand_mask(m: torch.Tensor, codec: ColumnCodec) -> torch.Tensor:
        """Per-column mask (..., n_columns) → per-encoded-slot mask (..., width)."""
        widths = torch.tensor([b.width for b in codec.blocks])
        return torch.repeat_interleave(m, widths, dim=-1)

    @torch.no_grad()
    def _encode_mu(self, vae, x: np.ndarray, m: np.ndarray, codec: ColumnCodec) -> np.ndarray:
        if len(x) == 0:
            return np.zeros((0, vae.latent_dim))
        xt, mt = torch.from_numpy(x), torch.from_numpy(m)
        xt = xt * self._expand_mask(mt, codec)
        outs = [vae.encode(torch.cat([xt[i:i + 2048], mt[i:i + 2048]], -1))[0] for i in range(0, len(xt), 2048)]
        return torch.cat(outs).double().numpy()

    # ----------------------------------------------------------------------- fit
    def _fit(self, data: pd.DataFrame) -> None:
        self._layout()
        with torch.random.fork_rng(devices=[]), _torch_threads(self.threads):
            torch.manual_seed(self.seed)
            gen = torch.Generator().manual_seed(self.seed)
            rng = np.random.default_rng(self.seed)
            self._fit_inner(data, gen, rng)

    def _fit_inner(self, data: pd.DataFrame, gen: torch.Generator, rng: np.random.Generator) -> None:
        self.static_codec_ = ColumnCodec(self.static_specs_).fit(self._static_codes(data), self.log_skewed)
        t_codes = self._temporal_codes(data)
        self.temporal_codec_ = ColumnCodec(self.temporal_specs_).fit([a.reshape(-1) for a in t_codes],
                                                                     self.log_skewed)
        xs, ms, xt, mt = self._encode_tables(data)
        y = self._label_codes(data)
        has_s, has_t = ms.any(1), mt.reshape(len(mt), -1).any(1)
        keep = has_s | has_t
        if not keep.any():
            raise DataError("every training row lacks both the static and the temporal columns")
        if not has_s.any() or not has_t.any():
            raise DataError("flexgen needs at least one training row with static values and one with temporal values")
        self._build_nets()

        # 1. VAEs, each on the rows that have its modality (with vae_epoch_scale, as many updates as a full table)
        def epochs(has: np.ndarray) -> int:
            return (int(round(self.vae_epochs * keep.sum() / has.sum())) if self.vae_epoch_scale
                    else self.vae_epochs)

        self.history_ = {
            "static_vae": self._train_vae(self.static_vae_, xs[has_s], ms[has_s], self.static_codec_, gen, False,
                                          epochs(has_s)),
            "temporal_vae": self._train_vae(self.temporal_vae_, xt[has_t], mt[has_t], self.temporal_codec_, gen, True,
                                            epochs(has_t)),
        }
        zs_obs = self._encode_mu(self.static_vae_, xs[has_s], ms[has_s], self.static_codec_)
        zt_obs = self._encode_mu(self.temporal_vae_, xt[has_t], mt[has_t], self.temporal_codec_)
        with torch.no_grad():
            self.static_codec_.set_residuals(self.static_vae_.decode(torch.from_numpy(zs_obs).float()).numpy(),
                                             xs[has_s], ms[has_s])
            self.temporal_codec_.set_residuals(self.temporal_vae_.decode(torch.from_numpy(zt_obs).float()).numpy(),
                                               xt[has_t], mt[has_t])

        # 2. alignment / imputation of the missing embeddings
        n = len(data)
        zs = np.full((n, self.static_latent), np.nan)
        zt = np.full((n, self.temporal_latent), np.nan)
        zs[has_s], zt[has_t] = zs_obs, zt_obs
        self._impute_embeddings(zt, zs, has_t, has_s, y, rng)

        # 3. latent diffusion on the fused representation
        z = np.hstack([zt, zs])[keep]
        yk = y[keep]
        self.z_mean_, self.z_std_ = z.mean(0), np.where(z.std(0) > 1e-8, z.std(0), 1.0)
        zn = (z - self.z_mean_) / self.z_std_
        self._fit_gaussians(zn, yk)
        self._fit_label_models(zn, yk)
        prior = np.bincount(yk[yk >= 0], minlength=self.n_classes_).astype(float) if self.label_ else np.ones(1)
        self.class_prior_ = prior / prior.sum() if prior.sum() > 0 else np.full(self.n_classes_, 1 / self.n_classes_)
        y_train = torch.from_numpy(np.where(yk >= 0, yk, self.n_classes_)).long()
        schedule = Schedule(self.timesteps, self.beta_start, self.beta_end)
        self.history_["diffusion"] = train_denoiser(
            self.denoiser_, torch.from_numpy(zn).float(), y_train, schedule, epochs=self.diffusion_epochs,
            batch_size=self.batch_size, lr=self.lr, p_uncond=self.p_uncond if self.label_ else 1.0, generator=gen)
        for name, h in self.history_.items():
            if h and not np.isfinite(h).all():
                raise DataError(f"training diverged: non-finite {name} loss")
        self.info_.update(rows=int(n), rows_static_only=int((has_s & ~has_t).sum()),
                          rows_temporal_only=int((has_t & ~has_s).sum()), rows_both=int((has_s & has_t).sum()),
                          rows_dropped=int((~keep).sum()), alpha_bar_T=float(schedule.abar[-1]))

    def _impute_embeddings(self, zt: np.ndarray, zs: np.ndarray, has_t: np.ndarray, has_s: np.ndarray,
                           y: np.ndarray, rng: np.random.Generator) -> None:
        t_only, s_only, both = has_t & ~has_s, has_s & ~has_t, has_s & has_t
        self.map_t2s_ = self.map_s2t_ = None
        self.map_label_input_ = False
        if not (t_only.any() or s_only.any()):
            self.info_["alignment"] = "none needed (every record has both modalities)"
            return
        method = self.imputation
        if method == "knn" and both.sum() < 1:
            method = "gw"
            self.info_["alignment_note"] = "knn imputation needs complete records; none, so GW was used"
        if method == "knn":
            if t_only.any():
                zs[t_only] = knn_impute(zt[t_only], zt[both], zs[both], self.knn_k)
            if s_only.any():
                zt[s_only] = knn_impute(zs[s_only], zs[both], zt[both], self.knn_k)
            self.info_["alignment"] = f"knn (k={self.knn_k}) over {int(both.sum())} complete records"
            return
        # entropic GW between all temporal-side and all static-side embeddings (subsampled)
        it = np.flatnonzero(has_t)
        js = np.flatnonzero(has_s)
        if len(it) > self.gw_max_points:
            it = np.sort(rng.choice(it, self.gw_max_points, replace=False))
        if len(js) > self.gw_max_points:
            js = np.sort(rng.choice(js, self.gw_max_points, replace=False))
        # standardize each space before measuring angles
        zt_n = (zt[it] - zt[has_t].mean(0)) / (zt[has_t].std(0) + 1e-8)
        zs_n = (zs[js] - zs[has_s].mean(0)) / (zs[has_s].std(0) + 1e-8)
        coupling = gw_coupling(zt_n, zs_n, y[it].astype(float), y[js].astype(float), epsilon=self.gw_epsilon,
                               label_aware=self.gw_label_aware and self.label_ is not None)
        pseudo_s = barycentric_projection(coupling, zs[js])        # partner of each sampled temporal point
        pseudo_t = barycentric_projection(coupling.T, zt[it])      # partner of each sampled static point
        pairs = np.flatnonzero(both)
        label_map = self.gw_label_map and self.label_ is not None
        self.map_label_input_ = label_map
        yk = y if label_map else np.full(len(y), -1)

        def design(z: np.ndarray, rows: np.ndarray) -> np.ndarray:  # map input: z, or [z, onehot(label)]
            return np.hstack([z, label_design(yk[rows], self.n_classes_)]) if label_map else z

        # exact pairs (records with both modalities) weigh gw_pair_weight pseudo-pairs each
        a_rows, b_rows = np.r_[it, pairs], np.r_[js, pairs]
        a_in, a_out = design(np.vstack([zt[it], zt[pairs]]), a_rows), np.vstack([pseudo_s, zs[pairs]])
        b_in, b_out = design(np.vstack([zs[js], zs[pairs]]), b_rows), np.vstack([pseudo_t, zt[pairs]])
        wa = np.r_[np.ones(len(it)), np.full(len(pairs), self.gw_pair_weight)]
        wb = np.r_[np.ones(len(js)), np.full(len(pairs), self.gw_pair_weight)]
        self.map_t2s_ = fit_affine_map(a_in, a_out, wa)
        self.map_s2t_ = fit_affine_map(b_in, b_out, wb)
        # donors for predictive mean matching: the exact pairs, or the GW pseudo-pairs when there are
        # fewer than gw_donors exact pairs
        use_pairs = len(pairs) >= self.gw_donors
        for amap, z_in, z_out, rows, fit_in, fit_out, fit_rows, w in (
                (self.map_t2s_, zt, zs, np.flatnonzero(t_only), a_in, a_out, a_rows, wa),
                (self.map_s2t_, zs, zt, np.flatnonzero(s_only), b_in, b_out, b_rows, wb)):
            if not len(rows):
                continue
            pred = amap(design(z_in[rows], rows))
            if self.gw_donors > 0:  # predictive mean matching on the map's predictions
                d_rows = pairs if use_pairs else fit_rows[:len(fit_rows) - len(pairs)]
                d_pred = amap(design(z_in[d_rows], d_rows)) if use_pairs else amap(fit_in[:len(d_rows)])
                d_out = z_out[d_rows] if use_pairs else fit_out[:len(d_rows)]
                z_out[rows] = pmm_impute(pred, d_pred, d_out, self.gw_donors, rng, yk[rows], yk[d_rows],
                                         draw=self.impute_noise)
            else:
                z_out[rows] = pred + self._residual_noise(amap, fit_in, fit_out, w, yk[fit_rows], yk[rows], rng)
        self.info_["alignment"] = (f"entropic GW (eps={self.gw_epsilon}, label-aware={self.gw_label_aware}) on "
                                   f"{len(it)} temporal x {len(js)} static embeddings + {len(pairs)} complete pairs "
                                   f"(weight {self.gw_pair_weight:g} each); affine maps"
                                   + (" with the label as input, noise per label class" if label_map else "")
                                   + (f"; predictive mean matching with {self.gw_donors} donors"
                                      if self.gw_donors else ""))

    def _residual_noise(self, amap, z_in: np.ndarray, z_out: np.ndarray, w: np.ndarray, fit_y: np.ndarray,
                        query_y: np.ndarray, rng: np.random.Generator):
        if not self.impute_noise:
            return 0.0
        if not self.map_label_input_:
            return residual_noise(amap, z_in, z_out, len(query_y), rng, w)
        return residual_noise(amap, z_in, z_out, query_y, rng, w, fit_y)

    def _fit_gaussians(self, zn: np.ndarray, y: np.ndarray) -> None:
        """Per label class (and overall, last index) mean and Cholesky factor of the standardized latents."""
        d = zn.shape[1]
        means, chols = [], []
        for c in list(range(self.n_classes_)) + [None]:
            rows = zn if c is None else zn[y == c]
            if len(rows) < 2:
                rows = zn
            mu = rows.mean(0)
            cov = np.cov(rows, rowvar=False).reshape(d, d) + 1e-4 * np.eye(d)
            means.append(mu)
            chols.append(np.linalg.cholesky(cov))
        self.gauss_mean_, self.gauss_chol_ = np.stack(means), np.stack(chols)

    def _fit_label_models(self, zn: np.ndarray, y: np.ndarray) -> None:
        """Logistic p(y | z^T), p(y | z^S), p(y | z) on standardized latents (for unobserved labels)."""
        lt = self.temporal_latent
        self.label_models_ = {}
        ok = y >= 0
        if self.label_ is None or len(np.unique(y[ok])) < 2:
            return
        from sklearn.linear_model import LogisticRegression

        for key, cols in (("t", slice(0, lt)), ("s", slice(lt, None)), ("ts", slice(None))):
            clf = LogisticRegression(C=1.0, max_iter=500).fit(zn[ok][:, cols], y[ok])
            coef = np.zeros((self.n_classes_, clf.coef_.shape[1]))
            bias = np.zeros(self.n_classes_)
            if len(clf.classes_) == 2 and clf.coef_.shape[0] == 1:
                coef[clf.classes_[1]], bias[clf.classes_[1]] = clf.coef_[0], clf.intercept_[0]
            else:
                coef[clf.classes_], bias[clf.classes_] = clf.coef_, clf.intercept_
            self.label_models_[key] = (coef, bias)

    # ------------------------------------------------------------------ generation
    def _generate(self, y: np.ndarray, known: np.ndarray, kmask: np.ndarray, gen: torch.Generator) -> np.ndarray:
        """Standardized latents for label indices `y` (-1 = unconditional) with known coordinates fixed."""
        n, d = known.shape
        start = np.zeros((n, d))
        cls = np.where(y >= 0, y, self.n_classes_)
        noise = torch.randn((n, d), generator=gen, dtype=torch.float64).numpy()
        patterns = np.unique(np.column_stack([cls, kmask]), axis=0)
        for pat in patterns:
            c, pm = int(pat[0]), pat[1:].astype(bool)
            rows = np.flatnonzero((cls == c) & (kmask == pm).all(1))
            mu, chol = self.gauss_mean_[c], self.gauss_chol_[c]
            if not pm.any():
                start[rows] = mu + noise[rows] @ chol.T
                continue
            cov = chol @ chol.T
            o, u = np.flatnonzero(pm), np.flatnonzero(~pm)
            start[np.ix_(rows, o)] = known[np.ix_(rows, o)]
            if len(u) == 0:
                continue
            k = np.linalg.solve(cov[np.ix_(o, o)], cov[np.ix_(o, u)]).T
            cmean = mu[u] + (known[np.ix_(rows, o)] - mu[o]) @ k.T
            ccov = cov[np.ix_(u, u)] - k @ cov[np.ix_(o, u)]
            cchol = np.linalg.cholesky((ccov + ccov.T) / 2 + 1e-6 * np.eye(len(u)))
            start[np.ix_(rows, u)] = cmean + noise[np.ix_(rows, u)] @ cchol.T
        schedule = Schedule(self.timesteps, self.beta_start, self.beta_end)
        z = sample_latents(self.denoiser_, schedule, torch.from_numpy(start).float(),
                           torch.from_numpy(cls).long(), generator=gen, guidance_weight=self.guidance_weight,
                           sampler=self.sampler, steps=self.ddim_steps, eta=self.ddim_eta,
                           known=torch.from_numpy(known).float(), known_mask=torch.from_numpy(kmask))
        return z.double().numpy()

    @torch.no_grad()
    def _decoder_outputs(self, zn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        z = zn * self.z_std_ + self.z_mean_
        lt = self.temporal_latent
        zt, zs = torch.from_numpy(z[:, :lt]).float(), torch.from_numpy(z[:, lt:]).float()
        out_t = torch.cat([self.temporal_vae_.decode(zt[i:i + 4096]) for i in range(0, len(zt), 4096)])
        out_s = torch.cat([self.static_vae_.decode(zs[i:i + 4096]) for i in range(0, len(zs), 4096)])
        return out_s.double().numpy(), out_t.double().numpy()

    def _to_table(self, zn: np.ndarray, y: np.ndarray, rng: np.random.Generator,
                  timings: dict[str, float] | None = None) -> pd.DataFrame:
        t0 = time.perf_counter()
        out_s, out_t = self._decoder_outputs(zn)
        if timings is not None:
            timings["decoder_seconds"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        n = len(zn)
        noise = self.decoder_noise
        cols: dict[str, Any] = {}
        for spec, codes in zip(self.static_specs_, self.static_codec_.decode(out_s, rng, noise=noise)):
            cols[spec.name] = self._column(spec, codes)
        t_codes = self.temporal_codec_.decode(out_t.reshape(n * self.steps_, -1), rng, noise=noise)
        for spec, codes in zip(self.temporal_specs_, t_codes):
            codes = codes.reshape(n, self.steps_)
            for k in range(self.steps_):
                name = temporal_name(spec.name, k)
                if name in self.schema_:
                    cols[name] = self._column(self.schema_[name], codes[:, k])
        if self.label_ is not None:
            yy = np.where(y >= 0, y, 0)
            spec = self.schema_[self.label_]
            cols[self.label_] = (_levels(spec, yy) if spec.kind == "categorical"
                                 else np.asarray([self.classes_[i] for i in yy], dtype=np.int64))
        out = pd.DataFrame(cols, columns=self.schema_.names)
        if timings is not None:
            timings["table_seconds"] = time.perf_counter() - t0
        return out

    @staticmethod
    def _column(spec: ColumnSpec, codes: np.ndarray):
        if spec.kind == "continuous":
            return codes.astype(float)
        if spec.kind == "binary":
            return codes.astype(np.int64)
        return _levels(spec, codes)

    def _draw_labels(self, n: int, rng: np.random.Generator) -> np.ndarray:
        if self.label_ is None:
            return np.full(n, -1, dtype=np.int64)
        return rng.choice(self.n_classes_, size=n, p=self.class_prior_).astype(np.int64)

    def _sample(self, n: int, rng: np.random.Generator, seed: int) -> pd.DataFrame:
        with _torch_threads(self.threads):
            return self._sample_inner(n, rng, seed)

    def _sample_inner(self, n: int, rng: np.random.Generator, seed: int) -> pd.DataFrame:
        gen = torch.Generator().manual_seed(int(seed))
        y = self._draw_labels(n, rng)
        d = self.temporal_latent + self.static_latent
        t0 = time.perf_counter()
        zn = self._generate(y, np.zeros((n, d)), np.zeros((n, d), dtype=bool), gen)
        timings = {"latent_seconds": time.perf_counter() - t0,
                   "denoiser_calls": float(len(denoiser_steps(self.timesteps, self.sampler, self.ddim_steps)))}
        out = self._to_table(zn, y, rng, timings)
        # wall-time breakdown of the last `sample` call (start + reverse diffusion, decoder nets, table)
        self.sample_timings_ = timings
        return out

    def _condition_rows(self, table: pd.DataFrame, observed: np.ndarray, rng: np.random.Generator,
                        seed: int) -> pd.DataFrame:
        with _torch_threads(self.threads):
            return self._condition_inner(table, observed, rng, seed)

    def _condition_inner(self, table: pd.DataFrame, observed: np.ndarray, rng: np.random.Generator,
                         seed: int) -> pd.DataFrame:
        gen = torch.Generator().manual_seed(int(seed))
        n = len(table)
        lt, ls = self.temporal_latent, self.static_latent
        d = lt + ls
        xs, ms, xt, mt = self._encode_tables(table)
        y_obs = self._label_codes(table)
        frac_s = ms.mean(1)
        frac_t = mt.reshape(n, -1).mean(1)
        know_s = (frac_s >= self.condition_known_fraction) & (frac_s > 0)
        know_t = (frac_t >= self.condition_known_fraction) & (frac_t > 0)
        known = np.zeros((n, d))
        kmask = np.zeros((n, d), dtype=bool)
        if know_t.any():
            zt = self._encode_mu(self.temporal_vae_, xt[know_t], mt[know_t], self.temporal_codec_)
            known[know_t, :lt] = (zt - self.z_mean_[:lt]) / self.z_std_[:lt]
            kmask[know_t, :lt] = True
        if know_s.any():
            zs = self._encode_mu(self.static_vae_, xs[know_s], ms[know_s], self.static_codec_)
            known[know_s, lt:] = (zs - self.z_mean_[lt:]) / self.z_std_[lt:]
            kmask[know_s, lt:] = True
        # SIR is needed where observed cells sit in a modality that is not held fixed
        partial_s = (frac_s > 0) & ~know_s
        partial_t = (frac_t > 0) & ~know_t
        needs_sir = partial_s | partial_t
        reps = np.where(needs_sir, self.condition_candidates, 1)
        rows = np.repeat(np.arange(n), reps)
        known_r, kmask_r = known[rows], kmask[rows]
        y = self._labels_for(y_obs[rows], known_r, know_t[rows], know_s[rows], rng)
        zn = self._generate(y, known_r, kmask_r, gen)
        choice = np.arange(len(rows))
        if needs_sir.any():
            out_s, out_t = self._decoder_outputs(zn)
            ll = np.zeros(len(rows))
            ps, pt = partial_s[rows], partial_t[rows]
            ll[ps] = self.static_codec_.loglik(out_s[ps], xs[rows][ps], ms[rows][ps])
            if pt.any():
                ll[pt] += self.temporal_codec_.loglik(out_t[pt], xt[rows][pt], mt[rows][pt]).sum(-1)
            starts = np.concatenate([[0], np.cumsum(reps)[:-1]])
            choice = np.empty(n, dtype=np.int64)
            for i in range(n):
                seg = slice(starts[i], starts[i] + reps[i])
                w = ll[seg] - ll[seg].max()
                p = np.exp(w)
                choice[i] = starts[i] + rng.choice(reps[i], p=p / p.sum())
        return self._to_table(zn[choice], y[choice], rng)

    def _labels_for(self, y_obs: np.ndarray, known: np.ndarray, know_t: np.ndarray, know_s: np.ndarray,
                    rng: np.random.Generator) -> np.ndarray:
        """Observed labels kept; others drawn from p(y | known latents) or the label prior."""
        y = y_obs.copy()
        if self.label_ is None:
            return y
        free = y < 0
        y[free] = self._draw_labels(int(free.sum()), rng)
        lt = self.temporal_latent
        for key, sel, cols in (("ts", know_t & know_s, slice(None)), ("t", know_t & ~know_s, slice(0, lt)),
                               ("s", know_s & ~know_t, slice(lt, None))):
            rows = np.flatnonzero(free & sel)
            if len(rows) == 0 or key not in self.label_models_:
                continue
            coef, bias = self.label_models_[key]
            logits = known[rows][:, cols] @ coef.T + bias
            p = np.exp(logits - logits.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            u = rng.random((len(rows), 1))
            y[rows] = np.minimum((p.cumsum(1) < u).sum(1), self.n_classes_ - 1)
        return y

    # ------------------------------------------------------------------ state
    _NETS = ("static_vae_", "temporal_vae_", "denoiser_")

    def get_state(self) -> tuple[dict[str, np.ndarray], dict]:
        tensors: dict[str, np.ndarray] = {}
        for attr in self._NETS:
            for k, v in getattr(self, attr).state_dict().items():
                tensors[f"{attr.rstrip('_')}.{k}"] = v.detach().cpu().numpy().copy()
        tensors.update(self.static_codec_.state("static_codec"))
        tensors.update(self.temporal_codec_.state("temporal_codec"))
        tensors.update({"latent.mean": self.z_mean_, "latent.std": self.z_std_, "gauss.mean": self.gauss_mean_,
                        "gauss.chol": self.gauss_chol_, "label.prior": np.asarray(self.class_prior_, float)})
        for key, (coef, bias) in self.label_models_.items():
            tensors[f"label_model.{key}.coef"], tensors[f"label_model.{key}.bias"] = coef, bias
        for name in ("map_t2s_", "map_s2t_"):
            m = getattr(self, name, None)
            if m is not None:
                tensors[f"{name.rstrip('_')}.weight"], tensors[f"{name.rstrip('_')}.bias"] = m.weight, m.bias
        state = {"history": self.history_, "info": self.info_, "label_models": sorted(self.label_models_),
                 "map_label_input": bool(getattr(self, "map_label_input_", False))}
        return tensors, state

    def set_state(self, tensors: dict[str, np.ndarray], state: dict) -> None:
        from synthehr.models.latent_diffusion.alignment import AffineMap

        try:
            self._layout()
            self.static_codec_ = ColumnCodec(self.static_specs_)
            self.temporal_codec_ = ColumnCodec(self.temporal_specs_)
            self.static_codec_.load_state(tensors, "static_codec")
            self.temporal_codec_.load_state(tensors, "temporal_codec")
            self._build_nets()
            for attr in self._NETS:
                net = getattr(self, attr)
                prefix = attr.rstrip("_") + "."
                sd = {k[len(prefix):]: torch.from_numpy(np.array(v)) for k, v in tensors.items() if k.startswith(prefix)}
                net.load_state_dict(sd, strict=True)
                net.eval()
            self.z_mean_, self.z_std_ = np.asarray(tensors["latent.mean"], float), np.asarray(tensors["latent.std"], float)
            self.gauss_mean_ = np.asarray(tensors["gauss.mean"], float)
            self.gauss_chol_ = np.asarray(tensors["gauss.chol"], float)
            self.class_prior_ = np.asarray(tensors["label.prior"], float)
            self.label_models_ = {k: (np.asarray(tensors[f"label_model.{k}.coef"], float),
                                      np.asarray(tensors[f"label_model.{k}.bias"], float))
                                  for k in state.get("label_models", [])}
            for name in ("map_t2s", "map_s2t"):
                setattr(self, name + "_", AffineMap(np.asarray(tensors[f"{name}.weight"], float),
                                                    np.asarray(tensors[f"{name}.bias"], float))
                        if f"{name}.weight" in tensors else None)
        except (KeyError, RuntimeError, ValueError) as e:
            raise ModelFileError(f"saved flexgen state does not match its config: {e}") from None
        self.history_ = dict(state.get("history", {}))
        self.info_ = dict(state.get("info", {}))
        self.map_label_input_ = bool(state.get("map_label_input", False))  # models saved before it: label-blind maps

    # ------------------------------------------------------------------ extras
    @classmethod
    def training_table(cls, prepared, split: str | None = "train", hours: float = 48.0):
        """(stay table, schema) of a PreparedData's `split`: what this model trains on.

        A hook for `models.training.train_model`, whose default table is the grid's per-bin rows.
        """
        from synthehr.models.latent_diffusion.stay_table import stay_table

        return stay_table(prepared, hours=hours, split=split)

    def encode(self, table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Posterior-mean embeddings (z^T, z^S) of a stay table's rows (NaN rows where a modality is absent)."""
        self._check_fitted()
        table = table.reindex(columns=self.schema_.names)
        xs, ms, xt, mt = self._encode_tables(table)
        has_s, has_t = ms.any(1), mt.reshape(len(mt), -1).any(1)
        zt = np.full((len(table), self.temporal_latent), np.nan)
        zs = np.full((len(table), self.static_latent), np.nan)
        zt[has_t] = self._encode_mu(self.temporal_vae_, xt[has_t], mt[has_t], self.temporal_codec_)
        zs[has_s] = self._encode_mu(self.static_vae_, xs[has_s], ms[has_s], self.static_codec_)
        return zt, zs

