"""Clinician bounds on single features: "pao2 in [50, 60]", "map >= 120", "map ≥ 120", "ph < 7.2".

A bound is an interval on one continuous feature.  Accepted spellings (spaces optional, case of the
feature name kept as written):

* interval        ``pao2 in [50, 60]``, ``pao2 in (50, 60]`` (brackets: [ ] inclusive, ( ) exclusive)
* between         ``pao2 between 50 and 60`` (inclusive)
* one side        ``map >= 120``, ``map ≥ 120``, ``ph < 7.2``, ``120 <= map`` (number on either side)
* chained         ``50 <= pao2 <= 60``, ``60 > pao2 > 50``
* equality        ``pao2 = 55`` / ``pao2 == 55`` (a degenerate interval: the feature is fixed)

Operators: ``<  <=  =<  ≤  >  >=  =>  ≥``; numbers may be signed, decimal, in e-notation or ``inf``.
`resolve_bounds` checks bounds against a model's schema (unknown feature, non-continuous feature,
empty interval, interval outside the feature's plausible range) and intersects bounds that name the
same feature.  Every problem raises `ConditioningError` naming the text, feature or values at fault.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterable

from synthehr.errors import ConditioningError

__all__ = ["Bound", "parse_bound", "resolve_bounds"]

_NUM = r"[+-]?(?:inf(?:inity)?|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)"
_NAME = r"[A-Za-z_][A-Za-z0-9_.:/\-]*?"
_OP = r"<=|=<|>=|=>|==|<|>|="
_EXAMPLES = "e.g. 'pao2 in [50, 60]', 'map >= 120', 'ph < 7.2', '50 <= pao2 <= 60'"

_RE_INTERVAL = re.compile(
    rf"^(?P<name>{_NAME})\s+in\s*(?P<lb>[\[(])\s*(?P<lo>{_NUM})\s*[,;]\s*(?P<hi>{_NUM})\s*(?P<rb>[\])])$",
    re.IGNORECASE)
_RE_BETWEEN = re.compile(rf"^(?P<name>{_NAME})\s+between\s+(?P<lo>{_NUM})\s+and\s+(?P<hi>{_NUM})$", re.IGNORECASE)
_RE_CHAIN = re.compile(rf"^(?P<a>{_NUM})\s*(?P<op1>{_OP})\s*(?P<name>{_NAME})\s*(?P<op2>{_OP})\s*(?P<b>{_NUM})$",
                       re.IGNORECASE)
_RE_RIGHT = re.compile(rf"^(?P<name>{_NAME})\s*(?P<op>{_OP})\s*(?P<v>{_NUM})$", re.IGNORECASE)
_RE_LEFT = re.compile(rf"^(?P<v>{_NUM})\s*(?P<op>{_OP})\s*(?P<name>{_NAME})$", re.IGNORECASE)

_FLIP = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "=": "="}


@dataclass(frozen=True)
class Bound:
    """lower (<= or <) feature (<= or <) upper; an open side is -inf / +inf."""

    feature: str
    lower: float = -math.inf
    upper: float = math.inf
    lower_inclusive: bool = True
    upper_inclusive: bool = True
    text: str = ""  # what the user wrote, for messages (empty when built in code)

    def __post_init__(self) -> None:
        for side in ("lower", "upper"):
            v = getattr(self, side)
            try:
                v = float(v)
            except (TypeError, ValueError):
                raise ConditioningError(f"bound on {self.feature!r}: {side} {v!r} is not a number") from None
            if math.isnan(v):
                raise ConditioningError(f"bound on {self.feature!r}: {side} is NaN")
            object.__setattr__(self, side, v)
        if math.isinf(self.lower):
            object.__setattr__(self, "lower_inclusive", False)
        if math.isinf(self.upper):
            object.__setattr__(self, "upper_inclusive", False)

    @property
    def is_empty(self) -> bool:
        if self.lower > self.upper:
            return True
        return self.lower == self.upper and not (self.lower_inclusive and self.upper_inclusive)

    @property
    def is_point(self) -> bool:
        """lower == upper, both inclusive: the bound fixes the feature's value."""
        return self.lower == self.upper and self.lower_inclusive and self.upper_inclusive

    def contains(self, values) -> "np.ndarray":
        """Element-wise membership (NaN is never inside)."""
        import numpy as np

        x = np.asarray(values, dtype=float)
        lo = x >= self.lower if self.lower_inclusive else x > self.lower
        hi = x <= self.upper if self.upper_inclusive else x < self.upper
        return lo & hi

    def intersect(self, other: "Bound") -> "Bound":
        if other.feature != self.feature:
            raise ValueError(f"cannot intersect bounds on {self.feature!r} and {other.feature!r}")
        if other.lower > self.lower or (other.lower == self.lower and not other.lower_inclusive):
            lo, lo_inc = other.lower, other.lower_inclusive
        else:
            lo, lo_inc = self.lower, self.lower_inclusive
        if other.upper < self.upper or (other.upper == self.upper and not other.upper_inclusive):
            hi, hi_inc = other.upper, other.upper_inclusive
        else:
            hi, hi_inc = self.upper, self.upper_inclusive
        text = " and ".join(t for t in (self.text or self.describe(), other.text or other.describe()) if t)
        return Bound(self.feature, lo, hi, lo_inc, hi_inc, text=text)

    def describe(self) -> str:
        """Canonical text, e.g. "pao2 in [50, 60]" or "map >= 120"."""
        if self.is_point:
            return f"{self.feature} = {self.lower:g}"
        if math.isinf(self.lower) and math.isinf(self.upper):
            return f"{self.feature} unbounded"
        if math.isinf(self.lower):
            return f"{self.feature} {'<=' if self.upper_inclusive else '<'} {self.upper:g}"
        if math.isinf(self.upper):
            return f"{self.feature} {'>=' if self.lower_inclusive else '>'} {self.lower:g}"
        return (f"{self.feature} in {'[' if self.lower_inclusive else '('}{self.lower:g}, "
                f"{self.upper:g}{']' if self.upper_inclusive else ')'}")

    def __str__(self) -> str:
        return self.text or self.describe()


