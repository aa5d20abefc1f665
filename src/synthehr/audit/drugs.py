"""Drug-name normalisation: free-text MEDS medication codes → generic names, with a documented dictionary.

MIMIC-IV medication codes carry the drug as free text (prescriptions, eMAR, pharmacy):
``MEDICATION//START//Metoprolol Tartrate``, ``MEDICATION//HYDROmorphone (Dilaudid)//Administered``,
``MEDICATION//Sulfameth/Trimethoprim DS//Not Given``.  ``normalise_drug_name`` turns such a name into
a tuple of generic names in five steps, each driven by data in ``rules/``:

1. case and whitespace: lower case, unicode-normalised, runs of spaces collapsed;
2. whole-name dictionary: ``drug_aliases.csv`` (brand → generic, abbreviations; one alias may name
   several generics separated by ``;`` for combination products), tried on the name with and without
   its parenthesised part, and on the parenthesised part itself (``HYDROmorphone (Dilaudid)``);
3. combination split on ``-``, ``/``, ``+``, ``&``, `` w/ `` and `` with ``;
4. per component: strengths (``5%``, ``325mg``), dose forms / release / route words (``XL``, ``Neb``,
   ``Patch``, ``Ophth``...) and salt words after the first word (``Tartrate``, ``Sodium``, ``HCl``...)
   are removed, then the dictionary is tried again;
5. a component that is still not a known generic is searched for a known generic or alias as a one-
   or two-word window (``Heparin Flush (10 units/ml)`` → heparin).

Known generics are those named in ``drug_classes.csv``, ``drug_aliases.csv`` and the class names of the
interaction / contraindication tables.  An unknown drug keeps its cleaned name (so it can still be
counted) but belongs to no class.  Topical products (ophthalmic, otic, nasal, vaginal, creams,
ointments, lotions, jellies) are flagged so systemic-exposure rules can skip them.

NDC-coded medications (``MEDICATION//NDC//<11 digits>``) are resolved with an optional user table of
``ndc,generic`` rows (for example made from the FDA NDC Directory); none ships with the package.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache

_STRENGTH = re.compile(
    r"(?<![a-z])\d+(\.\d+)?\s*(%|mg/ml|mcg/hr|mg/hr|units/ml|mg|mcg|gm|g|ml|l|units?|meq|mmol|hr|h)?(?![a-z])"
    r"(\s*/\s*\d+(\.\d+)?\s*[a-z%]*)?"
)
_SPLIT = re.compile(r"\s*(?:-|/|\+|&|\bw/|\bwith\b)\s*")
_FORM_WORDS = frozenset("""
tab tabs tablet tablets cap caps capsule capsules er xr xl sr cr dr la ec odt ir iv po im sc sq inj injection
solution soln susp suspension liquid elixir syrup neb nebulizer inhaler inhalation mdi diskus hfa patch cream
ointment oint gel jelly lotion powder spray nasal ophth ophthalmic otic vag vaginal rectal supp supps suppository
enema flush drops drop infusion drip bolus premix premixed replacement sliding scale protocol oral dose loading
extended release delayed sustained immediate once daily disintegrating chewable sprinkles sprinkle lozenge
pca prophylaxis preserv free sugar dwell viscous eye ear topical concentrate conc pf in ns d5w
""".split())
_SALT_WORDS = frozenset("""
sodium potassium calcium magnesium hydrochloride hcl hydrobromide hbr sulfate sulphate tartrate succinate maleate
mesylate besylate citrate acetate fumarate bromide phosphate gluconate lactate hyclate monohydrate dihydrate
trihydrate oxalate propionate xinafoate etexilate succ na disodium dipropionate valerate bitartrate
""".split())
# First words that are minerals: their salt word is the drug ("Potassium Chloride", "Magnesium Sulfate").
_MINERALS = frozenset("sodium potassium calcium magnesium ferrous ferric zinc aluminum aluminium".split())
_TOPICAL = frozenset("ophth ophthalmic otic nasal vag vaginal cream ointment oint lotion jelly topical eye ear rinse "
                     "mouthwash shampoo".split())


@dataclass(frozen=True)
class DrugDictionary:
    """Aliases (normalised alias → generics) and the set of known generic names."""

    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)
    known: frozenset[str] = frozenset()
    ndc: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def lookup(self, text: str) -> tuple[str, ...] | None:
        if text in self.aliases:
            return self.aliases[text]
        if text in self.known:
            return (text,)
        return None


def clean_text(name: str) -> str:
    """Lower case, NFKC, straight quotes, collapsed whitespace."""
    s = unicodedata.normalize("NFKC", str(name)).lower().replace("’", "'").replace("–", "-").replace("_", " ")
    return re.sub(r"\s+", " ", s).strip()


def _strip_component(comp: str) -> str:
    comp = _STRENGTH.sub(" ", comp)
    words = [w for w in re.split(r"[\s,;:]+", comp) if w]
    words = [w.strip(".()[]'\"*") for w in words]
    words = [w for w in words if w and w not in _FORM_WORDS and re.search(r"[a-z]", w)]
    if len(words) > 1 and words[0] not in _MINERALS:
        words = [words[0]] + [w for w in words[1:] if w not in _SALT_WORDS]
    return " ".join(words)


def _windows(text: str) -> list[str]:
    words = text.split()
    return [" ".join(words[i:i + 2]) for i in range(len(words) - 1)] + words


def _component_generics(comp: str, d: DrugDictionary) -> tuple[str, ...]:
    hit = d.lookup(comp)
    if hit:
        return hit
    stripped = _strip_component(comp)
    hit = d.lookup(stripped)
    if hit:
        return hit
    for w in _windows(stripped):
        hit = d.lookup(w)
        if hit:
            return hit
    return (stripped,) if stripped else ()


def normalise_drug_name(name: str, d: DrugDictionary) -> tuple[tuple[str, ...], bool]:
    """(generic names, topical?) for one free-text drug name (see the module docstring)."""
    s = clean_text(name)
    topical = bool(set(re.split(r"[^a-z]+", s)) & _TOPICAL)
    if not s or s in ("unk", "unknown"):
        return (), topical
    for candidate in (s, re.sub(r"\([^)]*\)", " ", s).strip()):
        candidate = re.sub(r"\s+", " ", candidate).strip()
        hit = d.lookup(candidate)
        if hit:
            return tuple(sorted(set(hit))), topical
    out: set[str] = set()
    for inner in re.findall(r"\(([^)]*)\)", s):
        hit = d.lookup(inner.strip())
        if hit:
            out.update(hit)
    base = re.sub(r"\([^)]*\)", " ", s)
    parts = [p for p in _SPLIT.split(base) if p.strip()]
    for p in parts:
        out.update(_component_generics(p.strip(), d))
    # unknown components stay (a drug the dictionary lacks is still a drug); they belong to no class
    return tuple(sorted(g for g in out if g)), topical


def parse_medication_code(code: str) -> tuple[str, str, str | None]:
    """(drug part, action, status) of a MEDS medication code.

    ``MEDICATION//START//X`` → (X, "start", None); ``MEDICATION//STOP//X`` → (X, "stop", None);
    ``MEDICATION//NDC//n[//status]`` → ("NDC:n", "admin", status); ``MEDICATION//X//status`` → (X, "admin",
    status); ``MEDICATION//X`` → (X, "admin", None).
    """
    parts = code.split("//")
    if len(parts) < 2:
        return "", "admin", None
    head = parts[1].strip()
    if head.upper() in ("START", "STOP"):
        return ("//".join(parts[2:]).strip(), head.lower(), None)
    if head.upper() == "NDC" and len(parts) > 2:
        return (f"NDC:{parts[2].strip()}", "admin", parts[3].strip() if len(parts) > 3 else None)
    return head, "admin", ("//".join(parts[2:]).strip() if len(parts) > 2 else None)


@lru_cache(maxsize=200_000)
def _cached_normalise(name: str, d_id: int) -> tuple[tuple[str, ...], bool]:
    return normalise_drug_name(name, _DICTS[d_id])


_DICTS: dict[int, DrugDictionary] = {}


def normalise_cached(name: str, d: DrugDictionary) -> tuple[tuple[str, ...], bool]:
    """normalise_drug_name with a process-wide cache (unique drug names repeat across audits)."""
    if name.startswith("NDC:"):
        digits = re.sub(r"\D", "", name[4:])
        return d.ndc.get(digits, d.ndc.get(digits.zfill(11), ())), False
    key = id(d)
    _DICTS.setdefault(key, d)
    return _cached_normalise(name, key)
