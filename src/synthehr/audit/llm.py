"""Optional LLM reviewer over an OpenAI-compatible chat-completions endpoint (off by default).

Works with any server speaking ``POST {base_url}/chat/completions`` — a local llama.cpp server
(``llama-server``, base URL ``http://127.0.0.1:8080/v1``), vLLM (``http://127.0.0.1:8000/v1``) or
Ollama (``http://127.0.0.1:11434/v1``).  Base URL and model come from ``LLMConfig`` or the environment
(``SYNTHEHR_LLM_URL``, ``SYNTHEHR_LLM_MODEL``, ``SYNTHEHR_LLM_API_KEY``).

Data protection: with no base URL configured nothing is sent.  Requests go only to the configured
URL: redirects are refused and proxy environment variables are ignored (set ``use_env_proxy=True`` to
use them).  A record is sent as a compact summary (``summarise_records``): sex, ages and relative days,
codes and normalised drug names — no subject id, no absolute date.

Each record: one request asking for JSON ``{"consistent": bool, "findings": [{"family", "severity",
"description", "evidence"}]}``; the reply is validated against that schema; invalid JSON or schema
violations are retried, then recorded as a reviewer error (never an exception).  Timeouts and HTTP
errors (429, 5xx, connection errors) are retried with exponential backoff.  Successful reviews are
cached by the hash of (model, prompt version, summary) in memory and, with ``cache_dir``, on disk.
Concurrency is bounded by ``concurrency`` worker threads.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from synthehr.audit.ruleset import FAMILIES, SEVERITIES
from synthehr.errors import SynthEHRError

PROMPT_VERSION = "audit-review-v1"
SYSTEM_PROMPT = (
    "You are a clinical data auditor. You receive a summary of one synthetic patient record (MEDS events: "
    "sex, ages, admissions, ICD diagnoses and procedures, drugs, abnormal or simultaneous measurements). "
    "Report clinical inconsistencies only: sex-specific codes in the wrong sex, age-implausible codes, "
    "dangerous drug-drug interactions, drug-condition contraindications, impossible event order (events "
    "after death, discharge before admission, overlapping stays), values impossible for life, blood-gas "
    "values violating Henderson-Hasselbalch, duplicated events. Answer with one JSON object and nothing else: "
    '{"consistent": true|false, "findings": [{"family": one of ' + json.dumps(list(FAMILIES) + ["other"])
    + ', "severity": one of ' + json.dumps(list(SEVERITIES)) + ', "description": "...", '
    '"evidence": ["event text", ...]}]}. Use an empty findings list when the record is consistent.'
)


@dataclass
class LLMConfig:
    base_url: str | None = None
    model: str | None = None
    api_key: str | None = None
    timeout_s: float = 60.0
    max_retries: int = 2
    backoff_s: float = 0.5
    concurrency: int = 4
    cache_dir: str | Path | None = None
    max_tokens: int = 800
    temperature: float = 0.0
    json_mode: bool = True
    use_env_proxy: bool = False

    @classmethod
    def from_env(cls, **overrides: Any) -> "LLMConfig":
        """Config from SYNTHEHR_LLM_URL / _MODEL / _API_KEY; explicit non-None overrides win."""
        env = {"base_url": os.environ.get("SYNTHEHR_LLM_URL") or None,
               "model": os.environ.get("SYNTHEHR_LLM_MODEL") or None,
               "api_key": os.environ.get("SYNTHEHR_LLM_API_KEY") or None}
        env.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**env)

    @property
    def enabled(self) -> bool:
        return bool(self.base_url)

    def endpoint(self) -> str:
        if not self.base_url:
            raise SynthEHRError("no LLM base URL configured (give --llm-url or set SYNTHEHR_LLM_URL)")
        url = self.base_url.rstrip("/")
        if not re.match(r"^https?://", url):
            raise SynthEHRError(f"LLM base URL must start with http:// or https://, got {self.base_url!r}")
        return url if url.endswith("/chat/completions") else url + "/chat/completions"


@dataclass
class Review:
    subject_id: int
    status: str                      # ok | error
    consistent: bool | None = None
    findings: list[dict] = field(default_factory=list)
    error: str | None = None
    attempts: int = 0
    cached: bool = False
    record_hash: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------------- schema
def validate_review(obj: Any) -> list[str]:
    """Problems with a parsed reply (empty list: valid)."""
    problems = []
    if not isinstance(obj, dict):
        return [f"reply is a {type(obj).__name__}, expected an object"]
    if not isinstance(obj.get("consistent"), bool):
        problems.append("'consistent' must be true or false")
    fs = obj.get("findings")
    if not isinstance(fs, list):
        problems.append("'findings' must be a list")
        return problems
    for i, f in enumerate(fs):
        if not isinstance(f, dict):
            problems.append(f"findings[{i}] must be an object")
            continue
        if f.get("family") not in (*FAMILIES, "other"):
            problems.append(f"findings[{i}].family {f.get('family')!r} not one of {list(FAMILIES) + ['other']}")
        if f.get("severity") not in SEVERITIES:
            problems.append(f"findings[{i}].severity {f.get('severity')!r} not one of {list(SEVERITIES)}")
        if not isinstance(f.get("description"), str):
            problems.append(f"findings[{i}].description must be a string")
        ev = f.get("evidence", [])
        if not isinstance(ev, list) or not all(isinstance(x, str) for x in ev):
            problems.append(f"findings[{i}].evidence must be a list of strings")
    return problems


def parse_reply(text: str) -> tuple[dict | None, str | None]:
    """(parsed object, None) or (None, why) for a model reply; code fences are tolerated."""
    t = text.strip()
    m = re.search(r"```(?:json)?\s*(.*?)```", t, flags=re.S)
    if m:
        t = m.group(1).strip()
    try:
        obj = json.loads(t)
    except json.JSONDecodeError as e:
        return None, f"invalid JSON: {e}"
    problems = validate_review(obj)
    return (obj, None) if not problems else (None, "schema: " + "; ".join(problems))


# --------------------------------------------------------------------------------------------- transport
class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        raise urllib.error.HTTPError(req.full_url, code, f"redirect to {newurl} refused", headers, fp)


class _RetryableError(Exception):
    pass


class LLMReviewer:
    """Reviews record summaries through the configured endpoint; see the module docstring."""

    def __init__(self, config: LLMConfig | None = None):
        self.config = config or LLMConfig.from_env()
        self._memory: dict[str, dict] = {}
        self._lock = threading.Lock()
        handlers: list[Any] = [_NoRedirect()]
        if not self.config.use_env_proxy:
            handlers.append(urllib.request.ProxyHandler({}))
        self._opener = urllib.request.build_opener(*handlers)
        self.requests_sent = 0

    # -- cache
    def record_hash(self, summary: str) -> str:
        key = json.dumps({"model": self.config.model, "prompt": PROMPT_VERSION, "summary": summary}, sort_keys=True)
        return hashlib.sha256(key.encode()).hexdigest()

    def _cache_get(self, h: str) -> dict | None:
        with self._lock:
            if h in self._memory:
                return self._memory[h]
        if self.config.cache_dir:
            p = Path(self.config.cache_dir) / f"{h}.json"
            if p.is_file():
                try:
                    obj = json.loads(p.read_text())
                except (OSError, json.JSONDecodeError):
                    return None
                with self._lock:
                    self._memory[h] = obj
                return obj
        return None

    def _cache_put(self, h: str, obj: dict) -> None:
        with self._lock:
            self._memory[h] = obj
        if self.config.cache_dir:
            d = Path(self.config.cache_dir)
            d.mkdir(parents=True, exist_ok=True)
            tmp = d / f".{h}.{threading.get_ident()}.tmp"
            tmp.write_text(json.dumps(obj))
            tmp.replace(d / f"{h}.json")

    # -- one request
    def _post(self, summary: str) -> str:
        cfg = self.config
        body = {"model": cfg.model or "default", "temperature": cfg.temperature, "max_tokens": cfg.max_tokens,
                "messages": [{"role": "system", "content": SYSTEM_PROMPT},
                             {"role": "user", "content": summary}]}
        if cfg.json_mode:
            body["response_format"] = {"type": "json_object"}
        headers = {"Content-Type": "application/json"}
        if cfg.api_key:
            headers["Authorization"] = f"Bearer {cfg.api_key}"
        req = urllib.request.Request(cfg.endpoint(), data=json.dumps(body).encode(), headers=headers, method="POST")
        with self._lock:
            self.requests_sent += 1
        try:
            with self._opener.open(req, timeout=cfg.timeout_s) as resp:
                payload = json.loads(resp.read().decode("utf-8", errors="replace"))
        except urllib.error.HTTPError as e:
            if e.code == 429 or e.code >= 500:
                raise _RetryableError(f"HTTP {e.code}") from None
            raise SynthEHRError(f"LLM endpoint answered HTTP {e.code}: {e.reason}") from None
        except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError) as e:
            raise _RetryableError(f"{type(e).__name__}: {getattr(e, 'reason', e)}") from None
        except json.JSONDecodeError as e:
            raise _RetryableError(f"endpoint reply is not JSON: {e}") from None
        try:
            return payload["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise _RetryableError("endpoint reply lacks choices[0].message.content") from None

    def review_one(self, subject_id: int, summary: str) -> Review:
        h = self.record_hash(summary)
        hit = self._cache_get(h)
        if hit is not None:
            return Review(subject_id, "ok", hit["consistent"], hit["findings"], cached=True, record_hash=h)
        t0, last, attempts = time.perf_counter(), "", 0
        for attempt in range(self.config.max_retries + 1):
            attempts = attempt + 1
            try:
                text = self._post(summary)
            except _RetryableError as e:
                last = str(e)
            except SynthEHRError as e:
                last = str(e)
                break
            else:
                obj, why = parse_reply(text)
                if obj is not None:
                    obj = {"consistent": obj["consistent"], "findings": obj["findings"]}
                    self._cache_put(h, obj)
                    return Review(subject_id, "ok", obj["consistent"], obj["findings"], attempts=attempts,
                                  record_hash=h, seconds=time.perf_counter() - t0)
                last = why or "invalid reply"
            if attempt < self.config.max_retries:
                time.sleep(self.config.backoff_s * (2 ** attempt))
        return Review(subject_id, "error", error=last, attempts=attempts, record_hash=h,
                      seconds=time.perf_counter() - t0)

    def review(self, summaries: dict[int, str]) -> list[Review]:
        """Review every record (subject id → summary) with at most `concurrency` requests in flight.

        With no base URL configured, returns [] and sends nothing."""
        if not self.config.enabled or not summaries:
            return []
        self.config.endpoint()  # validates the URL before any thread starts
        items = list(summaries.items())
        with ThreadPoolExecutor(max_workers=max(1, int(self.config.concurrency))) as pool:
            return list(pool.map(lambda kv: self.review_one(kv[0], kv[1]), items))


# --------------------------------------------------------------------------------------------- summaries
def summarise_records(events: Any, subjects: list[int] | None = None, *, rules: Any = None,
                      codes_meta: pl.DataFrame | None = None, max_lines: int = 150) -> dict[int, str]:
    """A compact, date-free text summary per record (what the reviewer sees).

    Lines: sex and age at first event; death (age); hospital/ICU admissions and discharges (day
    relative to the first event); ICD diagnoses/procedures (with descriptions when `codes_meta` has
    them); drugs as normalised generic names with their first day; measurements outside plausible
    ranges; simultaneous pH/PaCO2/HCO3.  Capped at `max_lines` lines per record.
    """
    from synthehr.audit.engine import YEAR_US, AuditContext, to_events
    from synthehr.audit.ruleset import load_rules

    rules = rules or load_rules()
    ev = to_events(events)
    if subjects is not None:
        ev = ev.filter(pl.col("subject_id").is_in(pl.Series(subjects, dtype=pl.Int64).implode()))
    ctx = AuditContext(ev, rules)
    demo = ctx.demographics
    t0 = ev.filter(pl.col("time").is_not_null() & (pl.col("code") != "MEDS_BIRTH")) \
           .group_by("subject_id").agg(t0=pl.col("time").min())
    desc = {}
    if codes_meta is not None and "description" in codes_meta.columns:
        desc = dict(zip(codes_meta["code"].to_list(), codes_meta["description"].to_list()))
    keep = ev.filter(pl.col("code").str.contains(r"^(HOSPITAL_|ICU_|DIAGNOSIS//|PROCEDURE//ICD|MEDS_DEATH)"))
    drugs = ctx.drug_codes.filter(pl.col("given") | (pl.col("action") == "start")).select("code", "generic")
    drug_ev = ev.join(drugs, on="code").filter(pl.col("time").is_not_null()) \
                .group_by("subject_id", "generic").agg(first=pl.col("time").min())
    labs = ctx.lab_values("mimic-iv").filter((pl.col("value") < pl.col("lo")) | (pl.col("value") > pl.col("hi")))
    bg = ctx.lab_values("mimic-iv", ["ph", "paco2", "hco3"]).group_by("subject_id", "time", "feature") \
            .agg(pl.col("value").mean())
    out: dict[int, str] = {}
    demo_d = {r["subject_id"]: r for r in demo.to_dicts()}
    t0_d = dict(t0.iter_rows())

    def day(sid, t):
        base = t0_d.get(sid)
        return "?" if base is None or t is None else f"{(t - base).total_seconds() / 86400:.1f}"

    by_subject = {k[0]: g for k, g in keep.sort("time").partition_by("subject_id", as_dict=True).items()} \
        if keep.height else {}
    drugs_by = {k[0]: g for k, g in drug_ev.sort("first").partition_by("subject_id", as_dict=True).items()} \
        if drug_ev.height else {}
    labs_by = {k[0]: g for k, g in labs.partition_by("subject_id", as_dict=True).items()} if labs.height else {}
    bg_by = {k[0]: g for k, g in bg.partition_by("subject_id", as_dict=True).items()} if bg.height else {}
    for sid in (subjects if subjects is not None else demo["subject_id"].to_list()):
        d = demo_d.get(sid, {})
        lines = []
        birth, first = d.get("birth"), t0_d.get(sid)
        age = ((first - birth).total_seconds() * 1e6 / YEAR_US) if birth and first else None
        lines.append(f"sex: {d.get('sex') or 'unknown'}; age at first event: "
                     f"{'unknown' if age is None else f'{age:.0f}'} years")
        if d.get("death") is not None:
            lines.append(f"death: day {day(sid, d['death'])}")
        g = by_subject.get(sid)
        if g is not None:
            for r in g.iter_rows(named=True):
                text = desc.get(r["code"]) or ""
                lines.append(f"day {day(sid, r['time'])}: {r['code']}{' (' + text + ')' if text else ''}")
        g = drugs_by.get(sid)
        if g is not None:
            lines.append("drugs (first day): " + ", ".join(f"{r['generic']} ({day(sid, r['first'])})"
                                                           for r in g.iter_rows(named=True)))
        g = labs_by.get(sid)
        if g is not None:
            for r in g.head(20).iter_rows(named=True):
                lines.append(f"day {day(sid, r['time'])}: {r['feature']} = {r['value']:.3g} (plausible "
                             f"{r['lo']:g}-{r['hi']:g})")
        g = bg_by.get(sid)
        if g is not None:
            w = g.pivot("feature", index="time", values="value")
            if all(c in w.columns for c in ("ph", "paco2", "hco3")):
                for r in w.drop_nulls().head(10).iter_rows(named=True):
                    lines.append(f"day {day(sid, r['time'])}: blood gas pH {r['ph']:.2f}, PaCO2 {r['paco2']:.0f}, "
                                 f"HCO3 {r['hco3']:.0f}")
        if len(lines) > max_lines:
            lines = lines[:max_lines - 1] + [f"... {len(lines) - max_lines + 1} more lines omitted"]
        out[sid] = "\n".join(lines)
    return out


# --------------------------------------------------------------------------------------------- agreement
def agreement(findings: pl.DataFrame, reviews: list[Review], min_level: int = 0) -> dict:
    """Agreement between the rules and the reviewer on the records both judged (reviewer status ok).

    A record is "inconsistent" for the rules when it has a finding with level >= min_level, and for the
    reviewer when it says consistent=false or lists findings.  Returns counts, raw agreement and
    Cohen's kappa; per family, the same on the families the reviewer names.
    """
    ok = [r for r in reviews if r.status == "ok"]
    out: dict[str, Any] = {"records_reviewed": len(reviews), "records_judged_by_both": len(ok),
                           "reviewer_errors": sum(r.status != "ok" for r in reviews)}
    if not ok:
        return out
    f = findings.filter(pl.col("level") >= min_level) if findings.height else findings
    rule_fams: dict[int, set[str]] = {}
    for sid, fam in f.select("subject_id", "family").iter_rows():
        rule_fams.setdefault(sid, set()).add(fam)

    def stats(a: list[bool], b: list[bool]) -> dict:
        n = len(a)
        both = sum(x and y for x, y in zip(a, b))
        neither = sum((not x) and (not y) for x, y in zip(a, b))
        po = (both + neither) / n
        pa, pb = sum(a) / n, sum(b) / n
        pe = pa * pb + (1 - pa) * (1 - pb)
        kappa = (po - pe) / (1 - pe) if pe < 1 else float("nan")
        return {"n": n, "rules_only": sum(x and not y for x, y in zip(a, b)),
                "llm_only": sum(y and not x for x, y in zip(a, b)), "both": both, "neither": neither,
                "agreement": po, "cohens_kappa": kappa}

    rules_flag = [bool(rule_fams.get(r.subject_id)) for r in ok]
    llm_flag = [(r.consistent is False) or bool(r.findings) for r in ok]
    out["overall"] = stats(rules_flag, llm_flag)
    out["by_family"] = {}
    for fam in FAMILIES:
        a = [fam in rule_fams.get(r.subject_id, set()) for r in ok]
        b = [any(x.get("family") == fam for x in r.findings) for r in ok]
        out["by_family"][fam] = stats(a, b)
    return out
