"""Clinical constraints: physiological equations between features and their exact inverses."""

from synthehr.constraints.equations import (
    EQUATIONS,
    Constraint,
    base_excess_from_hco3_ph,
    constraint_mae,
    hco3_from_base_excess_ph,
    hco3_from_ph_paco2,
    henderson_hasselbalch_ph,
    paco2_from_ph_hco3,
    pao2_from_spo2,
    ph_from_base_excess_hco3,
    severinghaus_spo2,
)
from synthehr.constraints.bounds import Bound, parse_bound, resolve_bounds
from synthehr.constraints.enforce import (
    EQUATION_TOLERANCE,
    ConstrainedGenerator,
    constraint_report,
    generate_with_constraints,
    impute_with_constraints,
    resolve_equations,
)

__all__ = [
    "EQUATIONS",
    "Constraint",
    "base_excess_from_hco3_ph",
    "constraint_mae",
    "hco3_from_base_excess_ph",
    "hco3_from_ph_paco2",
    "henderson_hasselbalch_ph",
    "paco2_from_ph_hco3",
    "pao2_from_spo2",
    "ph_from_base_excess_hco3",
    "severinghaus_spo2",
    "Bound",
    "parse_bound",
    "resolve_bounds",
    "EQUATION_TOLERANCE",
    "ConstrainedGenerator",
    "constraint_report",
    "generate_with_constraints",
    "impute_with_constraints",
    "resolve_equations",
]
