"""The generator contract: both reference generators pass it, and it catches broken generators."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import pandas as pd
import pytest

from synthehr.models import (CHECKS, Generator, IndependentMarginals, MultivariateGaussian, check_generator,
                             register)
from synthehr.models.base import _REGISTRY

REFERENCE = [IndependentMarginals, MultivariateGaussian]


@pytest.mark.parametrize("cls", REFERENCE, ids=lambda c: c.model_type)
@pytest.mark.parametrize("table", ["mixed_table", "mixed_table_with_nans"])
def test_reference_generators_pass_the_contract(cls: type[Generator], table: str, request, tmp_path: Path) -> None:
    data = request.getfixturevalue(table)
    assert check_generator(cls, data, tmp_path=tmp_path) == list(CHECKS)


@pytest.mark.parametrize("check", CHECKS)
def test_contract_runs_one_check_at_a_time(check: str, mixed_table: pd.DataFrame, tmp_path: Path) -> None:
    """The form later model tests use: one pytest item per check."""
    assert check_generator(lambda: MultivariateGaussian(ridge=1e-5), mixed_table, tmp_path=tmp_path,
                           checks=[check]) == [check]


def test_contract_works_without_tmp_path(mixed_table: pd.DataFrame) -> None:
    assert "tampered_files" in check_generator(IndependentMarginals, mixed_table)


def test_unknown_check_name_is_refused(mixed_table: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="no_such_check"):
        check_generator(IndependentMarginals, mixed_table, checks=["no_such_check"])


# --------------------------------------------------- deliberately broken generators
class SeedlessCondition(MultivariateGaussian):
    """Conditions with a fixed RNG: ignores the caller's seed."""

    model_type = "_test_seedless_condition"

    def _condition_rows(self, table, observed, rng, seed):
        return super()._condition_rows(table, observed, np.random.default_rng(0), 0)


class AltersObserved(IndependentMarginals):
    """Bypasses the base class and nudges observed continuous values."""

    model_type = "_test_alters_observed"

    def condition(self, observed: Mapping[str, Any], n: int = 1, seed: int = 0) -> pd.DataFrame:
        out = super().condition(observed, n, seed)
        for name in observed:
            if self.schema_[name].kind == "continuous":
                out[name] = out[name] + 1e-9
        return out


class LossyLoad(MultivariateGaussian):
    """Loads slightly different weights than it saved."""

    model_type = "_test_lossy_load"

    def set_state(self, tensors, state):
        super().set_state(tensors, state)
        self.cov_ = self.cov_ * 1.01


class FitReturnsNone(IndependentMarginals):
    model_type = "_test_fit_returns_none"

    def fit(self, data, schema=None):  # type: ignore[override]
        super().fit(data, schema)
        return None


class BadBinary(IndependentMarginals):
    """Emits 2 in binary columns."""

    model_type = "_test_bad_binary"

    def _sample(self, n, rng, seed):
        out = super()._sample(n, rng, seed)
        for name in self.schema_.of_kind("binary"):
            out[name] = out[name] * 2
        return out


class IgnoresUnknownNames(IndependentMarginals):
    """Silently drops features it does not know instead of refusing them."""

    model_type = "_test_ignores_unknown"

    def condition(self, observed: Mapping[str, Any], n: int = 1, seed: int = 0) -> pd.DataFrame:
        known = {k: v for k, v in dict(observed).items() if k in self.schema_}
        return super().condition(known, n, seed)


# broken generator -> exactly the checks that must fail
BROKEN: dict[type[Generator], set[str]] = {
    SeedlessCondition: {"determinism"},
    AltersObserved: {"condition_keeps_observed"},
    LossyLoad: {"save_load_roundtrip"},
    FitReturnsNone: {"fit_returns_self"},
    BadBinary: {"sample_types", "impute"},
    IgnoresUnknownNames: {"bad_input"},
}


@pytest.fixture
def registered_broken() -> Iterator[None]:
    """Register the broken classes (load_model must find them), then leave the registry as it was."""
    for cls in BROKEN:
        register(cls)
    yield
    for cls in BROKEN:
        _REGISTRY.pop(cls.model_type, None)


@pytest.mark.parametrize("cls", list(BROKEN), ids=lambda c: c.__name__)
def test_contract_catches_a_broken_generator(cls: type[Generator], registered_broken, mixed_table: pd.DataFrame,
                                             tmp_path: Path) -> None:
    with pytest.raises(AssertionError) as info:
        check_generator(cls, mixed_table, tmp_path=tmp_path)
    message = str(info.value)
    failed = {line.strip()[2:].split(":")[0] for line in message.splitlines()[1:]}
    assert failed == BROKEN[cls], message
    assert f"{len(failed)} of {len(CHECKS)} check(s) failed" in message


def test_a_crashing_generator_fails_every_check_that_needs_it(mixed_table: pd.DataFrame) -> None:
    class Crashes(IndependentMarginals):
        model_type = "_test_crashes"

        def _fit(self, data):
            raise RuntimeError("boom")

    with pytest.raises(AssertionError) as info:
        check_generator(Crashes, mixed_table)
    message = str(info.value)
    assert "fit_returns_self: RuntimeError: boom" in message
    assert "- sample_types: fit failed earlier" in message
