"""Thin adapters that give peer generators and imputers one small interface for the benchmarks.

Protocol (what `synthehr.benchmarks.tabular` calls):
    name: str
    settings: dict                        hyper-parameters, written into the benchmark notes
    fit(data, schema) -> self             data: a DataFrame with exactly the schema's columns
    sample(n, seed) -> DataFrame          generators only
    impute(table_with_nans, seed) -> DataFrame   imputers (NaN cells filled, observed cells kept)

synthehr's own generators (`synthehr.models`) already satisfy it. Peers: SDV's GaussianCopula,
CTGAN and TVAE; ForestDiffusion (tree-based flow matching / VP diffusion); scikit-learn's
IterativeImputer (MICE, missForest-style) and KNNImputer; and `MaskedGBMImputer`, a supervised
reference (gradient boosting trained on the benchmark's own mask protocol), not a published peer. sdv and ForestDiffusion live in the
optional ``[bench]`` extra and are imported only when a peer that needs them is built.
"""

from __future__ import annotations

import random
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from synthehr.models.schema import TableSchema

_BENCH_HINT = "install the benchmark extra: pip install 'synthehr[bench]'"


@runtime_checkable
class TabularModel(Protocol):
    def fit(self, data: pd.DataFrame, schema: TableSchema) -> "TabularModel": ...


def _require(module: str, package: str) -> Any:
    """Import an optional dependency or fail with the extra that provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"{package} is needed for this benchmark peer ({e}); {_BENCH_HINT}") from e


def seed_everything(seed: int) -> None:
    """SDV and ForestDiffusion draw from the global Python / NumPy / torch generators."""
    random.seed(seed)
    np.random.seed(seed)
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover - torch is a core dependency
        pass


# ----------------------------------------------------------------- numeric codes for array-based peers
def encode(table: pd.DataFrame, schema: TableSchema) -> np.ndarray:
    """Float matrix in schema order; categorical levels become their index; NaN stays NaN."""
    cols = []
    for spec in schema.columns:
        s = table[spec.name]
        if spec.kind == "categorical":
            index = {str(c): i for i, c in enumerate(spec.categories)}
            cols.append(s.map(lambda v: np.nan if pd.isna(v) else index[str(v)]).to_numpy(dtype=float))
        else:
            cols.append(pd.to_numeric(s).to_numpy(dtype=float))
    return np.column_stack(cols)


def decode(x: np.ndarray, schema: TableSchema) -> pd.DataFrame:
    """Inverse of `encode`: binary / categorical codes are rounded into their valid levels."""
    out: dict[str, Any] = {}
    for j, spec in enumerate(schema.columns):
        v = x[:, j]
        if spec.kind == "binary":
            out[spec.name] = np.clip(np.rint(v), 0, 1).astype(np.int64)
        elif spec.kind == "categorical":
            codes = np.clip(np.rint(v), 0, len(spec.categories) - 1).astype(int)
            levels = np.empty(len(spec.categories), dtype=object)
            levels[:] = list(spec.categories)
            out[spec.name] = pd.Series(levels[codes]).infer_objects()
        else:
            out[spec.name] = v
    return pd.DataFrame(out, columns=schema.names)


class Peer:
    """Shared plumbing: name, recorded settings, and a clear error for the role a peer lacks."""

    name = "peer"

    def __init__(self, **settings: Any):
        self.settings = settings
        self.schema_: TableSchema | None = None

    def fit(self, data: pd.DataFrame, schema: TableSchema) -> "Peer":
        self.schema_ = schema
        self._fit(data[schema.names].reset_index(drop=True))
        return self

    def _fit(self, data: pd.DataFrame) -> None:
        raise NotImplementedError

    def sample(self, n: int, seed: int = 0) -> pd.DataFrame:
        raise NotImplementedError(f"{self.name} is an imputer; it does not generate records")

    def impute(self, table: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
        raise NotImplementedError(f"{self.name} does not impute")

    def _keep_observed(self, table: pd.DataFrame, filled: pd.DataFrame) -> pd.DataFrame:
        """Observed cells come back exactly as given, whatever the peer's numerics did."""
        given = table[self.schema_.names].reset_index(drop=True)
        return filled.where(given.isna(), given)


# ----------------------------------------------------------------------------------------- SDV
_SDV_CLASSES = {"gaussiancopula": "GaussianCopulaSynthesizer", "ctgan": "CTGANSynthesizer",
                "tvae": "TVAESynthesizer"}
_SDV_TABLE = "table"


