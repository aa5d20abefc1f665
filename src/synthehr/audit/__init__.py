"""Clinical-consistency audit of MEDS event data: rules as data, a vectorised engine, an optional LLM reviewer.

    from synthehr.audit import audit, audit_meds, load_rules
    result = audit("path/to/meds")            # report: findings, per-family rates
    result = audit(events, repair=True, filter_severity="error")
    audit_meds("in_meds", "out_dir", filter_severity="error")   # writes MEDS + findings table
"""

from synthehr.audit.engine import CHECKS, AuditResult, audit, check, evidence_table
from synthehr.audit.ruleset import FAMILIES, SEVERITIES, RuleSet, load_rules

__all__ = ["CHECKS", "FAMILIES", "SEVERITIES", "AuditResult", "RuleSet", "audit", "audit_meds", "check",
           "evidence_table", "load_rules"]


def __getattr__(name):
    if name == "audit_meds":
        from synthehr.audit.io import audit_meds

        return audit_meds
    raise AttributeError(name)
