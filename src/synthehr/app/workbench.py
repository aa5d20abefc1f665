"""What the app does with a model: load it once, describe its features, reconstruct a record, check constraints.

Reconstruction = the model's conditional distribution of the free features given the fixed ones,
summarised from several draws (mean, sd, 5-95 % interval) and standardized (z-scores) so features in
different units share one chart.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from synthehr.constraints.equations import EQUATIONS, Constraint
from synthehr.models.base import Generator, load_model

# |observed - implied| at or below which an equation "holds" (target units).
TOLERANCES = {"henderson_hasselbalch": 0.03, "base_excess": 2.0, "severinghaus": 3.0}
DEFAULT_TOLERANCE = 0.05
REFERENCE_SAMPLES = 4000


@dataclass
class FeatureInfo:
    name: str
    label: str
    unit: str
    kind: str
    lower: float | None
    upper: float | None
    slider_min: float
    slider_max: float
    step: float
    salient: bool
    mean: float  # standardization reference
    std: float

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass
class LoadedModel:
    """A saved generator opened once at server start, plus what the UI needs to show its features."""

    id: str
    path: Path
    model: Generator
    features: list[FeatureInfo]
    reference: str  # what the z-scores are relative to
    training: dict = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def model_type(self) -> str:
        return self.model.model_type

    def feature(self, name: str) -> FeatureInfo:
        return self._by_name[name]

    def __post_init__(self) -> None:
        self._by_name = {f.name: f for f in self.features}
        self._lower = np.array([-np.inf if f.lower is None else f.lower for f in self.features])
        self._upper = np.array([np.inf if f.upper is None else f.upper for f in self.features])
        self._mean = np.array([f.mean for f in self.features])
        self._std = np.array([f.std for f in self.features])
        self._fast = all(f.kind in ("continuous", "binary") for f in self.features)
        self._binary = np.array([f.kind == "binary" for f in self.features])
        m = self.model
        self._gaussian = (self._fast and getattr(m, "model_type", "") == "gaussian"
                          and all(hasattr(m, a) for a in ("loc_", "scale_", "cov_", "_conditional", "_cholesky"))
                          and np.shape(getattr(m, "loc_", None)) == (len(self.features),))
        self._factors: dict[bytes, tuple] = {}
        self._lock = threading.Lock()

    def describe(self) -> dict:
        return {"id": self.id, "model_type": self.model_type, "features": [f.to_json() for f in self.features],
                "reference": self.reference, "training": self.training}

    # ------------------------------------------------------------------ generation
    def draw(self, fixed: dict[str, float], n: int, seed: int) -> np.ndarray:
        """n draws of the whole record given `fixed` → float array (n, n_features) in schema order.

        Equal to `model.condition(fixed, n, seed)` (same random stream, same clipping, fixed values
        returned exactly) but without the per-column pandas work, so one request costs ~2 ms.
        Inputs must already be validated (names known, values numeric and in range).
        """
        if not self._fast:
            out = self.model.condition(fixed, n=n, seed=seed)
            return out[self.names].to_numpy(dtype=float)
        x = np.full((n, len(self.names)), np.nan)
        for name, value in fixed.items():
            x[:, self.names.index(name)] = value
        return self.impute(x, seed)

    def _gaussian_draw(self, x: np.ndarray, observed: np.ndarray, seed: int) -> np.ndarray | None:
        """MultivariateGaussian with one observed pattern for every row: the same algebra and random
        stream as its `_condition_rows`, without pandas, with the conditional factor (K, Cholesky of C)
        cached per pattern. None when the model is not such a Gaussian."""
        m = self.model
        if not self._gaussian:
            return None
        key = observed.tobytes()
        with self._lock:
            hit = self._factors.get(key)
        if hit is None:
            o, u = np.flatnonzero(observed), np.flatnonzero(~observed)
            k, c = m._conditional(o, u)
            hit = (o, u, k, m._cholesky(c))
            with self._lock:
                self._factors[key] = hit
                while len(self._factors) > 512:
                    self._factors.pop(next(iter(self._factors)))
        o, u, k, chol = hit
        z = (x - m.loc_) / m.scale_
        rng = np.random.default_rng(seed)
        mean = z[:, o] @ k.T
        eps = rng.standard_normal((len(x), len(u)))
        z[:, u] = mean + eps @ chol.T
        y = z * m.scale_ + m.loc_
        y[:, self._binary] = (y[:, self._binary] > 0.5).astype(float)
        return y

    def impute(self, x: np.ndarray, seed: int) -> np.ndarray:
        """NaN cells of x (n, n_features; schema order) drawn given each row's other cells; equal to
        `model.impute(DataFrame(x), seed)` as a float array."""
        mask = ~np.isnan(x)
        if mask.all():
            return x.copy()
        table = pd.DataFrame(x, columns=self.names) if not self._gaussian or not (mask == mask[0]).all() else None
        if not self._fast:
            return self.model.impute(table, seed=seed)[self.names].to_numpy(dtype=float)
        y = None
        if len(mask) and (mask == mask[0]).all():
            y = self._gaussian_draw(x, mask[0], seed)
        if y is None:
            out = self.model._condition_rows(table, mask, np.random.default_rng(seed), seed)
            y = out.reindex(columns=self.names).to_numpy(dtype=float)
        y = np.clip(y, self._lower, self._upper)
        y[mask] = x[mask]
        return y

    def sample(self, n: int, seed: int) -> np.ndarray:
        """n unconditional draws (equal to `model.sample(n, seed)`) as a float array."""
        if not self._fast:
            return self.model.sample(n, seed=seed)[self.names].to_numpy(dtype=float)
        out = self.model._sample(n, np.random.default_rng(seed), seed)
        return np.clip(out.reindex(columns=self.names).to_numpy(dtype=float), self._lower, self._upper)

    def standardize(self, x: np.ndarray) -> np.ndarray:
        return (x - self._mean) / self._std

    def frame(self, x: np.ndarray) -> pd.DataFrame:
        df = pd.DataFrame(x, columns=self.names)
        for f in self.features:
            if f.kind == "binary":
                df[f.name] = df[f.name].round().astype("Int64")
        return df


def _nice_step(lo: float, hi: float) -> float:
    span = hi - lo
    if not span > 0:
        return 1.0
    return float(10.0 ** math.floor(math.log10(span / 500.0)))


def open_model(path: Path, model_id: str, real_train: pd.DataFrame | None = None) -> LoadedModel:
    """Load a saved model and describe its features (labels/salience from the feature catalogue when known)."""
    model = load_model(path)
    schema = model.schema_
    categorical = schema.of_kind("categorical")
    if categorical:
        from synthehr.errors import ModelFileError

        raise ModelFileError(f"{path}: the app edits continuous and binary features; this model has categorical "
                             f"column(s) {categorical}")
    catalogue = {}
    try:
        from synthehr.data.catalogue import FeatureCatalogue

        catalogue = {f.name: f for f in FeatureCatalogue.load().features}
    except Exception:  # a catalogue problem must not stop the app from serving a model
        catalogue = {}
    names = schema.names
    if real_train is not None and all(n in real_train.columns for n in names):
        ref = real_train[names].apply(pd.to_numeric, errors="coerce")
        reference = "training data"
    else:
        ref = model.sample(REFERENCE_SAMPLES, seed=0)[names].apply(pd.to_numeric, errors="coerce")
        reference = "model samples"
    feats = []
    for spec in schema.columns:
        col = ref[spec.name].dropna().to_numpy(dtype=float)
        mean = float(col.mean()) if col.size else 0.0
        std = float(col.std()) if col.size > 1 else 1.0
        std = std if std > 1e-12 else 1.0
        if spec.kind == "binary":
            lo, hi, smin, smax, step = 0.0, 1.0, 0.0, 1.0, 1.0
        else:
            lo, hi = spec.lower, spec.upper
            qlo, qhi = (np.quantile(col, [0.001, 0.999]) if col.size else (0.0, 1.0))
            smin = float(lo) if lo is not None else float(qlo - (qhi - qlo) * 0.5)
            smax = float(hi) if hi is not None else float(qhi + (qhi - qlo) * 0.5)
            step = _nice_step(smin, smax)
        cat = catalogue.get(spec.name)
        feats.append(FeatureInfo(
            name=spec.name, label=cat.label if cat else spec.name.replace("_", " "),
            unit=spec.unit or (cat.unit if cat else ""), kind=spec.kind,
            lower=None if lo is None else float(lo), upper=None if hi is None else float(hi),
            slider_min=smin, slider_max=smax, step=step, salient=bool(cat.salient) if cat else False,
            mean=mean, std=std))
    training = {}
    tj = Path(path) / "training.json"
    if tj.is_file():
        try:
            training = json.loads(tj.read_text())
        except json.JSONDecodeError:
            training = {}
    return LoadedModel(id=model_id, path=Path(path), model=model, features=feats, reference=reference,
                       training=training)


# ---------------------------------------------------------------------- record keys
def record_key(source: str, values: dict[str, Any]) -> str:
    """Content hash of one synthetic record (model id + values to 6 significant digits)."""
    canon = {k: (None if v is None or (isinstance(v, float) and not math.isfinite(v)) else
                 float(f"{float(v):.6g}")) for k, v in sorted(values.items())}
    return hashlib.sha256(json.dumps([source, canon], sort_keys=True).encode()).hexdigest()[:32]


def record_keys(source: str, x: np.ndarray, names: list[str]) -> list[str]:
    return [record_key(source, dict(zip(names, row.tolist()))) for row in x]


# ---------------------------------------------------------------------- constraints
def applicable_equations(names: list[str]) -> dict[str, Constraint]:
    return {k: eq for k, eq in EQUATIONS.items() if all(f in names for f in eq.features)}


def constraint_checks(names: list[str], original: np.ndarray, draws: np.ndarray,
                      selected: list[str] | None = None) -> list[dict]:
    """For each equation that applies: residual of the original record and of every draw, and whether it holds."""
    out = []
    both = np.vstack([original[None, :], draws])  # row 0: the original record
    for name, eq, tol, target, inputs in _equation_plan(tuple(names)):
        with np.errstate(all="ignore"):
            res = both[:, target] - np.asarray(eq.function(**{f: both[:, j] for f, j in inputs}), dtype=float)
        r0 = float(res[0])
        r = np.abs(res[1:])
        r = r[np.isfinite(r)]
        frac = float((r <= tol).mean()) if r.size else None
        out.append({
            "name": name, "target": eq.target, "inputs": list(eq.inputs), "tolerance": tol,
            "selected": selected is None or name in selected,
            "original_residual": _finite(r0),
            "original_holds": bool(math.isfinite(r0) and abs(r0) <= tol),
            "reconstructed_mae": _finite(float(r.mean())) if r.size else None,
            "reconstructed_fraction_holding": frac,
            "reconstructed_holds": bool(frac is not None and frac >= 0.95),
        })
    return out


@functools.lru_cache(maxsize=64)
def _equation_plan(names: tuple[str, ...]) -> list[tuple]:
    """(name, equation, tolerance, target column, [(input feature, column)]) for the equations that apply."""
    return [(name, eq, TOLERANCES.get(name, DEFAULT_TOLERANCE), names.index(eq.target),
             [(f, names.index(f)) for f in eq.inputs]) for name, eq in applicable_equations(list(names)).items()]


def _finite(v: float) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None


# ---------------------------------------------------------------------- exact enforcement (optional)
def enforcement_function():
    """`generate_with_constraints` from synthehr.constraints.enforce when that module exists, else None."""
    try:
        mod = importlib.import_module("synthehr.constraints.enforce")
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("synthehr"):
            return None
        raise
    return getattr(mod, "generate_with_constraints", None)


def draw_with_constraints(lm: LoadedModel, fixed: dict[str, float], n: int, seed: int,
                          equations: list[str]) -> np.ndarray | None:
    """Draws in which the selected equations hold exactly (synthehr.constraints.enforce); None when that
    module is absent or no equation is selected. Raises ConditioningError when the fixed values make
    the equations infeasible or too unlikely under the model."""
    fn = enforcement_function()
    eqs = [k for k in equations if k in applicable_equations(lm.names)]
    if fn is None or not eqs:
        return None
    out = fn(lm.model, n, seed=seed, observed=fixed, equations=eqs)
    return pd.DataFrame(out).reindex(columns=lm.names).apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