def _normalise(text: str) -> str:
    t = text.strip()
    replacements = (("≤", "<="), ("≥", ">="), ("⩽", "<="), ("⩾", ">="), ("−", "-"), ("–", "-"), ("∞", "inf"))
    for a, b in replacements:
        t = t.replace(a, b)
    return re.sub(r"\s+", " ", t)


def _num(s: str) -> float:
    return float(s)


def _one_side(name: str, op: str, v: float, text: str) -> Bound:
    """Bound for `name OP v`."""
    if op in ("=", "=="):
        return Bound(name, v, v, True, True, text=text)
    if op.startswith("<") or op == "=<":
        return Bound(name, upper=v, upper_inclusive=op in ("<=", "=<"), text=text)
    return Bound(name, lower=v, lower_inclusive=op in (">=", "=>"), text=text)


def _canon(op: str) -> str:
    return {"=<": "<=", "=>": ">=", "==": "="}.get(op, op)


def parse_bound(text: str | Bound) -> Bound:
    """Parse one bound; a `Bound` is returned as is.  Unparseable text raises ConditioningError naming it."""
    if isinstance(text, Bound):
        return text
    if not isinstance(text, str):
        raise ConditioningError(f"a bound must be text or a Bound, got {type(text).__name__} {text!r}")
    t = _normalise(text)
    if m := _RE_INTERVAL.match(t):
        return Bound(m["name"], _num(m["lo"]), _num(m["hi"]), m["lb"] == "[", m["rb"] == "]", text=text.strip())
    if m := _RE_BETWEEN.match(t):
        return Bound(m["name"], _num(m["lo"]), _num(m["hi"]), True, True, text=text.strip())
    if m := _RE_CHAIN.match(t):
        op1, op2 = _canon(m["op1"]), _canon(m["op2"])
        a, b = _num(m["a"]), _num(m["b"])
        if op1 in ("<", "<=") and op2 in ("<", "<="):  # a < x < b
            return Bound(m["name"], a, b, op1 == "<=", op2 == "<=", text=text.strip())
        if op1 in (">", ">=") and op2 in (">", ">="):  # a > x > b
            return Bound(m["name"], b, a, op2 == ">=", op1 == ">=", text=text.strip())
        raise ConditioningError(f"cannot parse bound {text!r}: a chained bound needs both operators pointing the "
                                f"same way ({_EXAMPLES})")
    if m := _RE_RIGHT.match(t):
        return _one_side(m["name"], _canon(m["op"]), _num(m["v"]), text.strip())
    if m := _RE_LEFT.match(t):  # v OP name  ==  name FLIP(OP) v
        return _one_side(m["name"], _FLIP[_canon(m["op"])], _num(m["v"]), text.strip())
    raise ConditioningError(f"cannot parse bound {text!r}: expected {_EXAMPLES}")


def resolve_bounds(bounds: Iterable[str | Bound] | str | Bound | None, schema) -> dict[str, Bound]:
    """Parse and check bounds against a model schema; bounds on one feature are intersected.

    Returns {feature: Bound}, each intersected with the feature's plausible range
    (ColumnSpec.lower/upper) so that the interval a sampler must hit is the real one.  Raises
    ConditioningError for an unknown or non-continuous feature, an empty interval, contradictory
    bounds on one feature, or an interval that does not meet the plausible range ("infeasible").
    """
    if bounds is None:
        return {}
    if isinstance(bounds, (str, Bound)):
        bounds = [bounds]
    parsed = [parse_bound(b) for b in bounds]
    out: dict[str, Bound] = {}
    for b in parsed:
        if b.feature not in schema:
            raise ConditioningError(f"bound {str(b)!r}: unknown feature {b.feature!r}; this model knows {schema.names}")
        spec = schema[b.feature]
        if spec.kind != "continuous":
            raise ConditioningError(f"bound {str(b)!r}: feature {b.feature!r} is {spec.kind}; bounds apply to "
                                    "continuous features only (fix a level with --condition instead)")
        if b.is_empty:
            raise ConditioningError(f"bound {str(b)!r} on {b.feature!r} is an empty interval: no value satisfies it")
        if b.feature in out:
            merged = out[b.feature].intersect(b)
            if merged.is_empty:
                raise ConditioningError(f"contradictory bounds on {b.feature!r}: {str(out[b.feature])!r} and "
                                        f"{str(b)!r} have no value in common")
            out[b.feature] = merged
        else:
            out[b.feature] = b
    for name, b in list(out.items()):
        spec = schema[name]
        lo = -math.inf if spec.lower is None else float(spec.lower)
        hi = math.inf if spec.upper is None else float(spec.upper)
        plausible = Bound(name, lo, hi, True, True)
        merged = b.intersect(plausible)
        if merged.is_empty:
            raise ConditioningError(f"infeasible bound {str(b)!r}: {name!r} has plausible range [{lo:g}, {hi:g}]"
                                    f"{' ' + spec.unit if spec.unit else ''}, which the interval does not meet")
        out[name] = Bound(name, merged.lower, merged.upper, merged.lower_inclusive, merged.upper_inclusive,
                          text=str(b))
    return out
