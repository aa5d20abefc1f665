"""The one interface every synthehr generator shares: fit / sample / condition / save / load.

Saved model = a folder:
  config.json        model type, hyper-parameters, schema, small JSON state, synthehr version
  weights.safetensors  every array the model learned (no pickle: loading runs no code)
  manifest.json      sha256 of the two files above, so a tampered or truncated folder fails clearly
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Mapping

import numpy as np
import pandas as pd
from safetensors.numpy import load_file, save_file

from synthehr.errors import ConditioningError, ModelFileError
from synthehr.models.schema import TableSchema

FORMAT_VERSION = 1
_REGISTRY: dict[str, type["Generator"]] = {}


def register(cls: type["Generator"]) -> type["Generator"]:
    """Class decorator: lets `load_model` find a generator by its `model_type`."""
    if not getattr(cls, "model_type", None):
        raise TypeError(f"{cls.__name__} must set model_type")
    _REGISTRY[cls.model_type] = cls
    return cls


def registered_models() -> dict[str, type["Generator"]]:
    return dict(_REGISTRY)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Generator(ABC):
    """Base class. Hyper-parameters go to __init__ only; learned state ends in `_`.

    Subclasses implement `_fit`, `_sample`, `_condition_rows`, `get_state`/`set_state`.
    The base class validates input, restores observed values exactly and handles files.
    """

    model_type: ClassVar[str] = ""

    def __init__(self, **hyperparameters: Any):
        self.hyperparameters = dict(hyperparameters)
        self.schema_: TableSchema | None = None

    # ---------------------------------------------------------------- public API
    def fit(self, data: pd.DataFrame, schema: TableSchema | None = None) -> "Generator":
        if not isinstance(data, pd.DataFrame):
            raise TypeError(f"fit expects a pandas DataFrame, got {type(data).__name__}")
        if len(data) == 0:
            raise ConditioningError("fit: the training table has no rows")
        schema = schema or TableSchema.infer(data)
        schema.validate(data, where="training table")
        self.schema_ = schema
        self._fit(data[schema.names].reset_index(drop=True))
        return self

    def sample(self, n: int, seed: int = 0) -> pd.DataFrame:
        self._check_fitted()
        n = self._check_n(n)
        out = self._sample(n, np.random.default_rng(seed), seed)
        return self._finish(out)

    def condition(self, observed: Mapping[str, Any] | pd.Series, n: int = 1, seed: int = 0) -> pd.DataFrame:
        """n samples of the whole record given the observed features; observed values come back exactly."""
        self._check_fitted()
        n = self._check_n(n)
        observed = dict(observed)
        self._check_observed_names(observed.keys())
        names = self.schema_.names
        values = [observed.get(name, np.nan) for name in names]
        # one float block when every given value is a number (the app's case); a list of n row dicts
        # took longer to build than the model took to sample
        if all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
               for v in values):
            table = pd.DataFrame(np.tile(np.asarray(values, dtype=np.float64), (n, 1)), columns=names)
        else:
            table = pd.DataFrame({name: [v] * n for name, v in zip(names, values)}, columns=names)
        return self.impute(table, seed=seed)

    def impute(self, table: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
        """One draw per row: NaN cells are generated given the row's non-NaN cells."""
        self._check_fitted()
        self._check_observed_names(table.columns)
        table = table.reindex(columns=self.schema_.names)
        self.schema_.validate(table, where="observed values")
        observed_mask = table.notna().to_numpy()
        if observed_mask.all():
            return table.reset_index(drop=True).copy()
        out = self._condition_rows(table.reset_index(drop=True), observed_mask, np.random.default_rng(seed), seed)
        out = self._finish(out)
        # Observed cells are returned exactly as given, whatever the model's numerics did.
        return self._restore_observed(out, table.reset_index(drop=True), observed_mask)

    def save(self, path: str | Path) -> Path:
        self._check_fitted()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors, json_state = self.get_state()
        tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
        save_file(tensors, str(path / "weights.safetensors"))
        from synthehr import __version__

        config = {
            "format_version": FORMAT_VERSION,
            "synthehr_version": __version__,
            "model_type": self.model_type,
            "hyperparameters": self.hyperparameters,
            "schema": self.schema_.to_json(),
            "state": json_state,
            "tensors": {k: {"dtype": str(v.dtype), "shape": list(v.shape)} for k, v in tensors.items()},
        }
        (path / "config.json").write_text(json.dumps(config, indent=2, default=_json_default))
        manifest = {name: _sha256(path / name) for name in ("config.json", "weights.safetensors")}
        (path / "manifest.json").write_text(json.dumps(manifest, indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Generator":
        model = load_model(path)
        if cls is not Generator and not isinstance(model, cls):
            raise ModelFileError(f"{path}: holds a {model.model_type!r} model, not {cls.model_type!r}")
        return model

    # ------------------------------------------------------------ for subclasses
    @abstractmethod
    def _fit(self, data: pd.DataFrame) -> None: ...

    @abstractmethod
    def _sample(self, n: int, rng: np.random.Generator, seed: int) -> pd.DataFrame: ...

    @abstractmethod
    def _condition_rows(self, table: pd.DataFrame, observed: np.ndarray, rng: np.random.Generator,
                        seed: int) -> pd.DataFrame:
        """Return a full table; rows of `table` with `observed[i, j]` True hold given values."""

    @abstractmethod
    def get_state(self) -> tuple[dict[str, np.ndarray], dict]:
        """(arrays for safetensors, small JSON-serialisable state)."""

    @abstractmethod
    def set_state(self, tensors: dict[str, np.ndarray], state: dict) -> None: ...

    # ------------------------------------------------------------------ helpers
    def _check_fitted(self) -> None:
        if self.schema_ is None:
            raise ConditioningError(f"{type(self).__name__} is not fitted: call fit() or load a saved model")

    @staticmethod
    def _check_n(n: int) -> int:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ConditioningError(f"n must be a positive integer, got {n!r}")
        return int(n)

    def _check_observed_names(self, names) -> None:
        known = set(self.schema_.names)
        unknown = [str(k) for k in names if k not in known]
        if unknown:
            raise ConditioningError(f"unknown feature(s) {unknown}; this model knows {self.schema_.names}")

    def _scored_inputs(self, table: pd.DataFrame, observed_mask) -> tuple[pd.DataFrame, np.ndarray]:
        """Validate the arguments of `log_prob_unobserved`: the table in schema order and a boolean
        (n, n_columns) mask of the cells conditioned on (an array, or a DataFrame with schema columns)."""
        self._check_fitted()
        self._check_observed_names(table.columns)
        table = table.reindex(columns=self.schema_.names).reset_index(drop=True)
        if isinstance(observed_mask, pd.DataFrame):
            self._check_observed_names(observed_mask.columns)
            observed_mask = observed_mask.reindex(columns=self.schema_.names, fill_value=False).to_numpy()
        observed_mask = np.asarray(observed_mask, dtype=bool)
        if observed_mask.shape != table.shape:
            raise ConditioningError(f"observed_mask has shape {observed_mask.shape}, table has {table.shape}")
        self.schema_.validate(table, where="scored table")
        return table, observed_mask

    def _restore_observed(self, out: pd.DataFrame, given: pd.DataFrame, observed_mask: np.ndarray) -> pd.DataFrame:
        """Put the given cells back with an explicit dtype per column, building the result in one go.

        (DataFrame.mask would silently downcast and warns that pandas 3 changes that; numeric
        strings in a continuous/binary column come back as the numbers they spell. Column-by-column
        assignment into a copy was half the time of conditioning one row: app latency.)
        """
        names = self.schema_.names
        touched = observed_mask.any(axis=0)
        numeric = [j for j, spec in enumerate(self.schema_.columns) if spec.kind != "categorical" and touched[j]]
        if numeric:  # the touched numeric columns of both tables as one float block each
            num_names = [names[j] for j in numeric]
            restored = np.array(_as_float_matrix(out, num_names), copy=True)  # never a view of `out`
            m = observed_mask[:, numeric]
            restored[m] = _as_float_matrix(given, num_names)[m]
            block = dict(zip(num_names, restored.T))
        cols: dict[str, Any] = {}  # the DataFrame constructor copies what it is given
        for j, spec in enumerate(self.schema_.columns):
            if not touched[j]:
                cols[spec.name] = out[spec.name]
            elif spec.kind == "categorical":
                m = observed_mask[:, j]
                values = out[spec.name].to_numpy(dtype=object).copy()
                values[m] = given[spec.name].to_numpy(dtype=object)[m]
                cols[spec.name] = pd.Series(values, index=out.index).infer_objects()
            elif spec.kind == "binary" and pd.api.types.is_integer_dtype(out[spec.name]):
                cols[spec.name] = block[spec.name].astype(out[spec.name].dtype)
            else:
                cols[spec.name] = block[spec.name]
        return pd.DataFrame(cols, columns=names, index=out.index)

    def _finish(self, out: pd.DataFrame) -> pd.DataFrame:
        """Clip to plausible ranges and cast binary/categorical columns to their levels."""
        out = out.reindex(columns=self.schema_.names).reset_index(drop=True)
        bounded = [c for c in self.schema_.columns
                   if c.kind == "continuous" and (c.lower is not None or c.upper is not None)]
        if bounded:
            # One vectorised clip: per-column pandas clips dominated a 100-row conditional draw.
            names = [c.name for c in bounded]
            lo = np.array([-np.inf if c.lower is None else c.lower for c in bounded])
            hi = np.array([np.inf if c.upper is None else c.upper for c in bounded])
            block = out[names].to_numpy(dtype=float)
            clipped = np.clip(block, lo, hi)
            if np.array_equal(clipped, block, equal_nan=True):
                return out  # nothing out of range (the usual case): no copy
            # rebuilt in one go: assigning the block column by column (DataFrame.__setitem__) took
            # longer than the clip
            cols = {name: out[name] for name in self.schema_.names}
            cols.update({name: clipped[:, k] for k, name in enumerate(names)})
            out = pd.DataFrame(cols, columns=self.schema_.names)
        return out


def _as_float_matrix(table: pd.DataFrame, names: list[str]) -> np.ndarray:
    """(n, len(names)) float64 of those columns; numeric strings as the numbers they spell."""
    try:
        return table[names].to_numpy(dtype=np.float64, na_value=np.nan)
    except (TypeError, ValueError):
        return np.column_stack([pd.to_numeric(table[n]).to_numpy(dtype=np.float64) for n in names])


def _json_default(o: Any):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def read_verified_folder(path: str | Path, extra_fields: tuple[str, ...] = ()) -> tuple[dict, dict[str, np.ndarray]]:
    """Every check a saved model folder must pass before any model is built: files present, sha256 as in
    manifest.json, config fields (plus `extra_fields`), format version, tensors as config.json declares.
    Shared by `load_model` and models with their own loaders (trajectory)."""
    path = Path(path)
    if not path.is_dir():
        raise ModelFileError(f"{path}: no such model folder")
    for name in ("config.json", "weights.safetensors", "manifest.json"):
        if not (path / name).is_file():
            raise ModelFileError(f"{path}: model folder is incomplete, {name} is missing")
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except json.JSONDecodeError as e:
        raise ModelFileError(f"{path / 'manifest.json'}: not valid JSON ({e})") from None
    for name in ("config.json", "weights.safetensors"):
        if manifest.get(name) != _sha256(path / name):
            raise ModelFileError(f"{path / name}: checksum does not match manifest.json (file changed or truncated)")
    try:
        config = json.loads((path / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise ModelFileError(f"{path / 'config.json'}: not valid JSON ({e})") from None
    for key in ("format_version", "model_type", "hyperparameters", "state", "tensors", *extra_fields):
        if key not in config:
            raise ModelFileError(f"{path / 'config.json'}: field {key!r} is missing")
    if config["format_version"] != FORMAT_VERSION:
        raise ModelFileError(f"{path / 'config.json'}: format_version {config['format_version']} is not supported")
    try:
        tensors = load_file(str(path / "weights.safetensors"))
    except Exception as e:  # safetensors raises its own error types
        raise ModelFileError(f"{path / 'weights.safetensors'}: cannot be read ({e})") from None
    expected = config["tensors"]
    if set(expected) != set(tensors):
        raise ModelFileError(f"{path}: weights hold {sorted(tensors)[:5]}…, config.json expects {sorted(expected)[:5]}…")
    for k, meta in expected.items():
        if list(tensors[k].shape) != meta["shape"]:
            raise ModelFileError(f"{path}: tensor {k!r} has shape {list(tensors[k].shape)}, expected {meta['shape']}")
    return config, tensors


def load_model(path: str | Path) -> Generator:
    """Load any saved generator. Validates every file before building the model; runs no stored code."""
    path = Path(path)
    config, tensors = read_verified_folder(path, extra_fields=("schema",))
    _import_model_modules()
    cls = _REGISTRY.get(config["model_type"])
    if cls is None:
        raise ModelFileError(f"{path / 'config.json'}: unknown model_type {config['model_type']!r}; "
                             f"known: {sorted(_REGISTRY)}")
    model = cls(**config["hyperparameters"])
    model.schema_ = TableSchema.from_json(config["schema"])
    model.set_state(tensors, config["state"])
    return model


def _import_model_modules() -> None:
    """Import the model packages so their @register decorators run."""
    import synthehr.models  # noqa: F401