class SDVGenerator(Peer):
    """SDV single-table synthesizer. Binary / categorical columns get the categorical sdtype,
    continuous ones numerical. `epochs` applies to CTGAN and TVAE."""

    def __init__(self, kind: str, epochs: int | None = None, seed: int = 0, **settings: Any):
        if kind not in _SDV_CLASSES:
            raise ValueError(f"unknown SDV synthesizer {kind!r}; choose from {sorted(_SDV_CLASSES)}")
        if kind != "gaussiancopula" and epochs is not None:
            settings["epochs"] = int(epochs)
        if kind == "ctgan":
            settings.setdefault("enable_gpu", False)
        super().__init__(**settings)
        self.name, self.seed = kind, seed
        self.model_: Any = None

    def metadata(self, schema: TableSchema) -> Any:
        meta = _require("sdv.metadata", "sdv")
        columns = {c.name: {"sdtype": "numerical" if c.kind == "continuous" else "categorical"}
                   for c in schema.columns}
        return meta.Metadata.load_from_dict({"tables": {_SDV_TABLE: {"columns": columns}}})

    def _fit(self, data: pd.DataFrame) -> None:
        single = _require("sdv.single_table", "sdv")
        model = getattr(single, _SDV_CLASSES[self.name])(self.metadata(self.schema_), **self.settings)
        seed_everything(self.seed)
        model.fit({_SDV_TABLE: data})  # SDV 2 takes and returns {table name: DataFrame}
        self.model_ = model

    def sample(self, n: int, seed: int = 0) -> pd.DataFrame:
        # SDV samples from a fixed seed unless its model's random state is set (private but stable API).
        self.model_._set_random_state(seed)
        out = self.model_.sample(num_rows=int(n))
        if isinstance(out, dict):
            out = out[_SDV_TABLE]
        return out[self.schema_.names].reset_index(drop=True)


