"""The generator contract, checked the way sklearn's `check_estimator` checks estimators.

Every generator, from the reference baselines to the VAE family, must pass `check_generator`:
fit returns self, samples are well typed, seeds are honoured, observed values come back exactly,
saved folders round-trip and refuse tampering, and bad input fails with a named domain error.

Usable two ways:
    check_generator(lambda: MyGenerator(epochs=2), data)            # all checks, one call
    @pytest.mark.parametrize("check", CHECKS)                         # one test per check
    def test_contract(check, tmp_path):
        check_generator(make, data, tmp_path=tmp_path, checks=[check])
"""

from __future__ import annotations

import json
import shutil
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd

from synthehr.errors import ConditioningError, ModelFileError, SynthEHRError, ValidationErrors
from synthehr.models.base import Generator, load_model
from synthehr.models.schema import TableSchema

__all__ = ["CHECKS", "check_generator"]

N_SMALL = 64  # rows drawn per check: enough to see a dtype or a seed problem, cheap for a VAE


@dataclass
class _Context:
    make_generator: Callable[[], Generator]
    data: pd.DataFrame
    schema: TableSchema
    tmp: Path
    _model: Generator | None = field(default=None, repr=False)
    _fit_error: BaseException | None = field(default=None, repr=False)
    _saved: Path | None = field(default=None, repr=False)

    def fitted(self) -> Generator:
        """One fit shared by every check (a learned model's fit is the slow part)."""
        if self._fit_error is not None:
            raise AssertionError(f"fit failed earlier: {self._fit_error!r}")
        if self._model is None:
            model = self.make_generator()
            try:
                returned = model.fit(self.data, self.schema)
            except BaseException as e:
                self._fit_error = e
                raise
            self._model = model
            assert returned is model, f"fit returned {type(returned).__name__}, not the model itself"
        return self._model

    def saved(self) -> Path:
        if self._saved is None:
            self._saved = self.fitted().save(self.tmp / "model")
        return self._saved

    def observed(self) -> dict[str, Any]:
        """Two or three real values from one data row, a binary/categorical one first if present."""
        names = self.schema.names
        counts = self.data[names].notna().sum(axis=1).to_numpy()
        row = self.data.iloc[int(np.argmax(counts))]
        present = [n for n in names if pd.notna(row[n])]
        discrete = [n for n in present if self.schema[n].kind != "continuous"]
        continuous = [n for n in present if self.schema[n].kind == "continuous"]
        chosen = discrete[:1] + continuous[:2]
        chosen += [n for n in present if n not in chosen][: max(0, 2 - len(chosen))]
        assert chosen, "the data has no row with an observed value to condition on"
        if len(chosen) >= len(names):  # leave at least one column to generate
            chosen = chosen[: len(names) - 1]
        return {n: row[n] for n in chosen}


# ------------------------------------------------------------------ assertions
def _assert_valid_table(out: pd.DataFrame, schema: TableSchema, n: int, what: str) -> None:
    assert isinstance(out, pd.DataFrame), f"{what}: returned {type(out).__name__}, not a DataFrame"
    assert list(out.columns) == schema.names, f"{what}: columns {list(out.columns)} != schema {schema.names}"
    assert len(out) == n, f"{what}: {len(out)} rows, expected {n}"
    nan_cols = [c for c in out.columns if out[c].isna().any()]
    assert not nan_cols, f"{what}: NaN in column(s) {nan_cols}"
    for spec in schema.columns:
        s = out[spec.name]
        if spec.kind == "continuous":
            assert pd.api.types.is_float_dtype(s), f"{what}: continuous column {spec.name!r} has dtype {s.dtype}"
            assert np.isfinite(s.to_numpy(dtype=float)).all(), f"{what}: {spec.name!r} has infinite values"
        elif spec.kind == "binary":
            values = set(pd.unique(s))
            assert values <= {0, 1}, f"{what}: binary column {spec.name!r} has values {sorted(map(str, values))[:5]}"
        else:
            unknown = set(map(str, pd.unique(s))) - set(map(str, spec.categories))
            assert not unknown, f"{what}: categorical column {spec.name!r} has unknown levels {sorted(unknown)[:5]}"


def _same(a: Any, b: Any) -> bool:
    """Exact equality for one cell; a categorical level given as 2 or "2" counts as the same."""
    if isinstance(a, (str, np.str_)) or isinstance(b, (str, np.str_)):
        return str(a) == str(b)
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return False


def _frames_equal(a: pd.DataFrame, b: pd.DataFrame, what: str) -> None:
    try:
        pd.testing.assert_frame_equal(a, b, check_exact=True)
    except AssertionError as e:
        raise AssertionError(f"{what}: {str(e).splitlines()[0]} ...") from None


