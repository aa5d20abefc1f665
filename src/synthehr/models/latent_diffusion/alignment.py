"""Latent-space alignment for missing modalities (FLEXGEN-EHR §4.3, Algorithm 1).

Records that carry only one modality have only one embedding.  FLEXGEN-EHR imputes the other
embedding in three steps:

1. **Correspondence by entropic Gromov–Wasserstein.**  Within each embedding space the structure
   is summarised by a cosine-similarity matrix (C^T over temporal embeddings, C^S over static
   ones).  The paper's label-aware loss is

       L(C^T_ik, C^S_jl) = ½ (y_i y_k C^T_ik − y_j y_l C^S_jl)²

   (i, k index temporal-side records; j, l static-side records).  Because y_i y_k only multiplies
   C^T_ik, this loss is *exactly* the ordinary square loss between the label-weighted matrices
   C^T' = (y yᵀ) ∘ C^T and C^S' = (y yᵀ) ∘ C^S, so POT's `entropic_gromov_wasserstein` with
   ``loss_fun="square_loss"`` on (C^T', C^S') solves eq. (6) (POT's square loss is ½-free; a
   constant factor only rescales ε).

   Label coding: y ∈ {0, 1} would zero every similarity that involves a label-0 record and throw
   away most of the geometry, so labels are coded ±1 (y = 2·label − 1).  Then y_i y_k = +1 for
   same-outcome pairs and −1 otherwise, and matching a same-outcome pair onto a mixed-outcome
   pair costs (C^T + C^S)² instead of (C^T − C^S)²: the "penalise mis-correspondence between
   pairs with different outcomes" the paper describes.  A record without a label gets weight +1.

2. **Least-squares map.**  The coupling Γ (temporal × static) turns into pseudo-pairs by the
   barycentric projection ẑ^S_i = Σ_j Γ_ij z^S_j / Σ_j Γ_ij, and A solves
   min_A ||Ẑ^S − A Z^T||² (eq. 7; an affine map with a small ridge, fitted on the pseudo-pairs plus
   any records that carry both modalities, which are exact pairs).  The reverse map (static →
   temporal) uses Γᵀ: with symmetric square loss the reversed GW problem is the transposed one.

3. **Imputation.**  z^S = A z^T for temporal-only records, z^T = B z^S for static-only ones.

`knn_impute` is the comparison of §5.5: the partner embedding is the mean of the k nearest
complete records' partner embeddings (nearest in the observed modality's embedding space).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

__all__ = ["AffineMap", "barycentric_projection", "cosine_similarity", "fit_affine_map", "gw_coupling",
           "knn_impute", "label_signs"]


def cosine_similarity(z: np.ndarray) -> np.ndarray:
    """Cosine similarity of the centred rows of `z` (centring makes the angles informative)."""
    z = np.asarray(z, dtype=float)
    zc = z - z.mean(axis=0, keepdims=True)
    norm = np.linalg.norm(zc, axis=1, keepdims=True)
    zc = zc / np.where(norm > 1e-12, norm, 1.0)
    return zc @ zc.T


def label_signs(y: np.ndarray | None, n: int) -> np.ndarray:
    """±1 coding of binary labels (label 1 → +1, label 0 → −1); unknown (negative/NaN) → +1."""
    if y is None:
        return np.ones(n)
    y = np.asarray(y, dtype=float).ravel()
    s = np.where(y >= 1, 1.0, -1.0)
    s[~np.isfinite(y) | (y < 0)] = 1.0
    return s


def gw_coupling(z_src: np.ndarray, z_tgt: np.ndarray, y_src: np.ndarray | None = None,
                y_tgt: np.ndarray | None = None, *, epsilon: float = 0.01, label_aware: bool = True,
                max_iter: int = 50, tol: float = 1e-5, sinkhorn_iter: int = 100) -> np.ndarray:
    """Entropic GW coupling Γ (n_src × n_tgt, rows sum to 1/n_src) with the paper's label-aware loss.

    If Sinkhorn fails at `epsilon` (the plan does not sum to one or holds NaN), ε is doubled up to
    six times: a blurrier but valid coupling is better than none.  `max_iter` outer (projected
    gradient) iterations, each an inner Sinkhorn of at most `sinkhorn_iter` iterations; BLAS runs on
    one thread (on a shared CPU that is about 3x faster for these small matrices).
    """
    try:
        import ot
    except ImportError as e:  # POT is what solves eq. (6)
        raise ImportError(f"flexgen's Gromov-Wasserstein alignment needs POT: pip install POT ({e})") from e
    from threadpoolctl import threadpool_limits

    c1, c2 = cosine_similarity(z_src), cosine_similarity(z_tgt)
    if label_aware:
        s1, s2 = label_signs(y_src, len(c1)), label_signs(y_tgt, len(c2))
        c1, c2 = c1 * np.outer(s1, s1), c2 * np.outer(s2, s2)
    p, q = ot.unif(len(c1)), ot.unif(len(c2))
    eps = float(epsilon)
    for _ in range(7):
        with warnings.catch_warnings(), threadpool_limits(1):
            warnings.simplefilter("ignore")
            g = ot.gromov.entropic_gromov_wasserstein(c1, c2, p, q, loss_fun="square_loss", epsilon=eps,
                                                     symmetric=True, max_iter=max_iter, tol=tol,
                                                     numItermax=sinkhorn_iter)
        g = np.asarray(g, dtype=float)
        if np.isfinite(g).all() and abs(g.sum() - 1.0) < 1e-3:
            return g
        eps *= 2.0
    return np.outer(p, q)  # independent coupling: imputation falls back to the mean partner


def barycentric_projection(coupling: np.ndarray, z_tgt: np.ndarray) -> np.ndarray:
    """Row i → Σ_j Γ_ij z_tgt_j / Σ_j Γ_ij: each source point's expected partner under Γ."""
    w = coupling / np.maximum(coupling.sum(axis=1, keepdims=True), 1e-300)
    return w @ z_tgt


