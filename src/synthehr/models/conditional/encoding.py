"""Shared machinery of the PyTorch generators: mixed-type encoding, likelihoods, nets, training.

Encoding (`MixedCodec`)
    * continuous → one value in "model space", by the `transform` hyper-parameter:
      - "quantile" (default): a per-column quantile → normal map fitted on the training cells,
        y = Φ⁻¹(F̂(x)), piecewise linear between at most `MAX_KNOTS` knots (the distinct training
        values, or that many empirical quantiles), continued linearly past the ends on input.
        Lab values in the ICU grid are strongly skewed (AST, ALT, bilirubin, lactate, WBC: skew
        5–16); a Gaussian decoder in standardized raw units puts mass below zero and misses the
        tails, in normal-score space it does not. The knots are saved with the weights
        (safetensors `codec.knots_u` / `_y` / `_len`). Decoding inverts the map exactly on the
        training range and clamps to the training min / max beyond it (see `MixedCodec.inverse`);
        observed cells never go through the inverse (the base class returns them as given).
      - "standard": (x − training mean) / training sd.
      The training mean/sd are kept in both cases (`codec.loc` / `codec.scale`, a constant column
      keeps scale 1): they define the "standardized units" NLL and MSE are reported in. The
      decoder emits a Gaussian mean and a log-variance per continuous column (in model space),
      so the reconstruction NLL is a proper density and sampling can add the decoder's noise.
    * point masses (`point_mass_share`, default 0.05; 0 turns them off): a continuous column whose
      most frequent training value holds at least that share of its present cells (the ICU grid's
      filled-in medians: AST, ALT, ALP, bilirubin and albumin hold one value in 64-70 % of PhysioNet
      rows, lactate 55 %, FiO2 57 %; a lattice value such as GCS 15) is encoded as two slots, the value
      in model space (0 at the mass) and an "at the point mass" bit, and the decoder emits a Bernoulli
      logit beside its Gaussian: log p(x) = log P(mass) at the mass, log P(not) + log N(value)
      elsewhere, with the quantile map fitted on the other values. Why: as one Gaussian per row the
      spike sat in the middle of the normal scores with the measured values split around it, and the
      latent spent itself on "filled or not" per column; the filled cells of AST and ALT did not come
      back together, nor did the measured pair keep its correlation (PhysioNet 2012 set-a, PMVAE,
      scored against set-b: AST-ALT 0.50 generated against 0.86 real, 0.81 with point masses; Table I
      correlation difference 0.030 without, 0.023 with masses on the 16 columns above 20 %, 0.022 on
      the 25 above 5 %, rmspe and mape within their draw-to-draw spread). A given value equal to the
      mass conditions on "filled" (the other filled labs follow it). In `log_prob_unobserved` a mass
      cell adds a probability, not a density.
    * binary → one 0/1 value; the decoder emits one Bernoulli logit.
    * categorical → a one-hot block; the decoder emits one logit per level (softmax likelihood).
    A missing cell (NaN) is encoded as 0 (the standardized mean / an all-zero one-hot block) and
    is *never* a real value: every net that reads `x` also reads the per-column mask saying which
    cells it may trust, and the reconstruction loss multiplies each cell's log-likelihood by the
    "present" mask so missing training cells contribute nothing.

Training (`TorchGenerator`)
    Adam, mini-batches reshuffled each epoch, gradient norm clipped at `GRAD_CLIP`, and by default
    (`lr_schedule="cosine"`) a cosine decay of the learning rate to `LR_FINAL` x lr over the run.
    `epochs=None` (default) runs max(MIN_EPOCHS, ceil(MIN_STEPS / steps per epoch)) epochs: 40
    passes over a large table (the 48,000-row set-a grid: 7,500 steps) but 160 over the 5,000-row
    benchmark table, which at 40 epochs got only 800 optimizer steps and stopped far from
    converged (VAEAC imputation MSE on a held-out part of set-a: 0.80 at 40 epochs, 0.77 at 160).
    Everything
    random (initial weights, shuffling, masks, reparameterisation noise) comes from torch's
    global generator seeded with `seed` inside `torch.random.fork_rng`, so a fit is
    deterministic for a fixed seed on CPU and leaves the caller's torch RNG untouched. Sampling
    and conditioning do the same with a torch seed drawn from the numpy generator the base class
    builds from the `seed` argument.

Random observed-masks (`random_observed_mask`)
    Arbitrary-conditioning models learn from a fresh random split of each training row into
    observed / unobserved cells every batch. Default (`mask_rate=None`): each row draws its own
    rate r ~ U(0, 1) and every cell is unobserved with probability r, so "almost everything
    given" and "almost nothing given" are both seen (as in VAEAC's and Posterior Matching's
    experiments). A float `mask_rate` fixes r for every row. Cells missing in the data are never
    observed.

Column weights (`column_weights`, default none)
    {column: w} multiplies that column's log-likelihood in the training loss (CLI:
    `--param column_weights=in_hospital_mortality:180`). Why: an outcome is one column among many
    (1 of 181 in the benchmark's last-6-bins layout), so the ELBO gives the latent little reason to
    carry it, and samples from noise pair the features with the outcome only loosely. On PhysioNet
    2012 (train set-a, test set-b, 3 sample seeds) a random forest trained on PMVAE samples scored
    AUROC 0.782 against 0.824 trained on the real rows; with the outcome weighted as much as all
    the features together (180) 0.817, with the outcome's prevalence kept (0.13 against 0.14).
    Only training changes: NLL, imputation and sampling read the model as they always do.

Conditional log-likelihood (`TorchGenerator.log_prob_unobserved`)
    Monte-Carlo estimate log p(x_u | x_o) ≈ log (1/K) Σ_k p(x_u | z_k, x_o), z_k drawn from the
    model's *conditional* latent distribution (VAE: encoder on the masked input; VAEAC: prior
    network; PMVAE: posterior-matching network q_θ). The decoder factorizes over features given
    z, so p(x_u | z) is a product of per-cell terms. By Jensen the estimate is biased low
    (in expectation a lower bound on the log-density of the model's conditional), with the bias
    shrinking as K grows; it is exact for the model's own sampling distribution as K → ∞.
    With the quantile transform the log-Jacobian of the map (times the training sd) is added, so
    the density is of the *standardized raw* value, in the same units as the Gaussian reference.
    Caveat: lab values are recorded on a lattice (repeated values); the map has a knot at each
    distinct value, so this continuous density can concentrate near the lattice, which a Gaussian
    in raw units cannot — part of its NLL advantage on such data comes from that.

Sampling from noise (`sample`; fitted after training, `TorchGenerator._fit_sampler`)
    * `prior="aggregate"` (default): z is drawn from a full-covariance Gaussian mixture fitted to
      draws from the aggregate posterior (1/n) Σ_i q(z | x_i) of the training rows (ex-post density
      estimation, Ghosh et al. 2020; 1–20 components, chosen by likelihood on a held-out fifth),
      not from N(0, I) (VAE, PMVAE) or VAEAC's prior network with nothing observed (one Gaussian).
      `prior="model"`: the model's own prior.
    * `calibrate_marginals=True` (default): each continuous column's generated model-space value
      goes through a monotone map that sends the distribution of draws from the sampler (20 per
      training row, at least 50,000; `calibration_draws`) to that of the training values (quantile
      matching at 401 levels, finer in the tails, down to the training data's own resolution; see
      `fit_calibration_map`; with a point mass, both sides leave out the cells at the mass). Why: the
      decoder's Gaussian noise, fine in raw units, is not fine through the inverse quantile map.
      Labs filled with one median where a stay has no value (ALT, ALP: 65 % one value) put a spike
      and gaps in model space that a per-row Gaussian cannot follow; the mixture of row Gaussians
      comes out too heavy in the tails (PhysioNet 2012, 5,000 set-a rows, VAE: 0.48 % of ALT draws
      with score > 3 against 0.12 % in the data) and the steep inverse map turns that into means
      far off (ALT +42 %, Table I rmspe 8.2 against a real-vs-real 1.9). Decoding the mean instead
      collapses the spread (rmspe 14.5), and the aggregate prior alone does not help (rmspe 10–33:
      the decoder noise, not the prior, makes the tails). With both, the ties come back as
      themselves and Table I rmspe over 10 sample seeds is 2.4 / 2.5 / 2.8 (vae / vaeac / pmvae)
      against 2.3 for bootstrap resamples of the training rows themselves.
    Only `sample` uses these; condition / impute / conditional_mean / log_prob_unobserved do not,
    and the nets are the same with or without them (the sampler is fitted from its own random
    stream). Saved as safetensors `sampler.gmm_*` / `sampler.calib_*`; a model file without them
    (saved before they existed) samples as it did then: the model's own prior, no calibration.

Point imputation (`TorchGenerator.conditional_mean`)
    For squared error the best point estimate is E[x_u | x_o], not one draw (one draw has about
    twice the MSE) and not a mean of a few draws (adds the draw variance / k). `conditional_mean`
    averages over many latent draws (default 100) in raw units; see its docstring.

Defaults and speed
    latent_dim=16, hidden=(256, 256) (decoder mirrored), epochs=None (see Training),
    batch_size=256, lr=1e-3 (cosine decay), transform="quantile", prior="aggregate",
    calibrate_marginals=True, SiLU MLPs, no dropout /
    batch-norm (so eval = train numerics). Width trade-off on the set-a grid (PMVAE, Table I over
    training seeds 0-2, before point masses): width 512 gave rmspe 2.95 / 3.03 / 3.25 and correlation difference
    0.026 / 0.026 / 0.027 against 2.14 / 4.07 / 3.81 and 0.030 / 0.028 / 0.032 at 256 (steadier and
    a little better), but trains about 2x slower; latent_dim 8 or 32 did not help, nor did a weaker KL
    term (every column weighted 2x / 4x: 0.028 / 0.030) or `gibbs_rounds` 1-3. The correlations the
    family misses are moderate ones of features the latent leaves to decoder noise (heart rate -
    temperature 0.26 real, 0.03 generated; rank correlations show the same), not only heavy tails
    (AST - ALT 0.86 real, 0.27 generated). Measured on two
    shared CPU cores with one torch thread: a 10,000 × 30 table takes ~0.3–0.9 s per epoch (VAE
    fastest, PMVAE slowest); the 48,000 × 31 ICU grid at 40 epochs about 1–3.5 minutes.
    `condition(observed, n=100)` on one grid row: ~9–14 ms on the Intel Xeon, 16–23 ms on the AMD EPYC
    end to end, of which the model's own part (encode, two MLP passes, sample, decode) is
    ~2–3 ms; the rest is the base class's validation and DataFrame handling.
    `gibbs_rounds` (default 0): unconditional samples are refined by that many rounds of
    "hide a random half of each row and re-generate it given the rest" (an arbitrary-conditioning
    Gibbs-like chain); off by default — one held-out check on set-a was not conclusive.
    Threads are left alone. torch's OpenMP workers spin-wait, so on an oversubscribed machine
    (more busy processes than cores) two intra-op threads made training ~10x slower; set
    OMP_WAIT_POLICY=PASSIVE or torch.set_num_threads(1) in the calling program if that happens.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

from synthehr.errors import ConditioningError, DataError, ModelFileError
from synthehr.models.base import Generator
from synthehr.models.schema import ColumnSpec, TableSchema

__all__ = [
    "MixedCodec",
    "TorchGenerator",
    "gaussian_log_prob",
    "kl_diag_normal",
    "mlp",
    "random_observed_mask",
    "split_gaussian",
]

LOG_2PI = math.log(2.0 * math.pi)
DECODER_MIN_LOG_VAR = -8.0  # decoder sd ≥ 0.018 training sd: a spike on repeated values cannot blow up the NLL
LATENT_MIN_LOG_VAR = -10.0
GRAD_CLIP = 10.0
MIN_EPOCHS = 40      # epochs=None: at least this many passes over the table ...
MIN_STEPS = 3200     # ... and at least this many optimizer steps (a 5,000-row table: 160 epochs)
LR_SCHEDULES = ("cosine", "constant")
LR_FINAL = 0.05      # cosine schedule: the lr decays to LR_FINAL x lr at the last step
CHUNK = 8192  # rows per forward pass when generating or scoring large tables
TRANSFORMS = ("standard", "quantile")
PRIORS = ("aggregate", "model")
GMM_COMPONENTS = (1, 2, 5, 10, 20)  # prior="aggregate": candidate mixture sizes, chosen by held-out likelihood
GMM_MAX_POINTS = 20000   # latent draws the mixture is fitted on (up to 4 per training row)
GMM_REG_COVAR = 1e-4
# Unconditional draws the marginal calibration maps are fitted on: CALIBRATION_DRAWS_PER_ROW per training
# row, at least CALIBRATION_MIN_DRAWS, at most CALIBRATION_MAX_CELLS continuous cells in memory (float32).
CALIBRATION_MIN_DRAWS = 50000
CALIBRATION_DRAWS_PER_ROW = 20
CALIBRATION_MAX_CELLS = 32_000_000
CALIBRATION_KNOTS = 401    # knots per calibration map, evenly spaced in normal score (fine in the tails)


# ---------------------------------------------------------------- small tensor helpers
def soft_floor(raw: torch.Tensor, floor: float) -> torch.Tensor:
    """floor + softplus(raw - floor): smooth, never below `floor`, ≈ raw well above it (no dead gradient)."""
    return floor + F.softplus(raw - floor)


def split_gaussian(out: torch.Tensor, floor: float = LATENT_MIN_LOG_VAR) -> tuple[torch.Tensor, torch.Tensor]:
    """A net's last dim split into (mean, log-variance) halves, log-variance soft-floored."""
    mu, raw = out.chunk(2, dim=-1)
    return mu, soft_floor(raw, floor)


