"""Physiological equations that link blood-gas features, their exact inverses and a registry.

Source: InterGenEHR (Sec. V-A), equations (1)-(3):

* Henderson-Hasselbalch:  ph = 6.1 + log10(hco3 / (0.03 * paco2))
* Base excess:            base_excess = 0.9287 * hco3 + 13.77 * ph - 124.58
* Severinghaus:           spo2 = 100 / (23400 / (pao2**3 + 150 * pao2) + 1)

The paper writes the Severinghaus saturation as a fraction in [0, 1]; synthehr's ``spo2`` feature is
in percent (0-100), so the curve here is multiplied by 100.  Units: paco2 and pao2 in mmHg, hco3 in
mmol/L, base_excess in mmol/L, ph unitless.

Every function is vectorised (scalars, numpy arrays or pandas Series; a Series keeps its index).
Arguments outside an equation's domain (e.g. hco3 <= 0, spo2 outside (0, 100)) give NaN, never a
warning or an error.  Parameter names are the feature names, so a solver can be called as
``fn(**{feature: table[feature] for feature in inputs})``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

HH_PK = 6.1
CO2_SOLUBILITY = 0.03  # mmol/L per mmHg
BE_HCO3, BE_PH, BE_CONST = 0.9287, 13.77, -124.58
SEV_A, SEV_B = 23400.0, 150.0

ArrayLike = Any  # float, np.ndarray or pd.Series


def _as_array(x: ArrayLike) -> np.ndarray:
    return np.asarray(x, dtype=float)


def _like(values: np.ndarray, *templates: ArrayLike) -> ArrayLike:
    """Give `values` the container type of the first pandas Series among `templates` (or a float)."""
    for t in templates:
        if isinstance(t, pd.Series):
            return pd.Series(np.broadcast_to(values, t.shape), index=t.index, dtype=float)
    return float(values) if np.ndim(values) == 0 else values


def _positive(*xs: np.ndarray) -> np.ndarray:
    return np.logical_and.reduce([np.isfinite(x) & (x > 0) for x in xs])


# --------------------------------------------------------------------------- Henderson-Hasselbalch
def henderson_hasselbalch_ph(hco3: ArrayLike, paco2: ArrayLike) -> ArrayLike:
    """pH = 6.1 + log10(hco3 / (0.03 * paco2))  [InterGenEHR eq. (1)]; NaN unless hco3, paco2 > 0."""
    h, p = np.broadcast_arrays(_as_array(hco3), _as_array(paco2))
    ok = _positive(h, p)
    out = np.full(h.shape, np.nan)
    out[ok] = HH_PK + np.log10(h[ok] / (CO2_SOLUBILITY * p[ok]))
    return _like(out, hco3, paco2)


def hco3_from_ph_paco2(ph: ArrayLike, paco2: ArrayLike) -> ArrayLike:
    """Inverse of Henderson-Hasselbalch for hco3: hco3 = 0.03 * paco2 * 10**(ph - 6.1)."""
    out = CO2_SOLUBILITY * _as_array(paco2) * np.power(10.0, _as_array(ph) - HH_PK)
    return _like(np.where(_as_array(paco2) > 0, out, np.nan), ph, paco2)


def paco2_from_ph_hco3(ph: ArrayLike, hco3: ArrayLike) -> ArrayLike:
    """Inverse of Henderson-Hasselbalch for paco2: paco2 = hco3 / (0.03 * 10**(ph - 6.1))."""
    out = _as_array(hco3) / (CO2_SOLUBILITY * np.power(10.0, _as_array(ph) - HH_PK))
    return _like(np.where(_as_array(hco3) > 0, out, np.nan), ph, hco3)


# --------------------------------------------------------------------------- base excess
def base_excess_from_hco3_ph(hco3: ArrayLike, ph: ArrayLike) -> ArrayLike:
    """base_excess = 0.9287 * hco3 + 13.77 * ph - 124.58  [InterGenEHR eq. (2)]."""
    return _like(BE_HCO3 * _as_array(hco3) + BE_PH * _as_array(ph) + BE_CONST, hco3, ph)


def ph_from_base_excess_hco3(base_excess: ArrayLike, hco3: ArrayLike) -> ArrayLike:
    """Inverse of eq. (2) for pH: ph = (base_excess - 0.9287 * hco3 + 124.58) / 13.77."""
    return _like((_as_array(base_excess) - BE_HCO3 * _as_array(hco3) - BE_CONST) / BE_PH, base_excess, hco3)


def hco3_from_base_excess_ph(base_excess: ArrayLike, ph: ArrayLike) -> ArrayLike:
    """Inverse of eq. (2) for hco3: hco3 = (base_excess - 13.77 * ph + 124.58) / 0.9287."""
    return _like((_as_array(base_excess) - BE_PH * _as_array(ph) - BE_CONST) / BE_HCO3, base_excess, ph)


# --------------------------------------------------------------------------- Severinghaus
def severinghaus_spo2(pao2: ArrayLike) -> ArrayLike:
    """spo2 [%] = 100 / (23400 / (pao2**3 + 150 * pao2) + 1)  [InterGenEHR eq. (3), x100]; NaN unless pao2 > 0."""
    p = _as_array(pao2)
    ok = _positive(p)
    out = np.full(p.shape, np.nan)
    q = p[ok]
    out[ok] = 100.0 / (SEV_A / (q**3 + SEV_B * q) + 1.0)
    return _like(out, pao2)


def pao2_from_spo2(spo2: ArrayLike, newton_steps: int = 3) -> ArrayLike:
    """Inverse Severinghaus: pao2 [mmHg] for spo2 [%] in the open interval (0, 100), NaN elsewhere.

    With s = spo2/100 the curve gives pao2**3 + 150*pao2 = c, c = 23400 * s / (1 - s).  This
    depressed cubic has one real root (its derivative 3p**2 + 150 > 0), found with Cardano's formula
    p = cbrt(c/2 + r) - cbrt(r - c/2), r = sqrt(c**2/4 + 50**3), then polished with a few Newton
    steps on the cubic to remove cancellation error.  Fully vectorised, no iteration over rows.
    """
    s = _as_array(spo2) / 100.0
    ok = np.isfinite(s) & (s > 0) & (s < 1)
    out = np.full(s.shape, np.nan)
    c = SEV_A * s[ok] / (1.0 - s[ok])
    r = np.sqrt(c**2 / 4.0 + (SEV_B / 3.0) ** 3)
    p = np.cbrt(c / 2.0 + r) - np.cbrt(r - c / 2.0)
    for _ in range(newton_steps):
        p = p - (p**3 + SEV_B * p - c) / (3.0 * p**2 + SEV_B)
    out[ok] = p
    return _like(out, spo2)


# --------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class Constraint:
    """One equation `target = function(**inputs)` plus a solver for each of its features."""

    name: str
    target: str
    inputs: tuple[str, ...]
    function: Callable[..., ArrayLike]
    solvers: Mapping[str, Callable[..., ArrayLike]] = field(default_factory=dict)
    source: str = "InterGenEHR Sec. V-A"

    @property
    def features(self) -> tuple[str, ...]:
        return (self.target, *self.inputs)

    def column_suffixes(self, columns: Any) -> list[str]:
        """Suffixes s such that every feature f has a column f + s: "" for a flat table, and e.g.
        "__t0" ... "__t5" for the concatenated last-bins layout (``f"{feature}__t{k}"``)."""
        cols = {str(c) for c in columns}
        candidates = sorted({c[len(self.target):] for c in cols if c.startswith(self.target)})
        return [sfx for sfx in candidates if all(f + sfx in cols for f in self.features)]

    def applies_to(self, columns: Any) -> bool:
        """True when the table holds every feature of the equation (under at least one suffix)."""
        return bool(self.column_suffixes(columns))

    def predict(self, table: Mapping[str, ArrayLike], suffix: str = "") -> ArrayLike:
        """The target value the equation implies from the input columns (named feature + suffix)."""
        return self.function(**{f: table[f + suffix] for f in self.inputs})

    def solve(self, feature: str, table: Mapping[str, ArrayLike], suffix: str = "") -> ArrayLike:
        """Value of `feature` that makes the equation hold exactly given the other features."""
        others = [f for f in self.features if f != feature]
        return self.solvers[feature](**{f: table[f + suffix] for f in others})

    def residual(self, table: Mapping[str, ArrayLike], suffix: str = "") -> np.ndarray:
        """observed target - implied target (NaN where any feature is missing or out of domain)."""
        return _as_array(table[self.target + suffix]) - _as_array(self.predict(table, suffix))


EQUATIONS: dict[str, Constraint] = {
    c.name: c
    for c in (
        Constraint(
            "henderson_hasselbalch", "ph", ("hco3", "paco2"), henderson_hasselbalch_ph,
            {"ph": henderson_hasselbalch_ph, "hco3": hco3_from_ph_paco2, "paco2": paco2_from_ph_hco3},
        ),
        Constraint(
            "base_excess", "base_excess", ("hco3", "ph"), base_excess_from_hco3_ph,
            {"base_excess": base_excess_from_hco3_ph, "ph": ph_from_base_excess_hco3,
             "hco3": hco3_from_base_excess_ph},
        ),
        Constraint(
            "severinghaus", "spo2", ("pao2",), severinghaus_spo2,
            {"spo2": severinghaus_spo2, "pao2": pao2_from_spo2},
        ),
    )
}


def constraint_mae(
    table: pd.DataFrame, equations: Mapping[str, Constraint] | None = None
) -> dict[str, dict[str, float]]:
    """Per equation that applies to `table`: MAE = mean_i |target_i - f(inputs_i)| over complete rows.

    InterGenEHR Table V metric (target units: pH units, mmol/L, spo2 percent points).  In a
    last-bins table (columns ``f"{feature}__t{k}"``) the residuals of every time slot are pooled.
    Returns ``{name: {"mae": float, "n_rows": int}}`` (n_rows counts row x slot pairs); equations
    whose columns are absent are skipped.
    """
    out: dict[str, dict[str, float]] = {}
    for name, eq in (equations or EQUATIONS).items():
        suffixes = eq.column_suffixes(table.columns)
        if not suffixes:
            continue
        res = np.abs(np.concatenate([eq.residual(table, sfx) for sfx in suffixes]))
        res = res[np.isfinite(res)]
        out[name] = {"mae": float(res.mean()) if res.size else float("nan"), "n_rows": int(res.size)}
    return out