@dataclass
class AffineMap:
    """z_out = z_in @ weight + bias (weight: d_in × d_out)."""

    weight: np.ndarray
    bias: np.ndarray

    def __call__(self, z: np.ndarray) -> np.ndarray:
        return np.asarray(z, dtype=float) @ self.weight + self.bias


def fit_affine_map(z_in: np.ndarray, z_out: np.ndarray, sample_weight: np.ndarray | None = None,
                   ridge: float = 1e-3) -> AffineMap:
    """Weighted ridge least squares min ||W^½ (z_out − z_in A − b)||² + ridge ||A||² (eq. 7)."""
    z_in, z_out = np.asarray(z_in, float), np.asarray(z_out, float)
    w = np.ones(len(z_in)) if sample_weight is None else np.asarray(sample_weight, float)
    w = w / w.sum()
    mu_in, mu_out = w @ z_in, w @ z_out
    xi, xo = z_in - mu_in, z_out - mu_out
    gram = (xi * w[:, None]).T @ xi + ridge * np.eye(z_in.shape[1])
    weight = np.linalg.solve(gram, (xi * w[:, None]).T @ xo)
    return AffineMap(weight, mu_out - mu_in @ weight)


def knn_impute(z_query: np.ndarray, z_ref_in: np.ndarray, z_ref_out: np.ndarray, k: int = 5) -> np.ndarray:
    """Mean partner embedding of the k nearest complete records (Euclidean, in the observed space)."""
    z_query, z_ref_in = np.asarray(z_query, float), np.asarray(z_ref_in, float)
    k = max(1, min(int(k), len(z_ref_in)))
    d = _sqdist(z_query, z_ref_in)
    idx = np.argpartition(d, k - 1, axis=1)[:, :k]
    return np.asarray(z_ref_out, float)[idx].mean(axis=1)


def _sqdist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2.0 * a @ b.T