def gaussian_log_prob(x: torch.Tensor, mu: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """Elementwise log N(x; mu, exp(log_var))."""
    return -0.5 * (LOG_2PI + log_var + (x - mu) ** 2 * torch.exp(-log_var))


def kl_diag_normal(mu_q: torch.Tensor, lv_q: torch.Tensor, mu_p: torch.Tensor | None = None,
                   lv_p: torch.Tensor | None = None) -> torch.Tensor:
    """KL(N(mu_q, e^lv_q) || N(mu_p, e^lv_p)) summed over the last dim; p defaults to N(0, I)."""
    if mu_p is None:
        return 0.5 * (torch.exp(lv_q) + mu_q**2 - 1.0 - lv_q).sum(-1)
    return 0.5 * (lv_p - lv_q + (torch.exp(lv_q) + (mu_q - mu_p) ** 2) * torch.exp(-lv_p) - 1.0).sum(-1)


def reparameterize(mu: torch.Tensor, log_var: torch.Tensor, k: int | None = None) -> torch.Tensor:
    """mu + sd * eps; with k, a leading sample dim of size k (one batched draw, no Python loop)."""
    shape = mu.shape if k is None else (k, *mu.shape)
    return mu + torch.exp(0.5 * log_var) * torch.randn(shape, dtype=mu.dtype)


def mlp(n_in: int, hidden: Sequence[int], n_out: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = n_in
    for h in hidden:
        layers += [nn.Linear(width, h), nn.SiLU()]
        width = h
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers)


def random_observed_mask(present: torch.Tensor, mask_rate: float | None) -> torch.Tensor:
    """Bool (n, n_columns): which present cells count as observed this batch (see module doc)."""
    n = present.shape[0]
    rate = torch.rand(n, 1) if mask_rate is None else torch.full((n, 1), float(mask_rate))
    return (torch.rand(present.shape) >= rate) & present


# ------------------------------------------------------------- quantile → normal maps
MAX_KNOTS = 128  # knots per column of the quantile → normal map (more: a jagged, noisy density)


def fit_quantile_knots(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(u, y): strictly increasing raw knots u and their normal scores y = Φ⁻¹(F̂(u)).

    u = the distinct training values (or, past MAX_KNOTS of them, the distinct values at
    MAX_KNOTS evenly spaced empirical quantiles, so both tails keep a knot at the training
    min / max); F̂(u) = (#{v < u} + #{v ≤ u}) / (2n), the mid-rank CDF, which stays inside
    [1/(2n), 1 − 1/(2n)] so every score is finite. Ties (repeated lab values) get one knot.
    """
    v = np.sort(np.asarray(v, dtype=np.float64))
    u = np.unique(v)
    if len(u) > MAX_KNOTS:
        u = np.unique(np.quantile(v, np.linspace(0.0, 1.0, MAX_KNOTS), method="inverted_cdf"))
    n = len(v)
    cdf = (np.searchsorted(v, u, side="left") + np.searchsorted(v, u, side="right")) / (2.0 * n)
    from scipy.special import ndtri

    y = ndtri(cdf)
    return u, y


def find_point_mass(v: np.ndarray, min_share: float) -> float:
    """The most frequent value of `v` (no NaN) if it holds at least `min_share` (> 0) of the values and
    at least two other distinct values remain to fit a density on; else NaN (no point mass)."""
    if min_share <= 0 or len(v) == 0:
        return float("nan")
    values, counts = np.unique(v, return_counts=True)
    top = int(np.argmax(counts))
    if counts[top] < min_share * len(v) or len(values) < 3:
        return float("nan")
    return float(values[top])


def parse_column_weights(value: Mapping[str, float] | str | None) -> dict[str, float] | None:
    """`column_weights` as {column: weight}: a mapping, or text "name:weight,name:weight" (the CLI's
    `--param column_weights=in_hospital_mortality:30`); every weight finite and > 0."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        pairs = {}
        for item in value.split(","):
            name, sep, w = item.rpartition(":")
            if not sep or not name.strip():
                raise ValueError(f"column_weights expects 'name:weight,...', got item {item!r}")
            pairs[name.strip()] = w
        value = pairs
    out = {}
    for name, w in dict(value).items():
        try:
            w = float(w)
        except (TypeError, ValueError):
            raise ValueError(f"column_weights[{name!r}] must be a number, got {w!r}") from None
        if not (math.isfinite(w) and w > 0):
            raise ValueError(f"column_weights[{name!r}] must be finite and > 0, got {w!r}")
        out[str(name)] = w
    return out or None


def calibration_draws(n_rows: int, n_continuous: int) -> int:
    """Unconditional draws the calibration maps are fitted on: enough that the map's edge level
    1/(2·n_rows) is reached by ~10 draws (CALIBRATION_DRAWS_PER_ROW per training row), never fewer
    than CALIBRATION_MIN_DRAWS, and at most CALIBRATION_MAX_CELLS continuous cells held at once."""
    want = max(CALIBRATION_MIN_DRAWS, CALIBRATION_DRAWS_PER_ROW * int(n_rows))
    return int(max(1, min(want, CALIBRATION_MAX_CELLS // max(1, int(n_continuous)))))


def fit_calibration_map(generated: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(u, y): a monotone map, np.interp(t, u, y), sending the distribution of `generated` values to
    that of `target` values (quantile matching, both in model space).

    Knots at CALIBRATION_KNOTS probability levels p evenly spaced in normal score between p_min and
    1 − p_min, p_min = max(1/len(generated), 1/(2·len(target))): u = the generated quantiles, y = the
    target's quantiles, mid-rank ("hazen") interpolated, so a repeated target value (a tie of the
    quantile → normal map, e.g. the median a stay without any ALT value is filled with) keeps a flat
    stretch and comes back exactly, and the mean of the matched distribution is the target's.
    Beyond the end knots the map is flat (np.interp clamps). u is made strictly increasing.

    Why p_min stops at the target's resolution: below 1/(2n) the target quantile is its min / max
    anyway, and a generated quantile at a level only a handful of draws reach is noise that decides
    how much mass lands on the most extreme training values. On heavy-tailed labs that moved Table I
    (column means, PhysioNet 2012 set-a, one PMVAE) by calibration seed alone: 50,000 draws with the
    edge at 1/50,000 gave rmspe 1.99 or 2.47 for two seeds, 1,000,000 draws with this edge 2.23 / 2.25.
    """
    from scipy.special import ndtr, ndtri

    generated, target = np.asarray(generated, np.float64), np.asarray(target, np.float64)
    edge = ndtri(max(1.0 / max(len(generated), 2), 1.0 / max(2 * len(target), 2)))
    p = ndtr(np.linspace(edge, -edge, CALIBRATION_KNOTS))
    u = np.quantile(generated, p, method="hazen")
    y = np.quantile(target, p, method="hazen")
    keep = np.concatenate([[True], np.diff(u) > 0])  # a generated tie (a constant column): one knot
    return u[keep], y[keep]


def _check_calibration(u: np.ndarray, y: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    if u.ndim != 1 or u.shape != y.shape or len(u) == 0 or not (np.isfinite(u).all() and np.isfinite(y).all()):
        raise ModelFileError(f"calibration map {k} is malformed (shapes {u.shape}/{y.shape})")
    if len(u) > 1 and not ((np.diff(u) > 0).all() and (np.diff(y) >= 0).all()):
        raise ModelFileError(f"calibration map {k} is not increasing")
    return u, y


def _check_knots(u: np.ndarray, y: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    if u.ndim != 1 or u.shape != y.shape or len(u) == 0 or not (np.isfinite(u).all() and np.isfinite(y).all()):
        raise ModelFileError(f"codec: quantile map {k} is malformed (shapes {u.shape}/{y.shape})")
    if len(u) > 1 and not ((np.diff(u) > 0).all() and (np.diff(y) > 0).all()):
        raise ModelFileError(f"codec: quantile map {k} is not strictly increasing")
    return u, y


def _pl_map(x: np.ndarray, xp: np.ndarray, fp: np.ndarray, slope: float) -> np.ndarray:
    """Piecewise-linear map through (xp, fp), continued beyond both ends with `slope` (NaN stays NaN)."""
    out = np.interp(x, xp, fp)
    lo, hi = x < xp[0], x > xp[-1]
    out = np.where(lo, fp[0] + (x - xp[0]) * slope, out)
    return np.where(hi, fp[-1] + (x - xp[-1]) * slope, out)


def _tail_slope(u: np.ndarray, y: np.ndarray, scale: float) -> float:
    """dy/du beyond the knots: the average slope over the training range (1/scale for one knot)."""
    return float((y[-1] - y[0]) / (u[-1] - u[0])) if len(u) > 1 else 1.0 / scale


# ---------------------------------------------------------------------------- encoding
def _category_strings(spec: ColumnSpec) -> list[str]:
    """Categories compare as strings (as TableSchema.validate does), so 2 and "2" are one level."""
    return [str(c) for c in spec.categories]


class MixedCodec:
    """Table ⇄ encoded float matrix, and the decoder's per-column likelihoods (see module doc).

    Layouts: `x` (…, in_dim) holds encoded values in schema order (one slot per continuous/
    binary column, a one-hot block per categorical one). Decoder parameters (…, out_dim) hold
    [mean, log_var] per continuous column, one logit per binary column and one logit per level
    of each categorical column, also in schema order. Column masks are (…, n_columns).
    """

    def __init__(self, schema: TableSchema, loc: np.ndarray, scale: np.ndarray,
                 knots: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
                 masses: np.ndarray | None = None):
        self.schema = schema
        self.columns = list(schema.columns)
        self.n_columns = len(self.columns)
        n_cont = sum(c.kind == "continuous" for c in self.columns)
        loc, scale = np.asarray(loc, dtype=np.float64), np.asarray(scale, dtype=np.float64)
        if loc.shape != (n_cont,) or scale.shape != (n_cont,):
            raise ModelFileError(f"codec: loc/scale have shapes {loc.shape}/{scale.shape}, "
                                 f"the schema has {n_cont} continuous column(s)")
        self.loc, self.scale = loc, scale
        self.knots: list[tuple[np.ndarray, np.ndarray]] | None = None
        if knots is not None:
            if len(knots) != n_cont:
                raise ModelFileError(f"codec: {len(knots)} quantile maps for {n_cont} continuous column(s)")
            self.knots = [_check_knots(np.asarray(u, np.float64), np.asarray(y, np.float64), k)
                          for k, (u, y) in enumerate(knots)]

        # point masses (see "Point masses" in the module doc): NaN = the column has none
        masses = np.full(n_cont, np.nan) if masses is None else np.asarray(masses, dtype=np.float64).reshape(-1)
        if masses.shape != (n_cont,):
            raise ModelFileError(f"codec: {masses.shape[0]} point-mass values for {n_cont} continuous column(s)")
        self.masses = masses
        cont_cols, cont_in, cont_mu, cont_lv = [], [], [], []
        mass_k, mass_in, mass_out = [], [], []
        bin_cols, bin_in, bin_out = [], [], []
        self.categorical: list[tuple[int, slice, slice]] = []  # (column, x slice, params slice)
        col_of_in: list[int] = []
        self.in_slices: list[slice] = []
        i = o = 0
        for j, spec in enumerate(self.columns):
            if spec.kind == "continuous":
                k = len(cont_cols)
                cont_cols.append(j), cont_in.append(i), cont_mu.append(o), cont_lv.append(o + 1)
                width_in, width_out = 1, 2
                if not np.isnan(masses[k]):  # + an "at the point mass" slot and its Bernoulli logit
                    mass_k.append(k), mass_in.append(i + 1), mass_out.append(o + 2)
                    width_in, width_out = 2, 3
            elif spec.kind == "binary":
                bin_cols.append(j), bin_in.append(i), bin_out.append(o)
                width_in = width_out = 1
            else:
                k = len(spec.categories)
                if k == 0:
                    raise DataError("categorical column has no categories in the schema", column=spec.name)
                self.categorical.append((j, slice(i, i + k), slice(o, o + k)))
                width_in = width_out = k
            self.in_slices.append(slice(i, i + width_in))
            col_of_in += [j] * width_in
            i += width_in
            o += width_out
        self.in_dim, self.out_dim = i, o
        lt = lambda v: torch.tensor(v, dtype=torch.long)  # noqa: E731
        self.cont_cols, self.cont_in, self.cont_mu, self.cont_lv = map(lt, (cont_cols, cont_in, cont_mu, cont_lv))
        self.mass_k, self.mass_in, self.mass_out = map(lt, (mass_k, mass_in, mass_out))
        self.mass_values = masses[mass_k]  # (n_mass,) raw value of each point mass
        self.bin_cols, self.bin_in, self.bin_out = map(lt, (bin_cols, bin_in, bin_out))
        self.col_of_in = lt(col_of_in)
        self.continuous_cols = np.array([c.kind == "continuous" for c in self.columns])
        # pieces are built kind by kind; these permutations put them back in schema order
        order = cont_cols + bin_cols + [j for j, _, _ in self.categorical]
        self._col_perm = lt(np.argsort(order, kind="stable").tolist())
        in_order = (cont_in + mass_in + bin_in
                    + [p for _, sl, _ in self.categorical for p in range(sl.start, sl.stop)])
        self._in_perm = lt(np.argsort(in_order, kind="stable").tolist())

    # ------------------------------------------------------------------- fitting
    @classmethod
    def fit(cls, schema: TableSchema, data: pd.DataFrame, transform: str = "standard",
            point_mass_share: float = 0.0) -> "MixedCodec":
        """Standardization (and, for `transform="quantile"`, the quantile → normal maps) from the
        training table's present cells; every column needs one. A continuous column whose most
        frequent value holds at least `point_mass_share` (> 0) of its present cells gets a point mass
        there, and its quantile map is fitted on its other values."""
        if transform not in TRANSFORMS:
            raise ValueError(f"transform must be one of {TRANSFORMS}, got {transform!r}")
        loc, scale, knots, masses = [], [], [], []
        for spec in schema.columns:
            s = data[spec.name]
            if s.notna().sum() == 0:
                raise DataError("the training table has no observed value in this column; cannot estimate it",
                                column=spec.name)
            if spec.kind == "continuous":
                v = pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64)
                v = v[~np.isnan(v)]
                sd = float(v.std(ddof=1)) if len(v) > 1 else 0.0
                loc.append(float(v.mean()))
                scale.append(sd if sd > 1e-12 else 1.0)
                mass = find_point_mass(v, point_mass_share)
                masses.append(mass)
                knots.append(fit_quantile_knots(v if np.isnan(mass) else v[v != mass]))
        return cls(schema, np.array(loc), np.array(scale), knots if transform == "quantile" else None,
                   np.array(masses, dtype=np.float64))

    def at_mass(self, raw: np.ndarray) -> np.ndarray:
        """Raw continuous values (…, n_cont) → bool, True where a value is its column's point mass."""
        with np.errstate(invalid="ignore"):
            return np.asarray(raw, dtype=np.float64) == self.masses

    # ------------------------------------------------ raw ⇄ model space (continuous)
    def forward(self, v: np.ndarray) -> np.ndarray:
        """Raw continuous values (…, n_cont) → model space: standardized, or normal scores."""
        v = np.asarray(v, dtype=np.float64)
        if self.knots is None:
            return (v - self.loc) / self.scale
        out = np.empty_like(v)
        for k, (u, y) in enumerate(self.knots):
            out[..., k] = _pl_map(v[..., k], u, y, _tail_slope(u, y, self.scale[k]))
        return out

    def inverse(self, t: np.ndarray) -> np.ndarray:
        """Model space (…, n_cont) → raw units: the exact inverse of `forward` (up to float rounding)
        on the training range. With quantile maps a score beyond the end knots maps to the training
        min / max: generated values stay in the range seen in training (the average-slope tail of
        `forward` would turn a decoder draw slightly past the top knot of a long-tailed lab such as
        ALT into thousands). Observed cells never go through this (they are returned as given)."""
        t = np.asarray(t, dtype=np.float64)
        if self.knots is None:
            return t * self.scale + self.loc
        out = np.empty_like(t)
        for k, (u, y) in enumerate(self.knots):
            out[..., k] = np.interp(t[..., k], y, u)  # np.interp clamps at the ends; NaN stays NaN
        return out

    def log_jacobian(self, v: np.ndarray) -> np.ndarray:
        """log |d forward / d x_std| at raw values v (…, n_cont), x_std = (x − loc) / scale: added to a
        model-space log-density it gives the density in standardized raw units (0 for "standard").
        At a knot (a repeated lab value) the slope is the mean of the two adjacent segments'."""
        v = np.asarray(v, dtype=np.float64)
        if self.knots is None:
            return np.zeros_like(v)
        h = 1e-7 * self.scale
        slope = (self.forward(v + h) - self.forward(v - h)) / (2.0 * h)
        return np.log(np.maximum(slope * self.scale, 1e-300))

    # ----------------------------------------------------------- table ⇄ arrays
    def encode(self, table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(x float32 (n, in_dim) with 0 in missing cells, present bool (n, n_columns))."""
        n = len(table)
        x = np.zeros((n, self.in_dim), dtype=np.float32)
        present = np.zeros((n, self.n_columns), dtype=bool)
        # continuous + binary columns in one conversion (the per-column pandas path is the slow
        # part of conditioning one row); per-column to_numeric only for odd dtypes
        numeric = [j for j, spec in enumerate(self.columns) if spec.kind != "categorical"]
        if numeric:
            names = [self.columns[j].name for j in numeric]
            try:
                v = table[names].to_numpy(dtype=np.float64, na_value=np.nan)
            except (TypeError, ValueError):
                v = np.column_stack([pd.to_numeric(table[name], errors="coerce").to_numpy(dtype=np.float64)
                                     for name in names])
            ok = ~np.isnan(v)
            kinds = np.array([self.columns[j].kind == "continuous" for j in numeric])
            at = self.at_mass(v[:, kinds])  # a point-mass cell: indicator 1, value slot 0
            v[:, kinds] = np.where(at, 0.0, self.forward(v[:, kinds]))
            slots = [self.in_slices[j].start for j in numeric]
            x[:, slots] = np.where(ok, v, 0.0)
            present[:, numeric] = ok
            if len(self.mass_k):
                x[:, self.mass_in.numpy()] = at[:, self.mass_k.numpy()]
        for j, in_sl, _ in self.categorical:
            spec = self.columns[j]
            s = table[spec.name]
            ok = s.notna().to_numpy()
            codes = pd.Categorical(s[ok].astype(str), categories=_category_strings(spec)).codes
            if (codes < 0).any():
                bad = s[ok][codes < 0].iloc[0]
                raise DataError(f"unknown category {bad!r}", column=spec.name)
            x[np.flatnonzero(ok), in_sl.start + codes] = 1.0
            present[:, j] = ok
        return x, present

    def decode(self, x: np.ndarray) -> pd.DataFrame:
        """Encoded (n, in_dim) → table in raw units: binary = 1 above 0.5, categorical = argmax."""
        cols: dict[str, Any] = {}
        raw = self.inverse(x[:, self.cont_in.numpy()]) if len(self.cont_cols) else None
        if len(self.mass_k):
            k = self.mass_k.numpy()
            raw[:, k] = np.where(x[:, self.mass_in.numpy()] > 0.5, self.mass_values, raw[:, k])
        c = 0
        for j, spec in enumerate(self.columns):
            sl = self.in_slices[j]
            if spec.kind == "continuous":
                cols[spec.name] = raw[:, c]
                c += 1
            elif spec.kind == "binary":
                cols[spec.name] = (x[:, sl.start] > 0.5).astype(np.int64)
            else:
                levels = np.empty(len(spec.categories), dtype=object)
                levels[:] = list(spec.categories)
                cols[spec.name] = pd.Series(levels[np.argmax(x[:, sl], axis=1)]).infer_objects()
        return pd.DataFrame(cols, columns=self.schema.names)

    def expand(self, col_mask: torch.Tensor) -> torch.Tensor:
        """Per-column mask (…, n_columns) → per-encoded-slot mask (…, in_dim)."""
        return col_mask.index_select(-1, self.col_of_in)

    # ------------------------------------------------------------ likelihoods
    def log_lik(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log p(x_j | params) per column, (…, n_columns); leading dims broadcast.

        Continuous: Gaussian density of the standardized value; binary: Bernoulli; categorical:
        softmax. Cells missing in `x` give finite junk: multiply by a mask before summing.
        """
        lead = torch.broadcast_shapes(params.shape[:-1], x.shape[:-1])
        params = params.expand(*lead, self.out_dim)
        x = x.expand(*lead, self.in_dim)
        pieces = []
        if len(self.cont_cols):
            mu = params.index_select(-1, self.cont_mu)
            lv = soft_floor(params.index_select(-1, self.cont_lv), DECODER_MIN_LOG_VAR)
            ll = gaussian_log_prob(x.index_select(-1, self.cont_in), mu, lv)
            if len(self.mass_k):  # P(at mass), or P(not at mass) x the density of the value
                ind = x.index_select(-1, self.mass_in)
                logit = params.index_select(-1, self.mass_out)
                mixed = (ind * F.logsigmoid(logit)
                         + (1.0 - ind) * (F.logsigmoid(-logit) + ll.index_select(-1, self.mass_k)))
                ll = ll.index_copy(-1, self.mass_k, mixed)
            pieces.append(ll)
        if len(self.bin_cols):
            logits = params.index_select(-1, self.bin_out)
            pieces.append(-F.binary_cross_entropy_with_logits(logits, x.index_select(-1, self.bin_in),
                                                              reduction="none"))
        for _, in_sl, out_sl in self.categorical:
            logp = F.log_softmax(params[..., out_sl], dim=-1)
            pieces.append((logp * x[..., in_sl]).sum(-1, keepdim=True))
        return torch.cat(pieces, dim=-1).index_select(-1, self._col_perm)

    def sample(self, params: torch.Tensor, noise: bool = True) -> torch.Tensor:
        """One draw per row from the decoder likelihood, encoded (…, in_dim).

        Continuous: mean + sd·eps (`noise=False`: the mean). Binary: Bernoulli. Categorical:
        Gumbel-max (an exact categorical draw, vectorized).
        """
        pieces = []
        if len(self.cont_cols):
            mu = params.index_select(-1, self.cont_mu)
            if noise:
                lv = soft_floor(params.index_select(-1, self.cont_lv), DECODER_MIN_LOG_VAR)
                mu = mu + torch.exp(0.5 * lv) * torch.randn(mu.shape, dtype=mu.dtype)
            if len(self.mass_k):  # at the point mass with its probability (value slot 0, as encoded)
                p = torch.sigmoid(params.index_select(-1, self.mass_out))
                ind = (torch.rand(p.shape, dtype=p.dtype) < p).to(params.dtype)
                mu = mu.index_copy(-1, self.mass_k, mu.index_select(-1, self.mass_k) * (1.0 - ind))
            pieces.append(mu)
            if len(self.mass_k):
                pieces.append(ind)
        if len(self.bin_cols):
            p = torch.sigmoid(params.index_select(-1, self.bin_out))
            pieces.append((torch.rand(p.shape, dtype=p.dtype) < p).to(params.dtype))
        for _, in_sl, out_sl in self.categorical:
            logits = params[..., out_sl]
            u = torch.rand(logits.shape, dtype=logits.dtype).clamp_min(1e-12)
            idx = torch.argmax(logits - torch.log(-torch.log(u)), dim=-1)
            pieces.append(F.one_hot(idx, in_sl.stop - in_sl.start).to(params.dtype))
        return torch.cat(pieces, dim=-1).index_select(-1, self._in_perm)


# ------------------------------------------------------------------ generator base
def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or int(value) != value or int(value) < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _count(name: str, value: Any) -> int:
    if isinstance(value, bool) or int(value) != value or int(value) < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


class TorchGenerator(Generator):
    """Base of the VAE family: fit loop, generation, scoring and (de)serialisation.

    Subclasses set `model_type`, call `super().__init__(**their hyper-parameters)` and implement
    `_build_nets`, `_loss`, `_prior_latent`, `_conditional_latent` and `_decode_params`.
    Learned state: `codec_` (standardization), `nets_` (an nn.ModuleDict), `history_`
    (mean training loss per epoch).
    """

    model_type: ClassVar[str] = ""

    def __init__(self, *, latent_dim: int = 16, hidden: Sequence[int] = (256, 256), epochs: int | None = None,
                 batch_size: int = 256, lr: float = 1e-3, seed: int = 0, mask_rate: float | None = None,
                 sample_noise: bool = True, transform: str = "quantile", lr_schedule: str = "cosine",
                 gibbs_rounds: int = 0, prior: str = "aggregate", calibrate_marginals: bool = True,
                 column_weights: Mapping[str, float] | str | None = None, point_mass_share: float = 0.05,
                 **extra: Any):
        """The hyper-parameters every model of the family shares (subclasses add theirs as `extra`)."""
        if transform not in TRANSFORMS:
            raise ValueError(f"transform must be one of {TRANSFORMS}, got {transform!r}")
        if prior not in PRIORS:
            raise ValueError(f"prior must be one of {PRIORS}, got {prior!r}")
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {lr_schedule!r}")
        hidden = [_positive_int("hidden sizes", h) for h in hidden]
        if mask_rate is not None and not 0.0 <= float(mask_rate) < 1.0:
            raise ValueError(f"mask_rate must be None or in [0, 1), got {mask_rate!r}")
        if not float(lr) > 0:
            raise ValueError(f"lr must be positive, got {lr!r}")
        if not 0.0 <= float(point_mass_share) <= 1.0:
            raise ValueError(f"point_mass_share must be in [0, 1] (0: no point masses), got {point_mass_share!r}")
        super().__init__(latent_dim=_positive_int("latent_dim", latent_dim), hidden=hidden,
                         epochs=None if epochs is None else _positive_int("epochs", epochs), batch_size=_positive_int("batch_size", batch_size),
                         lr=float(lr), seed=int(seed), mask_rate=None if mask_rate is None else float(mask_rate),
                         sample_noise=bool(sample_noise), transform=str(transform),
                         lr_schedule=str(lr_schedule), gibbs_rounds=_count("gibbs_rounds", gibbs_rounds),
                         prior=str(prior), calibrate_marginals=bool(calibrate_marginals),
                         column_weights=parse_column_weights(column_weights),
                         point_mass_share=float(point_mass_share), **extra)
        for k, v in self.hyperparameters.items():
            setattr(self, k, v)
        self.hidden = tuple(self.hidden)
        self.codec_: MixedCodec | None = None
        self.nets_: nn.ModuleDict | None = None
        self.history_: list[float] = []
        # unconditional sampler fitted after training (see "Sampling from noise" in the module doc);
        # None = the model's own prior / no calibration (also what a model saved without them gets)
        self.gmm_: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # (log weights, means, Cholesky)
        self.calibration_: list[tuple[np.ndarray, np.ndarray]] | None = None
        self.loss_weights_: torch.Tensor | None = None  # per column, set by fit from `column_weights`

    # ---------------------------------------------------------- for subclasses
    @abstractmethod
    def _build_nets(self) -> dict[str, nn.Module]:
        """Fresh networks for `self.codec_`'s dimensions (same names and shapes every time)."""

    @abstractmethod
    def _loss(self, x: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """Mean training loss of one batch (x encoded with 0 in missing cells, present per column)."""

    @abstractmethod
    def _prior_latent(self, n: int) -> torch.Tensor:
        """(n, latent_dim) draws of z for unconditional sampling."""

    @abstractmethod
    def _conditional_latent(self, x: torch.Tensor, observed: torch.Tensor, k: int) -> torch.Tensor:
        """(k, n, latent_dim) draws of z given the observed cells (x is 0 where not observed)."""

    @abstractmethod
    def _decode_params(self, z: torch.Tensor, x: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
        """Decoder likelihood parameters (…, out_dim) for latent z (x/observed broadcast over z's lead dims)."""

    @abstractmethod
    def _posterior(self, x: torch.Tensor, present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log-variance) of the posterior over z of fully seen training rows whose latent the
        decoder turns into a whole row with nothing observed: its average over the training rows is
        the aggregate posterior that `prior="aggregate"` fits a mixture to."""

    # ------------------------------------------------------------------ helpers
    def _reconstruction(self, ll: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
        """Negative reconstruction log-likelihood per row: the cells `scored` marks, each column's
        log-likelihood times its `column_weights` weight (1 unless set)."""
        w = scored.to(ll.dtype)
        if self.loss_weights_ is not None:
            w = w * self.loss_weights_
        return -(ll * w).sum(-1)

    def _observed_input(self, x: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
        """[x with non-observed slots zeroed, observed mask]: what a net may see of a row."""
        m = observed.to(x.dtype)
        return torch.cat([x * self.codec_.expand(m), m], dim=-1)

    def _gaussian_net(self, name: str, x: torch.Tensor, observed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log-variance) of the diagonal Gaussian that net `name` emits from what it may see of a row."""
        return split_gaussian(self.nets_[name](self._observed_input(x, observed)))

    @staticmethod
    def _torch_seed(rng: np.random.Generator) -> int:
        return int(rng.integers(0, 2**63 - 1))

    def _check_fitted(self) -> None:
        super()._check_fitted()
        if self.codec_ is None or self.nets_ is None:
            raise ConditioningError(f"{type(self).__name__} is not fitted: call fit() or load a saved model")

    def epochs_for(self, n_rows: int) -> int:
        """Epochs a fit on `n_rows` rows runs: `epochs` if set, else max(MIN_EPOCHS, enough epochs for
        MIN_STEPS optimizer steps) — a small table gets more passes, a large one keeps MIN_EPOCHS."""
        if self.epochs is not None:
            return self.epochs
        return max(MIN_EPOCHS, math.ceil(MIN_STEPS / max(1, math.ceil(n_rows / self.batch_size))))

    # ---------------------------------------------------------------------- fit
    def _fit(self, data: pd.DataFrame) -> None:
        self.codec_ = MixedCodec.fit(self.schema_, data, self.transform, self.point_mass_share)
        self.loss_weights_ = None
        if self.column_weights:
            names = [c.name for c in self.codec_.columns]
            unknown = sorted(set(self.column_weights) - set(names))
            if unknown:
                raise DataError(f"{type(self).__name__}: column_weights names column(s) {unknown} that the "
                                f"training table does not have (columns: {names})")
            self.loss_weights_ = torch.tensor([self.column_weights.get(n, 1.0) for n in names], dtype=torch.float32)
        x_np, present_np = self.codec_.encode(data)
        x, present = torch.from_numpy(x_np), torch.from_numpy(present_np)
        n = len(x)
        history: list[float] = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.nets_ = nn.ModuleDict(self._build_nets())
            self.nets_.train()
            params = list(self.nets_.parameters())
            opt = torch.optim.Adam(params, lr=self.lr)
            epochs = self.epochs_for(n)
            total_steps = epochs * math.ceil(n / self.batch_size)
            step = 0
            for epoch in range(epochs):
                perm = torch.randperm(n)
                total = 0.0
                for start in range(0, n, self.batch_size):
                    if self.lr_schedule == "cosine":
                        frac = step / max(1, total_steps - 1)
                        for g in opt.param_groups:
                            g["lr"] = self.lr * (LR_FINAL + (1 - LR_FINAL) * 0.5 * (1 + math.cos(math.pi * frac)))
                    step += 1
                    idx = perm[start:start + self.batch_size]
                    loss = self._loss(x[idx], present[idx])
                    if not torch.isfinite(loss):
                        raise DataError(f"{type(self).__name__}: training loss became {loss.item()} in epoch "
                                        f"{epoch + 1}; try a smaller lr")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    nn.utils.clip_grad_norm_(params, GRAD_CLIP)
                    opt.step()
                    total += float(loss.detach()) * len(idx)
                history.append(total / n)
        self.nets_.eval()
        self.history_ = history
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(self.seed + 1)
            self._fit_sampler(x, present, data)

    def _fit_sampler(self, x: torch.Tensor, present: torch.Tensor, data: pd.DataFrame) -> None:
        """After training: the aggregate prior (`prior="aggregate"`), then the marginal calibration
        maps (`calibrate_marginals`), fitted on draws from the sampler as it then stands."""
        self.gmm_ = self.calibration_ = None
        if self.prior == "aggregate":
            self.gmm_ = self._fit_aggregate_prior(x, present)
        codec = self.codec_
        if self.calibrate_marginals and len(codec.cont_cols):
            n_cont = len(codec.cont_cols)
            n_draws = calibration_draws(len(data), n_cont)
            t = torch.empty(n_draws, n_cont, dtype=torch.float32)
            at = torch.zeros(n_draws, n_cont, dtype=torch.bool)  # draws at a point mass: not calibrated
            for start in range(0, n_draws, CHUNK):  # chunk by chunk: only the continuous slots are kept
                m = min(CHUNK, n_draws - start)
                xb = self._draw_encoded(m)
                t[start:start + m] = xb.index_select(-1, codec.cont_in)
                if len(codec.mass_k):
                    at[start:start + m, codec.mass_k] = xb.index_select(-1, codec.mass_in) > 0.5
            names = [codec.columns[j].name for j in codec.cont_cols.tolist()]
            # training values in model space, in float64 so a tie lands exactly on its knot; a point-mass
            # cell has no model-space value (the map sends the other values to the other values)
            raw = data[names].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
            y = np.where(codec.at_mass(raw), np.nan, codec.forward(raw))
            self.calibration_ = [fit_calibration_map(t[~at[:, k], k].numpy(), y[~np.isnan(y[:, k]), k])
                                 for k in range(n_cont)]

    def _fit_aggregate_prior(self, x: torch.Tensor, present: torch.Tensor
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Full-covariance Gaussian mixture fitted to draws from the aggregate posterior
        (1/n) Σ_i q(z | x_i): up to 4 draws per training row, at most GMM_MAX_POINTS; the number of
        components (GMM_COMPONENTS) is the one with the best likelihood on a held-out fifth."""
        import warnings

        from sklearn.exceptions import ConvergenceWarning
        from sklearn.mixture import GaussianMixture

        n, L = len(x), self.latent_dim
        parts = [self._posterior(x[s:s + CHUNK], present[s:s + CHUNK]) for s in range(0, n, CHUNK)]
        mu, lv = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        z = reparameterize(mu, lv, max(1, min(4, GMM_MAX_POINTS // n))).reshape(-1, L)
        z = z[torch.randperm(len(z))[:GMM_MAX_POINTS]].double().numpy()

        def gmm(k: int, data: np.ndarray) -> GaussianMixture:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                return GaussianMixture(k, covariance_type="full", reg_covar=GMM_REG_COVAR, max_iter=200,
                                       random_state=self.seed).fit(data)

        hold, rest = z[:len(z) // 5], z[len(z) // 5:]
        best_k, best_ll = 1, -math.inf
        for k in GMM_COMPONENTS:
            if len(hold) < 2 or len(rest) < 10 * k:
                break
            ll = gmm(k, rest).score(hold)
            if ll > best_ll:
                best_k, best_ll = k, ll
        g = gmm(best_k, z)
        return (torch.from_numpy(np.log(g.weights_)).float(), torch.from_numpy(g.means_).float(),
                torch.from_numpy(np.linalg.cholesky(g.covariances_)).float())

    # --------------------------------------------------------------- generation
    def _sample_prior(self, n: int) -> torch.Tensor:
        """(n, latent_dim) latents for unconditional sampling: the aggregate prior if one was fitted."""
        if self.gmm_ is None:
            return self._prior_latent(n)
        log_w, means, chol = self.gmm_
        comp = torch.multinomial(torch.softmax(log_w, 0), n, replacement=True)
        eps = torch.randn(n, means.shape[1], 1, dtype=means.dtype)
        return means[comp] + (chol[comp] @ eps).squeeze(-1)

    def _draw_encoded(self, n: int) -> torch.Tensor:
        """n unconditional rows, encoded (n, in_dim), before marginal calibration (torch RNG as given)."""
        codec = self.codec_
        out = []
        for start in range(0, n, CHUNK):
            m = min(CHUNK, n - start)
            x0 = torch.zeros(m, codec.in_dim)
            o0 = torch.zeros(m, codec.n_columns, dtype=torch.bool)
            xb = codec.sample(self._decode_params(self._sample_prior(m), x0, o0), noise=self.sample_noise)
            for _ in range(self.gibbs_rounds):  # re-generate a random half of each row given the rest
                ob = torch.rand(m, codec.n_columns) >= 0.5
                xo = xb * codec.expand(ob.to(xb.dtype))
                draw = codec.sample(self._decode_params(self._conditional_latent(xo, ob, 1)[0], xo, ob),
                                    noise=self.sample_noise)
                xb = torch.where(codec.expand(ob), xb, draw)
            out.append(xb)
        return torch.cat(out)

    def _calibrate(self, x: np.ndarray) -> np.ndarray:
        """Encoded rows with each continuous slot sent through its calibration map (a copy)."""
        x = np.array(x, dtype=np.float64)
        if self.calibration_ is not None:
            for k, (u, y) in zip(self.codec_.cont_in.tolist(), self.calibration_):
                x[:, k] = np.interp(x[:, k], u, y)
        return x

    def _sample(self, n: int, rng: np.random.Generator, seed: int) -> pd.DataFrame:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(self._torch_seed(rng))
            x = self._draw_encoded(n)
        return self.codec_.decode(self._calibrate(x.numpy()))

    def _condition_rows(self, table: pd.DataFrame, observed: np.ndarray, rng: np.random.Generator,
                        seed: int) -> pd.DataFrame:
        """One z per row from the conditional latent, one draw from the decoder; observed slots kept."""
        codec = self.codec_
        x_np, present = codec.encode(table)
        x = torch.from_numpy(x_np)
        o = torch.from_numpy(np.asarray(observed, dtype=bool) & present)
        out = []
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(self._torch_seed(rng))
            for start in range(0, len(x), CHUNK):
                xb, ob = x[start:start + CHUNK], o[start:start + CHUNK]
                xb = xb * codec.expand(ob.to(xb.dtype))
                z = self._conditional_latent(xb, ob, 1)[0]
                draw = codec.sample(self._decode_params(z, xb, ob), noise=self.sample_noise)
                out.append(torch.where(codec.expand(ob), xb, draw))
        return codec.decode(torch.cat(out).numpy())

    # ------------------------------------------------------------------ scoring
    def log_prob_unobserved(self, table: pd.DataFrame, observed_mask: np.ndarray | pd.DataFrame,
                            num_samples: int = 20, seed: int = 0, include_discrete: bool = False) -> np.ndarray:
        """Per-row Monte-Carlo estimate of log p(x_u | x_o) (estimator: see the module doc).

        Continuous cells are scored in standardized units (no Jacobian), comparable with
        `MultivariateGaussian.log_prob_unobserved`. `observed_mask` (n, n_columns, schema order,
        or a DataFrame with the schema's columns) marks the cells conditioned on; the other cells
        that hold a value are scored. Unobserved binary/categorical cells are marginalized out
        unless `include_discrete` (then their log-probabilities are added). Rows with nothing to
        score get 0.0. Deterministic for a fixed `seed`.
        """
        table, observed_mask = self._scored_inputs(table, observed_mask)
        num_samples = self._check_n(num_samples)
        codec = self.codec_
        x_np, present = codec.encode(table)
        scored = ~observed_mask & present
        if not include_discrete:
            scored &= codec.continuous_cols[None, :]
        x = torch.from_numpy(x_np)
        o = torch.from_numpy(observed_mask & present)
        s = torch.from_numpy(scored).to(x.dtype)
        out = []
        chunk = max(1, CHUNK * 4 // num_samples)
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(self._torch_seed(np.random.default_rng(seed)))
            for start in range(0, len(x), chunk):
                xb, ob, sb = x[start:start + chunk], o[start:start + chunk], s[start:start + chunk]
                x_in = xb * codec.expand(ob.to(xb.dtype))
                z = self._conditional_latent(x_in, ob, num_samples)           # (k, n, L)
                params = self._decode_params(z, x_in, ob)                      # (k, n, out_dim)
                ll = (codec.log_lik(params, xb) * sb).sum(-1)                  # (k, n)
                out.append(torch.logsumexp(ll.double(), dim=0) - math.log(num_samples))
        result = torch.cat(out).numpy() if out else np.zeros(0)
        if codec.knots is not None and len(codec.cont_cols):
            # change of variables: model-space density → density of the standardized raw value
            cont = codec.cont_cols.numpy()
            raw = table[[codec.columns[j].name for j in cont]].to_numpy(dtype=np.float64, na_value=np.nan)
            # a point-mass cell's term is a probability (no density, no Jacobian)
            jac = np.where(scored[:, cont] & ~codec.at_mass(raw), codec.log_jacobian(np.nan_to_num(raw)), 0.0)
            result = result + jac.sum(axis=1)
        result[~scored.any(axis=1)] = 0.0
        return result

    def conditional_mean(self, table: pd.DataFrame, num_samples: int = 100, seed: int = 0) -> pd.DataFrame:
        """Point imputation for squared error: E[x_u | x_o] per NaN cell, observed cells kept as given.

        Monte Carlo over `num_samples` latent draws z ~ the conditional latent distribution: a
        continuous cell gets the mean over draws of its raw-unit value (with the "standard"
        transform the decoder mean, exact given z; with "quantile" the decoder's Gaussian draw
        mapped back through the inverse quantile map, since the mean does not commute with it);
        a binary cell gets P(x = 1) and a categorical one its most probable level. Unlike
        `impute` this is not a sampled record (binary cells hold probabilities); it is the
        estimate that minimises expected squared error, the right input to an MSE benchmark.
        Deterministic for a fixed `seed`.
        """
        self._check_fitted()
        num_samples = self._check_n(num_samples)
        self._check_observed_names(table.columns)
        table = table.reindex(columns=self.schema_.names).reset_index(drop=True)
        self.schema_.validate(table, where="observed values")
        codec = self.codec_
        x_np, present = codec.encode(table)
        x, o = torch.from_numpy(x_np), torch.from_numpy(present)
        cont_in, cont_mu, cont_lv = codec.cont_in, codec.cont_mu, codec.cont_lv
        out = np.zeros((len(table), codec.n_columns))
        chunk = max(1, CHUNK * 4 // num_samples)
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(self._torch_seed(np.random.default_rng(seed)))
            for start in range(0, len(x), chunk):
                xb, ob = x[start:start + chunk], o[start:start + chunk]
                params = self._decode_params(self._conditional_latent(xb, ob, num_samples), xb, ob)
                rows = slice(start, start + len(xb))
                if len(codec.cont_cols):
                    mu = params.index_select(-1, cont_mu)
                    if codec.knots is not None:
                        lv = soft_floor(params.index_select(-1, cont_lv), DECODER_MIN_LOG_VAR)
                        mu = mu + torch.exp(0.5 * lv) * torch.randn(mu.shape, dtype=mu.dtype)
                    draws = codec.inverse(mu.double().numpy())
                    if len(codec.mass_k):  # P(at mass) x the mass + P(not) x the value
                        p = torch.sigmoid(params.index_select(-1, codec.mass_out)).double().numpy()
                        k = codec.mass_k.numpy()
                        draws[..., k] = p * codec.mass_values + (1.0 - p) * draws[..., k]
                    out[rows, codec.cont_cols.numpy()] = draws.mean(0)
                if len(codec.bin_cols):
                    p = torch.sigmoid(params.index_select(-1, codec.bin_out)).mean(0)
                    out[rows, codec.bin_cols.numpy()] = p.double().numpy()
                for j, _, out_sl in codec.categorical:
                    out[rows, j] = torch.softmax(params[..., out_sl], dim=-1).mean(0).argmax(-1).double().numpy()
        result = pd.DataFrame({spec.name: out[:, j] for j, spec in enumerate(codec.columns)})
        for j, spec in enumerate(codec.columns):
            if spec.kind == "categorical":
                levels = np.empty(len(spec.categories), dtype=object)
                levels[:] = list(spec.categories)
                result[spec.name] = levels[out[:, j].astype(np.int64)]
        return self._restore_observed(result, table, table.notna().to_numpy())  # observed cells as given

    # -------------------------------------------------------------------- state
    def get_state(self) -> tuple[dict[str, np.ndarray], dict]:
        tensors = {"codec.loc": self.codec_.loc.astype(np.float64), "codec.scale": self.codec_.scale.astype(np.float64)}
        if self.codec_.knots is not None:  # quantile maps, concatenated, with each column's knot count
            tensors["codec.knots_u"] = np.concatenate([u for u, _ in self.codec_.knots])
            tensors["codec.knots_y"] = np.concatenate([y for _, y in self.codec_.knots])
            tensors["codec.knots_len"] = np.array([len(u) for u, _ in self.codec_.knots], dtype=np.int64)
        if len(self.codec_.mass_k):  # which continuous columns have a point mass, and where
            tensors["codec.mass_k"] = self.codec_.mass_k.numpy().astype(np.int64)
            tensors["codec.mass_values"] = self.codec_.mass_values.astype(np.float64)
        if self.gmm_ is not None:
            for key, value in zip(("log_weights", "means", "chol"), self.gmm_):
                tensors[f"sampler.gmm_{key}"] = value.numpy().copy()
        if self.calibration_ is not None:
            tensors["sampler.calib_u"] = np.concatenate([u for u, _ in self.calibration_])
            tensors["sampler.calib_y"] = np.concatenate([y for _, y in self.calibration_])
            tensors["sampler.calib_len"] = np.array([len(u) for u, _ in self.calibration_], dtype=np.int64)
        for key, value in self.nets_.state_dict().items():
            tensors[f"nets.{key}"] = value.detach().cpu().numpy().copy()
        state = {"history": [float(h) for h in self.history_],
                 "architecture": {"in_dim": self.codec_.in_dim, "out_dim": self.codec_.out_dim,
                                  "n_columns": self.codec_.n_columns,
                                  "nets": {name: repr(net) for name, net in self.nets_.items()}}}
        return tensors, state

    def set_state(self, tensors: dict[str, np.ndarray], state: dict) -> None:
        for key in ("codec.loc", "codec.scale"):
            if key not in tensors:
                raise ModelFileError(f"saved state: tensor {key!r} is missing")
        knots = None
        if self.transform == "quantile":
            if not all(k in tensors for k in ("codec.knots_u", "codec.knots_y", "codec.knots_len")):
                raise ModelFileError("saved state: transform is 'quantile' but the quantile maps "
                                     "(codec.knots_u / _y / _len) are missing")
            knots = _split_knots(tensors, "codec.knots", "quantile-map")
        self.codec_ = MixedCodec(self.schema_, tensors["codec.loc"], tensors["codec.scale"], knots,
                                 _saved_masses(tensors, len(tensors["codec.loc"])))
        self._set_sampler_state(tensors)
        with torch.random.fork_rng(devices=[]):  # building nets draws initial weights: keep the caller's RNG
            nets = nn.ModuleDict(self._build_nets())
        arch = state.get("architecture", {}) if isinstance(state, dict) else {}
        want = {"in_dim": self.codec_.in_dim, "out_dim": self.codec_.out_dim, "n_columns": self.codec_.n_columns}
        if any(arch.get(k) != v for k, v in want.items()):
            raise ModelFileError(f"saved architecture {({k: arch.get(k) for k in want})} does not match the schema "
                                 f"and hyper-parameters ({want})")
        weights = {k[len("nets."):]: torch.from_numpy(np.array(v, dtype=np.float32))
                   for k, v in tensors.items() if k.startswith("nets.")}
        expected = nets.state_dict()
        if set(weights) != set(expected):
            missing, extra = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
            raise ModelFileError(f"saved weights do not fit the network: missing {missing[:5]}, unexpected {extra[:5]}")
        for k, v in expected.items():
            if tuple(weights[k].shape) != tuple(v.shape):
                raise ModelFileError(f"saved weight {k!r} has shape {tuple(weights[k].shape)}, "
                                     f"the network expects {tuple(v.shape)}")
        nets.load_state_dict(weights, strict=True)
        nets.eval()
        self.nets_ = nets
        self.history_ = [float(h) for h in state.get("history", [])]

    def _set_sampler_state(self, tensors: dict[str, np.ndarray]) -> None:
        """Aggregate prior and calibration maps from a saved state; a file without them (saved before
        they existed) samples as it did then: the model's own prior, no calibration."""
        self.gmm_ = self.calibration_ = None
        keys = ("sampler.gmm_log_weights", "sampler.gmm_means", "sampler.gmm_chol")
        if any(k in tensors for k in keys):
            if not all(k in tensors for k in keys):
                raise ModelFileError(f"saved state: the aggregate prior needs all of {keys}")
            log_w, means, chol = (torch.from_numpy(np.array(tensors[k], dtype=np.float32)) for k in keys)
            K, L = len(log_w), self.latent_dim
            if (log_w.shape != (K,) or K < 1 or means.shape != (K, L) or chol.shape != (K, L, L)
                    or not all(torch.isfinite(t).all() for t in (log_w, means, chol))):
                raise ModelFileError(f"saved state: aggregate prior has shapes {tuple(log_w.shape)}/"
                                     f"{tuple(means.shape)}/{tuple(chol.shape)} for latent_dim {L}")
            self.gmm_ = (log_w, means, chol)
        if any(k.startswith("sampler.calib_") for k in tensors):
            calib = _split_knots(tensors, "sampler.calib", "calibration-map")
            if len(calib) != len(self.codec_.cont_cols):
                raise ModelFileError(f"saved state: {len(calib)} calibration maps for "
                                     f"{len(self.codec_.cont_cols)} continuous column(s)")
            self.calibration_ = [_check_calibration(np.asarray(u, np.float64), np.asarray(y, np.float64), k)
                                 for k, (u, y) in enumerate(calib)]


def _saved_masses(tensors: dict[str, np.ndarray], n_cont: int) -> np.ndarray | None:
    """Point masses from `codec.mass_k` / `codec.mass_values`; None (no point mass) when a file has
    neither (a model without point masses, or one saved before they existed)."""
    keys = ("codec.mass_k", "codec.mass_values")
    if not any(k in tensors for k in keys):
        return None
    if not all(k in tensors for k in keys):
        raise ModelFileError(f"saved state: point masses need both of {keys}")
    k = np.asarray(tensors[keys[0]]).reshape(-1)
    v = np.asarray(tensors[keys[1]], dtype=np.float64).reshape(-1)
    if (len(k) != len(v) or not np.isfinite(v).all() or not np.issubdtype(k.dtype, np.integer)
            or (k < 0).any() or (k >= n_cont).any() or len(np.unique(k)) != len(k)):
        raise ModelFileError(f"saved state: point masses {k.tolist()} / {v.tolist()} do not fit "
                             f"{n_cont} continuous column(s)")
    masses = np.full(n_cont, np.nan)
    masses[k] = v
    return masses


def _split_knots(tensors: dict[str, np.ndarray], prefix: str, what: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per-column (u, y) knots saved as `prefix`_u / _y (concatenated) and _len (knots per column)."""
    keys = [f"{prefix}_{k}" for k in ("u", "y", "len")]
    if not all(k in tensors for k in keys):
        raise ModelFileError(f"saved state: {what} tensors {keys} are incomplete")
    lens = np.asarray(tensors[keys[2]], dtype=np.int64)
    u_all, y_all = np.asarray(tensors[keys[0]]), np.asarray(tensors[keys[1]])
    if lens.ndim != 1 or (lens < 1).any() or lens.sum() != len(u_all) or len(u_all) != len(y_all):
        raise ModelFileError(f"saved state: {what} lengths do not add up")
    cuts = np.cumsum(lens)[:-1]
    return list(zip(np.split(u_all, cuts), np.split(y_all, cuts)))