def _expect(exc: type[BaseException], fn: Callable[[], Any], what: str, must_name: str | None = None) -> None:
    try:
        fn()
    except exc as e:
        if must_name is not None and must_name not in str(e):
            raise AssertionError(f"{what}: {exc.__name__} does not name {must_name!r}: {e}") from None
        return
    except BaseException as e:
        raise AssertionError(f"{what}: expected {exc.__name__}, got {type(e).__name__}: {e}") from None
    raise AssertionError(f"{what}: expected {exc.__name__}, nothing was raised")


# ---------------------------------------------------------------------- checks
def check_fit_returns_self(ctx: _Context) -> None:
    model = ctx.fitted()
    assert model.schema_ is not None, "fit left schema_ unset"


def check_sample_types(ctx: _Context) -> None:
    out = ctx.fitted().sample(N_SMALL, seed=0)
    _assert_valid_table(out, ctx.schema, N_SMALL, "sample")
    one = ctx.fitted().sample(1, seed=0)
    _assert_valid_table(one, ctx.schema, 1, "sample(1)")


def check_determinism(ctx: _Context) -> None:
    model, obs = ctx.fitted(), ctx.observed()
    _frames_equal(model.sample(N_SMALL, seed=7), model.sample(N_SMALL, seed=7), "sample, same seed")
    assert not model.sample(N_SMALL, seed=7).equals(model.sample(N_SMALL, seed=8)), \
        "sample: seeds 7 and 8 gave identical tables (seed ignored)"
    _frames_equal(model.condition(obs, N_SMALL, seed=7), model.condition(obs, N_SMALL, seed=7),
                  "condition, same seed")
    assert not model.condition(obs, N_SMALL, seed=7).equals(model.condition(obs, N_SMALL, seed=8)), \
        "condition: seeds 7 and 8 gave identical tables (seed ignored)"


def check_condition_keeps_observed(ctx: _Context) -> None:
    model, obs = ctx.fitted(), ctx.observed()
    out = model.condition(obs, N_SMALL, seed=1)
    _assert_valid_table(out, ctx.schema, N_SMALL, "condition")
    for name, value in obs.items():
        bad = [v for v in out[name].tolist() if not _same(v, value)]
        assert not bad, f"condition: observed {name!r}={value!r} came back as {bad[0]!r}"
    free = [n for n in ctx.schema.names if n not in obs]
    assert any(out[n].nunique() > 1 for n in free), \
        f"condition: every unobserved column is constant over {N_SMALL} draws"


def check_impute(ctx: _Context) -> None:
    model = ctx.fitted()
    table = ctx.data[ctx.schema.names].head(40).reset_index(drop=True).copy()
    rng = np.random.default_rng(0)
    holes = rng.random(table.shape) < 0.3
    holes[0, :] = True          # a row with nothing observed
    holes[1, :] = False         # a row with everything observed (may still hold data NaNs)
    table = table.mask(holes)
    out = model.impute(table, seed=0)
    _assert_valid_table(out, ctx.schema, len(table), "impute")
    for name in ctx.schema.names:
        given = table[name]
        for i in np.flatnonzero(given.notna().to_numpy()):
            assert _same(out[name].iloc[i], given.iloc[i]), \
                f"impute: observed cell ({i}, {name!r})={given.iloc[i]!r} came back as {out[name].iloc[i]!r}"


def check_save_load_roundtrip(ctx: _Context) -> None:
    model, obs = ctx.fitted(), ctx.observed()
    path = ctx.saved()
    for name in ("config.json", "weights.safetensors", "manifest.json"):
        assert (path / name).is_file(), f"save: {name} not written"
    loaded = load_model(path)
    assert type(loaded) is type(model), f"load_model built {type(loaded).__name__}, not {type(model).__name__}"
    assert loaded.schema_ is not None and loaded.schema_.names == ctx.schema.names, "load: schema differs"
    _frames_equal(model.sample(N_SMALL, seed=3), loaded.sample(N_SMALL, seed=3), "sample after load")
    _frames_equal(model.condition(obs, N_SMALL, seed=3), loaded.condition(obs, N_SMALL, seed=3),
                  "condition after load")
    type(model).load(path)  # the class-level loader accepts its own folders