# ------------------------------------------------------------------------------- ForestDiffusion
class ForestDiffusion(Peer):
    """ForestDiffusionModel (Jolicoeur-Martineau et al. 2024): one XGBoost regressor per noise level.

    ``diffusion_type="flow"`` (flow matching) generates best; its imputation needs ``"vp"``
    (variance-preserving diffusion, REPAINT-free `impute(k=1)`), so an imputer is fitted separately.
    The model is trained inside the constructor of the upstream class, hence in `_fit`.
    """

    def __init__(self, n_t: int = 20, n_estimators: int = 50, duplicate_K: int = 10, max_depth: int = 7,
                 diffusion_type: str = "flow", n_jobs: int = 1, seed: int = 0, **settings: Any):
        super().__init__(n_t=n_t, n_estimators=n_estimators, duplicate_K=duplicate_K, max_depth=max_depth,
                         diffusion_type=diffusion_type, n_jobs=n_jobs, seed=seed, **settings)
        self.name = "forestdiffusion"
        self.model_: Any = None

    def _fit(self, data: pd.DataFrame) -> None:
        fd = _require("ForestDiffusion", "ForestDiffusion")
        kinds = [c.kind for c in self.schema_.columns]
        self.model_ = fd.ForestDiffusionModel(
            encode(data, self.schema_), model="xgboost",
            bin_indexes=[j for j, k in enumerate(kinds) if k == "binary"],
            cat_indexes=[j for j, k in enumerate(kinds) if k == "categorical"], **self.settings)

    def sample(self, n: int, seed: int = 0) -> pd.DataFrame:
        np.random.seed(seed)  # generate() draws its noise from the global NumPy generator
        return decode(self.model_.generate(batch_size=int(n)), self.schema_)

    def impute(self, table: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
        if self.settings["diffusion_type"] != "vp":
            raise NotImplementedError("ForestDiffusion imputes only with diffusion_type='vp'")
        if any(c.kind == "categorical" for c in self.schema_.columns):
            raise NotImplementedError("ForestDiffusion imputation of categorical columns is not wired up")
        np.random.seed(seed)
        # impute() works in the model's [-1, 1] min-max space: scale the observed cells first (NaN passes).
        scaled = self.model_.scaler.transform(encode(table, self.schema_))
        filled = decode(self.model_.impute(k=1, X=scaled), self.schema_)
        return self._keep_observed(table, filled)


# ---------------------------------------------------------------------------------- scikit-learn
class SklearnImputer(Peer):
    """MICE, missForest-style or k-NN imputation, fitted on a (fully observed) training table.

    IterativeImputer stops when an imputation round changes nothing; on a complete training table
    the first round changes nothing, so with its default tol it would keep one round of chained
    equations. tol=0 forces all `max_iter` rounds, which the imputation of new rows then replays.
    Binary / categorical cells are rounded to a valid level so every imputed record is a valid row.
    """

    def __init__(self, kind: str, seed: int = 0, **settings: Any):
        defaults = {"mice": {"max_iter": 10, "tol": 0.0},
                    "missforest": {"max_iter": 5, "tol": 0.0, "n_estimators": 30, "max_features": 0.5,
                                   "min_samples_leaf": 5, "n_jobs": -1},
                    "knn": {"n_neighbors": 5}}
        if kind not in defaults:
            raise ValueError(f"unknown imputer {kind!r}; choose from {sorted(defaults)}")
        super().__init__(**{**defaults[kind], **settings, "seed": seed})
        self.name = kind
        self.imputer_: Any = None

    def _build(self) -> Any:
        from sklearn.experimental import enable_iterative_imputer  # noqa: F401
        from sklearn.ensemble import RandomForestRegressor
        from sklearn.impute import IterativeImputer, KNNImputer
        from sklearn.linear_model import BayesianRidge

        s = self.settings
        if self.name == "knn":
            return KNNImputer(n_neighbors=s["n_neighbors"])
        estimator = BayesianRidge()
        if self.name == "missforest":
            estimator = RandomForestRegressor(n_estimators=s["n_estimators"], max_features=s["max_features"],
                                              min_samples_leaf=s["min_samples_leaf"], n_jobs=s["n_jobs"],
                                              random_state=s["seed"])
        return IterativeImputer(estimator=estimator, max_iter=s["max_iter"], tol=s["tol"], sample_posterior=False,
                                initial_strategy="mean", skip_complete=False, random_state=s["seed"])

    def _fit(self, data: pd.DataFrame) -> None:
        self.imputer_ = self._build().fit(encode(data, self.schema_))

    def impute(self, table: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
        filled = decode(self.imputer_.transform(encode(table, self.schema_)), self.schema_)
        return self._keep_observed(table, filled)


# ------------------------------------------------------------------ supervised reference imputer
class MaskedGBMImputer(Peer):
    """Gradient boosting trained to predict each column from the others under random masks.

    Not a generator and not a published peer: a *reference* for how low point-imputation MSE can
    go from one row's observed cells. For each column j, `copies` randomly masked copies of the
    training table (each cell hidden with P = `mask_rate`, the benchmark's own protocol; the columns
    in `always_hidden`, e.g. an outcome the benchmark never shows, hidden in every row) give the
    rows where x_j is hidden; a HistGradientBoosting model, which splits on missing values
    natively, learns x_j from the other (partly hidden) cells there. Continuous columns use squared
    loss, so the prediction estimates E[x_j | x_o]; binary / categorical ones predict the most
    likely level. Deterministic given the seed. Early stopping (a 10 % validation split inside
    scikit-learn) is used only where that split is feasible: at least 200 rows and, for a class
    column, at least 10 rows of every level; otherwise all `max_iter` rounds run.
    """

    name = "masked_gbm"

    def __init__(self, seed: int = 0, **settings: Any):
        defaults = {"mask_rate": 0.5, "copies": 3, "max_iter": 300, "learning_rate": 0.1,
                    "early_stopping": True, "always_hidden": []}
        super().__init__(**{**defaults, **settings, "seed": seed})
        self.models_: list[Any] = []
        self.inputs_: list[list[int]] = []

    def _fit(self, data: pd.DataFrame) -> None:
        from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

        from synthehr.evaluation import random_mask

        s = self.settings
        x = encode(data, self.schema_)
        if len(x) < 20:
            raise ValueError(f"masked_gbm needs at least 20 training rows, got {len(x)}")
        stacked = np.concatenate([x] * int(s["copies"]))
        hidden = random_mask(stacked.shape, s["mask_rate"], seed=s["seed"])
        unknown = [c for c in s["always_hidden"] if c not in self.schema_.names]
        if unknown:
            raise ValueError(f"masked_gbm: always_hidden column(s) {unknown} are not in the table")
        never = [self.schema_.names.index(c) for c in s["always_hidden"]]
        hidden[:, never] = True
        inputs = np.where(hidden, np.nan, stacked)
        # inputs of column j: every other column the benchmark can show (an always-hidden one is all NaN)
        self.inputs_ = [[i for i in range(x.shape[1]) if i != j and i not in never] for j in range(x.shape[1])]
        self.models_ = []
        for j, spec in enumerate(self.schema_.columns):
            rows = hidden[:, j] & ~np.isnan(stacked[:, j])  # learn x_j where it is hidden and known
            y = stacked[rows, j]
            levels, counts = np.unique(y, return_counts=True)
            if len(levels) < 2:  # nothing to learn: the one value seen (0 if the column is empty)
                self.models_.append(float(levels[0]) if len(levels) else 0.0)
                continue
            feasible = len(y) >= 200 and (spec.kind == "continuous" or counts.min() >= 10)
            kw = {"max_iter": s["max_iter"], "learning_rate": s["learning_rate"],
                  "early_stopping": bool(s["early_stopping"]) and feasible, "random_state": s["seed"]}
            if spec.kind == "continuous":
                model = HistGradientBoostingRegressor(**kw)
            else:
                model = HistGradientBoostingClassifier(**kw)
            self.models_.append(model.fit(inputs[np.ix_(rows, self.inputs_[j])], y))

    def impute(self, table: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
        x = encode(table, self.schema_)
        out = x.copy()
        for j, model in enumerate(self.models_):
            todo = np.isnan(x[:, j])
            if not todo.any():
                continue
            if isinstance(model, float):
                out[todo, j] = model
            else:
                out[todo, j] = model.predict(x[np.ix_(todo, self.inputs_[j])])
        return self._keep_observed(table, decode(out, self.schema_))
