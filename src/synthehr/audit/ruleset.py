"""The audit rules as data: versioned CSV tables in ``synthehr/audit/rules/``, loaded and validated.

Every rule has an id, a family, a severity, a rationale and a source.  Tables:

* ``rules.csv``              rules run by a named check function (temporal, age, values, equations,
                             duplicates); ``params`` is ``key=value;key=value``
* ``code_rules.csv``         sex- and age-specific ICD code groups
* ``icd_ranges.csv``         code groups as ICD prefix ranges per ICD version
* ``drug_interactions.csv``  drug-drug interactions between two drug classes (or generics)
* ``drug_conditions.csv``    drug-condition contraindications (drug class × ICD code group)
* ``drug_classes.csv``       class membership; a class name absent from it is one generic
                             (underscores read as spaces: ``methylene_blue`` → "methylene blue")
* ``drug_aliases.csv``       brand / abbreviation → generic dictionary (see ``drugs.py``)
* ``medication_status.csv``  eMAR statuses that mean the drug was given

Pass another folder to ``load_rules(path)`` to audit with edited tables; a folder may hold only some
files, the others come from the package.  All problems are gathered before raising (ValidationErrors).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import pandas as pd

from synthehr.audit.drugs import DrugDictionary, clean_text
from synthehr.errors import ValidationErrors

RULES_VERSION = "1"
SEVERITIES = ("info", "warning", "error", "critical")
SEVERITY_LEVEL = {s: i for i, s in enumerate(SEVERITIES)}
FAMILIES = ("sex", "age", "drug_drug", "drug_condition", "temporal", "values", "equations", "duplicates")
REPAIRS = ("none", "drop_events", "drop_duplicates", "set_target")

_COLUMNS = {
    "rules.csv": ["rule_id", "family", "check", "severity", "repair", "params", "rationale", "source"],
    "code_rules.csv": ["rule_id", "family", "code_group", "sex", "allowed_min_age", "allowed_max_age", "severity",
                       "repair", "rationale", "source"],
    "icd_ranges.csv": ["code_group", "kind", "icd_version", "start", "end", "description", "source"],
    "drug_interactions.csv": ["rule_id", "class_a", "class_b", "severity", "rationale", "source"],
    "drug_conditions.csv": ["rule_id", "drug_class", "code_group", "scope", "include_topical", "severity",
                            "rationale", "source"],
    "drug_classes.csv": ["drug_class", "generic", "source"],
    "drug_aliases.csv": ["alias", "generic", "note"],
    "medication_status.csv": ["status", "given", "note"],
}
OPTIONAL_FILES = {"drug_ndc.csv": ["ndc", "generic"]}


@dataclass(frozen=True)
class Rule:
    rule_id: str
    family: str
    severity: str
    repair: str
    rationale: str
    source: str
    check: str
    params: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def level(self) -> int:
        return SEVERITY_LEVEL[self.severity]


@dataclass
class RuleSet:
    rules: dict[str, Rule]                 # every rule, by id
    function_rules: list[Rule]             # rules.csv
    code_rules: pd.DataFrame               # code_rules.csv
    icd_ranges: pd.DataFrame               # icd_ranges.csv
    interactions: pd.DataFrame             # drug_interactions.csv
    conditions: pd.DataFrame               # drug_conditions.csv
    classes: dict[str, frozenset[str]]     # class → generics (declared classes and single-generic classes)
    drugs: DrugDictionary
    given_statuses: frozenset[str]
    origin: str = "package"
    version: str = RULES_VERSION

    def table(self) -> pd.DataFrame:
        """One row per rule: id, family, severity, repair, check, rationale, source."""
        return pd.DataFrame([{"rule_id": r.rule_id, "family": r.family, "severity": r.severity, "repair": r.repair,
                              "check": r.check, "rationale": r.rationale, "source": r.source}
                             for r in self.rules.values()])

    def select(self, families: list[str] | None = None, rule_ids: list[str] | None = None) -> "RuleSet":
        """A copy keeping only some families and/or rule ids (e.g. to time or test one family)."""
        keep = {rid for rid, r in self.rules.items()
                if (families is None or r.family in families) and (rule_ids is None or rid in rule_ids)}
        return RuleSet(
            rules={k: v for k, v in self.rules.items() if k in keep},
            function_rules=[r for r in self.function_rules if r.rule_id in keep],
            code_rules=self.code_rules[self.code_rules["rule_id"].isin(keep)],
            icd_ranges=self.icd_ranges,
            interactions=self.interactions[self.interactions["rule_id"].isin(keep)],
            conditions=self.conditions[self.conditions["rule_id"].isin(keep)],
            classes=self.classes, drugs=self.drugs, given_statuses=self.given_statuses, origin=self.origin,
        )


def _read(folder: Path | None, name: str, columns: list[str], problems: list[str]) -> pd.DataFrame:
    path = folder / name if folder is not None and (folder / name).is_file() else None
    src = path if path is not None else resources.files("synthehr.audit").joinpath("rules", name)
    try:
        with (open(path, encoding="utf-8") if path is not None else src.open("r", encoding="utf-8")) as f:
            df = pd.read_csv(f, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        problems.append(f"{name}: file not found")
        return pd.DataFrame(columns=columns)
    missing = [c for c in columns if c not in df.columns]
    if missing:
        problems.append(f"{src}: missing column(s) {missing}")
        return pd.DataFrame(columns=columns)
    return df[columns].apply(lambda c: c.str.strip())


def _params(text: str) -> dict:
    out = {}
    for item in filter(None, (p.strip() for p in str(text).split(";"))):
        k, _, v = item.partition("=")
        out[k.strip()] = v.strip()
    return out


def class_members(name: str, declared: dict[str, frozenset[str]]) -> frozenset[str]:
    return declared.get(name, frozenset({name.replace("_", " ")}))


def load_rules(path: str | Path | None = None, ndc_table: str | Path | None = None) -> RuleSet:
    """Load and validate the rule tables (package defaults, or a folder overriding some of them)."""
    folder = Path(path) if path else None
    problems: list[str] = []
    t = {name: _read(folder, name, cols, problems) for name, cols in _COLUMNS.items()}

    rules: dict[str, Rule] = {}

    def add(rule: Rule, where: str) -> None:
        if not rule.rule_id:
            problems.append(f"{where}: empty rule_id")
        elif rule.rule_id in rules:
            problems.append(f"{where}: duplicate rule_id {rule.rule_id!r}")
        if rule.severity not in SEVERITY_LEVEL:
            problems.append(f"{where}: severity {rule.severity!r} not one of {SEVERITIES}")
        if rule.family not in FAMILIES:
            problems.append(f"{where}: family {rule.family!r} not one of {FAMILIES}")
        if rule.repair not in REPAIRS:
            problems.append(f"{where}: repair {rule.repair!r} not one of {REPAIRS}")
        if not rule.rationale or not rule.source:
            problems.append(f"{where}: rule {rule.rule_id!r} needs a rationale and a source")
        rules[rule.rule_id] = rule

    from synthehr.audit.engine import CHECKS  # the registry of check functions

    function_rules = []
    for i, r in t["rules.csv"].iterrows():
        rule = Rule(r["rule_id"], r["family"], r["severity"], r["repair"] or "none", r["rationale"], r["source"],
                    r["check"], _params(r["params"]))
        if rule.check not in CHECKS:
            problems.append(f"rules.csv row {i + 2}: unknown check {rule.check!r} (known: {sorted(CHECKS)})")
        add(rule, f"rules.csv row {i + 2}")
        function_rules.append(rule)

    groups = set(t["icd_ranges.csv"]["code_group"])
    rng = t["icd_ranges.csv"].copy()
    for i, r in rng.iterrows():
        where = f"icd_ranges.csv row {i + 2}"
        if r["kind"] not in ("diagnosis", "procedure"):
            problems.append(f"{where}: kind {r['kind']!r} not diagnosis|procedure")
        if r["icd_version"] not in ("9", "10"):
            problems.append(f"{where}: icd_version {r['icd_version']!r} not 9|10")
        if len(r["start"]) != len(r["end"]) or not r["start"] or r["start"] > r["end"]:
            problems.append(f"{where}: start/end must be equal-length prefixes with start <= end")
    rng["start"] = rng["start"].str.upper().str.replace(".", "", regex=False)
    rng["end"] = rng["end"].str.upper().str.replace(".", "", regex=False)

    cr = t["code_rules.csv"].copy()
    for i, r in cr.iterrows():
        where = f"code_rules.csv row {i + 2}"
        add(Rule(r["rule_id"], r["family"], r["severity"], r["repair"] or "none", r["rationale"], r["source"],
                 "code_group_sex" if r["sex"] else "code_group_age"), where)
        if r["code_group"] not in groups:
            problems.append(f"{where}: code_group {r['code_group']!r} not in icd_ranges.csv")
        if r["sex"] not in ("", "M", "F"):
            problems.append(f"{where}: sex {r['sex']!r} not M|F|empty")
        if not r["sex"] and not (r["allowed_min_age"] or r["allowed_max_age"]):
            problems.append(f"{where}: a code rule needs a sex or an allowed age range")

    declared: dict[str, set[str]] = {}
    for _, r in t["drug_classes.csv"].iterrows():
        declared.setdefault(r["drug_class"], set()).add(clean_text(r["generic"]))
    classes = {k: frozenset(v) for k, v in declared.items()}

    ddi = t["drug_interactions.csv"].copy()
    for i, r in ddi.iterrows():
        add(Rule(r["rule_id"], "drug_drug", r["severity"], "none", r["rationale"], r["source"], "drug_drug"),
            f"drug_interactions.csv row {i + 2}")
        for c in (r["class_a"], r["class_b"]):
            classes.setdefault(c, class_members(c, {}))

    dc = t["drug_conditions.csv"].copy()
    for i, r in dc.iterrows():
        where = f"drug_conditions.csv row {i + 2}"
        add(Rule(r["rule_id"], "drug_condition", r["severity"], "none", r["rationale"], r["source"],
                 "drug_condition"), where)
        classes.setdefault(r["drug_class"], class_members(r["drug_class"], {}))
        if r["code_group"] not in groups:
            problems.append(f"{where}: code_group {r['code_group']!r} not in icd_ranges.csv")
        if r["scope"] not in ("record", "admission"):
            problems.append(f"{where}: scope {r['scope']!r} not record|admission")
        if r["include_topical"] not in ("0", "1"):
            problems.append(f"{where}: include_topical must be 0 or 1")

    aliases: dict[str, tuple[str, ...]] = {}
    for i, r in t["drug_aliases.csv"].iterrows():
        key = clean_text(r["alias"])
        if key in aliases:
            problems.append(f"drug_aliases.csv row {i + 2}: alias {r['alias']!r} listed twice")
        aliases[key] = tuple(clean_text(g) for g in r["generic"].split(";") if g.strip())
    ndc: dict[str, tuple[str, ...]] = {}
    ndc_path = Path(ndc_table) if ndc_table else (folder / "drug_ndc.csv" if folder and (folder / "drug_ndc.csv").is_file() else None)
    if ndc_path is not None:
        nd = pd.read_csv(ndc_path, dtype=str, keep_default_na=False)
        if not {"ndc", "generic"} <= set(nd.columns):
            problems.append(f"{ndc_path}: needs columns ndc, generic")
        else:
            import re

            for _, r in nd.iterrows():
                ndc[re.sub(r"\D", "", r["ndc"])] = tuple(clean_text(g) for g in r["generic"].split(";") if g.strip())
    known = frozenset(set().union(*classes.values()) | {g for gs in aliases.values() for g in gs})
    given = frozenset(s for s, g in zip(t["medication_status.csv"]["status"], t["medication_status.csv"]["given"])
                      if g == "1")
    if problems:
        raise ValidationErrors(problems)
    return RuleSet(rules=rules, function_rules=function_rules, code_rules=cr, icd_ranges=rng, interactions=ddi,
                   conditions=dc, classes=classes, drugs=DrugDictionary(aliases, known, ndc),
                   given_statuses=given, origin=str(folder) if folder else "package")