def check_tampered_files(ctx: _Context) -> None:
    src = ctx.saved()

    def variant(tag: str) -> Path:
        dst = ctx.tmp / f"tampered-{tag}"
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, dst)
        return dst

    p = variant("weights-byte")
    raw = bytearray((p / "weights.safetensors").read_bytes())
    raw[-1] ^= 0xFF
    (p / "weights.safetensors").write_bytes(bytes(raw))
    _expect(ModelFileError, lambda: load_model(p), "flipped byte in weights.safetensors")

    p = variant("weights-truncated")
    raw = (p / "weights.safetensors").read_bytes()
    (p / "weights.safetensors").write_bytes(raw[: len(raw) // 2])
    _expect(ModelFileError, lambda: load_model(p), "truncated weights.safetensors")

    p = variant("no-config")
    (p / "config.json").unlink()
    _expect(ModelFileError, lambda: load_model(p), "deleted config.json")

    p = variant("edited-config")
    config = json.loads((p / "config.json").read_text())
    config["hyperparameters"]["__edited__"] = 1
    (p / "config.json").write_text(json.dumps(config, indent=2))
    _expect(ModelFileError, lambda: load_model(p), "edited config.json")

    # Even with a matching checksum, a broken config must fail as a ModelFileError, not a KeyError.
    from synthehr.models.base import _sha256

    p = variant("rehashed-config")
    config = json.loads((p / "config.json").read_text())
    del config["schema"]
    (p / "config.json").write_text(json.dumps(config))
    manifest = json.loads((p / "manifest.json").read_text())
    manifest["config.json"] = _sha256(p / "config.json")
    (p / "manifest.json").write_text(json.dumps(manifest))
    _expect(ModelFileError, lambda: load_model(p), "config.json without 'schema' (manifest re-hashed)")


def check_bad_input(ctx: _Context) -> None:
    model = ctx.fitted()
    bogus = "__no_such_feature__"
    _expect(ConditioningError, lambda: model.condition({bogus: 1.0}, 3), "condition on an unknown column",
            must_name=bogus)
    _expect(ConditioningError, lambda: model.sample(0), "sample(0)")
    _expect(ConditioningError, lambda: model.sample(-1), "sample(-1)")
    _expect(ConditioningError, lambda: model.condition(ctx.observed(), 0), "condition(n=0)")
    continuous = ctx.schema.of_kind("continuous")
    if continuous:
        col = continuous[0]
        bad = ctx.data.copy()
        bad[col] = bad[col].astype(object)
        bad.loc[bad.index[0], col] = "not-a-number"
        _expect(ValidationErrors, lambda: ctx.make_generator().fit(bad, ctx.schema),
                "fit with a string in a continuous column", must_name=col)


def check_unfitted(ctx: _Context) -> None:
    fresh = ctx.make_generator()
    for what, fn in (("sample", lambda: fresh.sample(5)),
                     ("condition", lambda: fresh.condition({}, 2)),
                     ("save", lambda: fresh.save(ctx.tmp / "unfitted"))):
        try:
            fn()
        except SynthEHRError as e:
            assert "fit" in str(e), f"unfitted {what}: error does not say to fit first: {e}"
        except BaseException as e:
            raise AssertionError(f"unfitted {what}: expected a SynthEHRError, got {type(e).__name__}: {e}") from None
        else:
            raise AssertionError(f"unfitted {what}: no error raised")


_CHECKS: dict[str, Callable[[_Context], None]] = {
    "fit_returns_self": check_fit_returns_self,
    "sample_types": check_sample_types,
    "determinism": check_determinism,
    "condition_keeps_observed": check_condition_keeps_observed,
    "impute": check_impute,
    "save_load_roundtrip": check_save_load_roundtrip,
    "tampered_files": check_tampered_files,
    "bad_input": check_bad_input,
    "unfitted": check_unfitted,
}
CHECKS: tuple[str, ...] = tuple(_CHECKS)


def check_generator(make_generator: Callable[[], Generator], data: pd.DataFrame,
                    schema: TableSchema | None = None, tmp_path: Path | None = None,
                    checks: Iterable[str] | None = None) -> list[str]:
    """Run the contract checks on fresh generators from `make_generator`; return the passed names.

    Every selected check runs even after one fails; then AssertionError lists all failures.
    `data` should be small (a few hundred rows): the model is fitted once and shared.
    """
    names = list(CHECKS if checks is None else checks)
    unknown = [n for n in names if n not in _CHECKS]
    if unknown:
        raise ValueError(f"unknown check(s) {unknown}; known: {list(CHECKS)}")
    schema = schema or TableSchema.infer(data)
    with tempfile.TemporaryDirectory(prefix="synthehr-contract-") as tmp:
        ctx = _Context(make_generator, data, schema, Path(tmp_path) if tmp_path is not None else Path(tmp))
        ctx.tmp.mkdir(parents=True, exist_ok=True)
        passed: list[str] = []
        failed: list[str] = []
        for name in names:
            try:
                _CHECKS[name](ctx)
            except AssertionError as e:
                failed.append(f"{name}: {e}")
            except Exception as e:  # an unexpected crash is a failure of that check, with its origin
                where = traceback.extract_tb(e.__traceback__)[-1]
                failed.append(f"{name}: {type(e).__name__}: {e} (at {Path(where.filename).name}:{where.lineno})")
            else:
                passed.append(name)
    if failed:
        label = getattr(ctx._model, "model_type", None) or getattr(make_generator, "__name__", "?")
        raise AssertionError(f"check_generator({label!r}): {len(failed)} of {len(names)} check(s) failed:\n  - "
                             + "\n  - ".join(failed))
    return passed
