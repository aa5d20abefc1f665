"""FastAPI backend of the clinician web app; `create_app(settings)` builds it.

API (JSON; every input validated, a 422 names the offending field in "message"):
  GET  /api/health                       liveness (no token needed)
  GET  /api/info                         models, equations, whether real data and exact enforcement are available
  GET  /api/models/{model}               feature table: units, plausible ranges, slider bounds, z reference
  GET  /api/patients?model=              stay ids (real data only when the server was given --data, else synthetic)
  GET  /api/patients/{id}?model=&bin=    one time point of one stay
  POST /api/reconstruct                  edit a record, fix some features, reconstruct the rest (several draws);
                                         "features" is columnar: names, original, mean, sd, q05, q95 and their _z
  POST /api/scenarios/run                criteria → synthetic records, preview + fidelity; save=true stores it
  POST /api/scenarios/export             the same records as csv | parquet | meds (flagged records left out)
  GET  /api/scenarios                    saved scenarios;  POST /api/scenarios/{id}/run re-runs one
  GET  /api/scenarios/{id}/export?format=
  POST /api/review/enqueue               queue records from a model (or a saved scenario) with their findings
  POST /api/review/import                queue records made by any other generator (values, not files)
  GET  /api/review/next?reviewer=        the next record this reviewer has not reviewed
  POST /api/review/{record_id}/decision  accept | flag (flag needs a reason)
  GET  /api/review/history?reviewer=     this reviewer's recent decisions
  GET  /api/review/stats                 counts and agreement across reviewers (percent, Cohen, Fleiss)
  GET  /api/rules, POST /api/rules       promoted audit rules (also written to the user rule file)
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import secrets
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from fastapi import FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from starlette.middleware.trustedhost import TrustedHostMiddleware

from synthehr.app import review as rv
from synthehr.app import scenarios as sc
from synthehr.app.settings import Settings
from synthehr.app.store import AuditRule, Review, ReviewRecord, Scenario, iso, open_store, utcnow
from synthehr.app.workbench import (LoadedModel, applicable_equations, constraint_checks, draw_with_constraints,
                                    enforcement_function, open_model, TOLERANCES, DEFAULT_TOLERANCE)
from synthehr.constraints.equations import EQUATIONS
from synthehr.errors import SynthEHRError

STATIC = Path(__file__).resolve().parent / "static"
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
SYNTHETIC_PATIENTS = 50
_REVIEWER = r"^[\w][\w .@'\-]{0,99}$"

Finite = Annotated[float, Field(allow_inf_nan=False)]
ModelId = Annotated[str, Field(min_length=1, max_length=200)]
Reviewer = Annotated[str, Field(min_length=1, max_length=100, pattern=_REVIEWER)]


class ApiError(Exception):
    """An input problem found after parsing: answered as 422 (or `status`) naming `field`."""

    def __init__(self, field: str, message: str, status: int = 422):
        self.field, self.message, self.status = field, message, status
        super().__init__(message)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ReconstructRequest(Strict):
    model: ModelId
    values: dict[Annotated[str, Field(max_length=100)], Finite | None]
    fixed: list[Annotated[str, Field(max_length=100)]] = Field(default_factory=list, max_length=500)
    n_samples: int = Field(20, ge=2)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    constraints: list[str] | None = Field(None, max_length=20)
    enforce: bool = False


class CriterionIn(Strict):
    feature: str = Field(min_length=1, max_length=100)
    op: Literal["<", "<=", ">", ">=", "==", "!="]
    value: Finite


class ScenarioSpec(Strict):
    model: ModelId
    # text ("ph < 7.2 and paco2 > 60") or a list of texts / {feature, op, value}; checked by scenarios.parse_criteria
    criteria: Any
    n: int = Field(100, ge=1)
    unit: Literal["rows", "stays"] = "rows"
    seed: int = Field(0, ge=0, le=2**31 - 1)


class ScenarioRunRequest(ScenarioSpec):
    save: bool = False
    name: str = Field("", max_length=200)
    created_by: str = Field("", max_length=100)


class ExportRequest(ScenarioSpec):
    format: Literal["csv", "parquet", "meds"] = "csv"


class EnqueueRequest(Strict):
    model: ModelId | None = None
    scenario_id: int | None = Field(None, ge=1)
    n: int = Field(20, ge=1)
    seed: int = Field(0, ge=0, le=2**31 - 1)


class ImportRequest(Strict):
    """Synthetic records made elsewhere (another generator, `synthehr generate`, a peer library): the
    values themselves, never a file path. `model` names the loaded model whose feature definitions
    (ranges, units, equations) are used to audit them; `source` labels where they came from."""

    model: ModelId
    source: str = Field(min_length=1, max_length=150, pattern=r"^[\w .:@/+-]+$")
    records: list[dict[Annotated[str, Field(max_length=100)], Finite | None]] = Field(min_length=1)


class DecisionRequest(Strict):
    reviewer: Reviewer
    decision: Literal["accept", "flag"]
    reason: str = Field("", max_length=2000)


class PromoteRequest(Strict):
    review_id: int | None = Field(None, ge=1)
    pattern: str = Field(min_length=1, max_length=500)
    severity: Literal["warning", "error", "critical"] = "warning"
    rationale: str = Field(min_length=1, max_length=2000)
    created_by: Reviewer


# ---------------------------------------------------------------------------- helpers
def _json(payload: Any, status: int = 200) -> Response:
    return Response(json.dumps(payload, allow_nan=False, default=_default), status_code=status,
                    media_type="application/json")


def _default(o: Any):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return _f(float(o))
    raise TypeError(type(o).__name__)


def _f(v: float | None, nd: int = 6) -> float | None:
    if v is None or not math.isfinite(v):
        return None
    return float(f"{v:.{nd}g}")


def _cells(a: np.ndarray, digits: int) -> list[list[float | None]]:
    """Rows of a float array as lists, rounded to `digits` significant digits, None for NaN/inf."""
    a = np.asarray(a, dtype=float)
    finite = np.isfinite(a)
    mag = np.where(finite & (a != 0), np.floor(np.log10(np.abs(np.where(finite & (a != 0), a, 1.0)))), 0)
    scale = 10.0 ** (digits - 1 - mag)
    r = np.where(finite, np.round(a * scale) / scale, np.nan)
    return [[None if v != v else v for v in row] for row in r.tolist()]


def _quantiles(x: np.ndarray, qs: tuple[float, ...]) -> list[np.ndarray]:
    """Column quantiles with linear interpolation (numpy's default method), via one sort."""
    s = np.sort(x, axis=0)
    out = []
    for q in qs:
        pos = (len(s) - 1) * q
        lo = int(np.floor(pos))
        hi = min(lo + 1, len(s) - 1)
        out.append(s[lo] + (pos - lo) * (s[hi] - s[lo]))
    return out


def _error_body(field: str, message: str) -> dict:
    return {"message": f"{field}: {message}", "detail": [{"loc": ["body", *field.split(".")], "msg": message,
                                                          "type": "value_error"}]}


_TYPE_TAG = re.compile(r"^(constrained-\w+|str|int|float|bool|none|list|dict|[\w-]+\[(?!\d+\]$).*\]|[A-Z]\w+In)$")


def _loc_name(loc: tuple) -> str:
    """A pydantic error location as the field a person would name: values.ph, fixed[0], criteria[1].op."""
    parts = [str(p) for p in loc if p not in ("body", "query", "path") and not _TYPE_TAG.match(str(p))]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (("." if out else "") + p)
    return out or ".".join(map(str, loc))


class _Guard:
    """Pure-ASGI middleware: optional token on /api (except /api/health) + security headers on every answer."""

    HEADERS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
               (b"referrer-policy", b"no-referrer"),
               (b"content-security-policy",
                b"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                b"connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")]

    def __init__(self, app, token: str | None):
        self.app, self.token = app, token.encode() if token else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        if self.token and path.startswith("/api/") and path != "/api/health":
            given = b""
            for k, v in scope.get("headers", []):
                if k == b"authorization" and v[:7].lower() == b"bearer ":
                    given = v[7:].strip()
                elif k == b"x-synthehr-token":
                    given = v.strip()
            if not secrets.compare_digest(given, self.token):
                body = json.dumps({"message": "Authorization: missing or wrong token (send 'Authorization: Bearer "
                                              "<token>' or open the app as /?token=<token>)"}).encode()
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"www-authenticate", b"Bearer"), *self.HEADERS]})
                await send({"type": "http.response.body", "body": body})
                return

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + self.HEADERS
            await send(message)

        return await self.app(scope, receive, send_with_headers)


class AppState:
    """Everything loaded at start: models, optional real data, the feedback store, a small result cache."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.prepared = None
        real_train = None
        if settings.data is not None:
            from synthehr.data import load_prepared

            self.prepared = load_prepared(settings.data)
            real_train = self.prepared.feature_table("train", with_label=True)
        self.models: dict[str, LoadedModel] = {}
        self.skipped: list[dict] = []  # model folders that could not be served, with the reason
        for path in settings.models:
            mid = base = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(path).name) or "model"
            k = 2
            while mid in self.models:
                mid, k = f"{base}-{k}", k + 1
            try:
                self.models[mid] = open_model(path, mid, real_train)
            except SynthEHRError as e:
                if len(settings.models) == 1:
                    raise
                self.skipped.append({"model": Path(path).name, "reason": str(e)})
        if not self.models:
            raise SynthEHRError(f"none of the model folders could be served: {self.skipped}")
        self.engine, self.sessions = open_store(settings.db_url)
        self._cache: OrderedDict[str, sc.ScenarioResult] = OrderedDict()
        self._lock = threading.Lock()
        self._synthetic_patients: dict[str, np.ndarray] = {}
        self._rules_cache: tuple[float, list[rv.UserRule]] | None = None

    @property
    def has_real(self) -> bool:
        return self.prepared is not None

    def model(self, model_id: str, field: str = "model") -> LoadedModel:
        lm = self.models.get(model_id)
        if lm is None:
            raise ApiError(field, f"unknown model {model_id!r}; available: {sorted(self.models)}")
        return lm

    def feature_model(self, rec: ReviewRecord) -> LoadedModel | None:
        """The model that made a queued record, else the first whose features cover it (imported records)."""
        if rec.source in self.models:
            return self.models[rec.source]
        keys = set(rec.record_values)
        return next((m for m in self.models.values() if keys <= set(m.names)), None)

    def real_table(self) -> pd.DataFrame | None:
        if self.prepared is None:
            return None
        return self.prepared.feature_table(None, with_label=True)

    def synthetic_patients(self, lm: LoadedModel) -> np.ndarray:
        with self._lock:
            if lm.id not in self._synthetic_patients:
                self._synthetic_patients[lm.id] = lm.sample(SYNTHETIC_PATIENTS, seed=20240101)
            return self._synthetic_patients[lm.id]

    def user_rules(self) -> list[rv.UserRule]:
        p = self.settings.user_rules_path
        mtime = p.stat().st_mtime if p.is_file() else -1.0
        if self._rules_cache is None or self._rules_cache[0] != mtime:
            self._rules_cache = (mtime, rv.load_user_rules(p))
        return self._rules_cache[1]

    def scenario(self, spec: ScenarioSpec) -> sc.ScenarioResult:
        lm = self.model(spec.model)
        if spec.n > self.settings.max_scenario_n:
            raise ApiError("n", f"at most {self.settings.max_scenario_n} records per scenario, got {spec.n}")
        raw = spec.criteria
        if isinstance(raw, str):
            if len(raw) > 2000:
                raise ApiError("criteria", f"at most 2000 characters, got {len(raw)}")
        elif isinstance(raw, list):
            raw = list(raw)
            if len(raw) > 50:
                raise ApiError("criteria", f"at most 50 criteria, got {len(raw)}")
            for i, c in enumerate(raw):
                if isinstance(c, dict):
                    try:
                        raw[i] = CriterionIn.model_validate(c).model_dump()
                    except ValidationError as e:
                        err = e.errors()[0]
                        raise ApiError(_loc_name((f"criteria[{i}]", *err["loc"])), err["msg"]) from None
                elif not isinstance(c, str) or len(c) > 200:
                    raise ApiError(f"criteria[{i}]", "a criterion is a text like 'ph < 7.2' (at most 200 "
                                                     "characters) or {feature, op, value}")
        else:
            raise ApiError("criteria", "give criteria as text ('ph < 7.2 and paco2 > 60') or a list")
        try:
            criteria = sc.parse_criteria(raw, lm.names)
        except sc.CriteriaError as e:
            raise ApiError(e.field, str(e)) from None
        key = json.dumps([lm.id, [c.to_json() for c in criteria], spec.n, spec.unit, spec.seed])
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        try:
            result = sc.generate(lm, criteria, spec.n, spec.seed, spec.unit, real=self.real_table())
        except sc.CriteriaError as e:
            raise ApiError(e.field, str(e)) from None
        with self._lock:
            self._cache[key] = result
            while len(self._cache) > 16:
                self._cache.popitem(last=False)
        return result


# ---------------------------------------------------------------------------- app
def create_app(settings: Settings) -> FastAPI:
    """The web app for `settings`: models and data load now; the store is migrated to the latest schema."""
    state = AppState(settings)
    app = FastAPI(title="synthehr clinician app", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.synthehr = state

    hosts = list(settings.allowed_hosts) if getattr(settings, "allowed_hosts", None) else None
    if hosts is None:
        if settings.host in ("0.0.0.0", "::", ""):
            hosts = ["*"]
        else:
            hosts = list(LOOPBACK) + ([settings.host] if settings.host not in LOOPBACK else [])
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=hosts)
    app.add_middleware(_Guard, token=settings.token)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid input"}
        detail = [{"loc": list(map(str, e.get("loc", ()))), "msg": e.get("msg", ""), "type": e.get("type", "")}
                  for e in errors]
        return JSONResponse({"message": f"{_loc_name(tuple(first.get('loc', ())))}: {first.get('msg')}",
                             "detail": detail}, status_code=422)

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError):
        body = _error_body(exc.field, exc.message)
        return JSONResponse(body, status_code=exc.status)

    @app.exception_handler(SynthEHRError)
    async def _domain_error(_request: Request, exc: SynthEHRError):
        return JSONResponse(_error_body("request", str(exc)), status_code=422)

    # ------------------------------------------------------------------ pages
    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC / "index.html", headers={"cache-control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    # ------------------------------------------------------------------ info
    @app.get("/api/health")
    async def health():
        return {"status": "ok"}

    @app.get("/api/info")
    async def info():
        return {
            "models": [{"id": m.id, "model_type": m.model_type, "n_features": len(m.features),
                        "training": m.training} for m in state.models.values()],
            "skipped_models": state.skipped,
            "real_data": state.has_real,
            "dataset": (state.prepared.info.get("source") if state.has_real else None),
            "equations": [{"name": k, "target": e.target, "inputs": list(e.inputs),
                           "tolerance": TOLERANCES.get(k, DEFAULT_TOLERANCE), "source": e.source}
                          for k, e in EQUATIONS.items()],
            "enforcement_available": enforcement_function() is not None,
            "limits": {"max_samples": settings.max_samples, "max_scenario_n": settings.max_scenario_n,
                       "max_review_batch": settings.max_review_batch},
            "auth": settings.token is not None,
        }

    @app.get("/api/models/{model_id}")
    async def model_info(model_id: Annotated[str, PathParam(max_length=200)]):
        lm = state.model(model_id)
        out = lm.describe()
        out["equations"] = sorted(applicable_equations(lm.names))
        return _json(out)

    # ------------------------------------------------------------------ patients
    @app.get("/api/patients")
    async def patients(model: Annotated[str, Query(min_length=1, max_length=200)]):
        lm = state.model(model)
        if state.has_real:
            g = state.prepared.icu_grid
            per = g.groupby("stay_id", sort=True).agg(n_bins=("bin", "size"), split=("split", "first"))
            items = [{"id": str(int(s)), "n_bins": int(r.n_bins), "split": r.split} for s, r in per.iterrows()]
            return _json({"real": True, "patients": items})
        x = state.synthetic_patients(lm)
        return _json({"real": False, "patients": [{"id": f"S{i + 1:03d}", "n_bins": 1, "split": "synthetic"}
                                                  for i in range(len(x))]})

    @app.get("/api/patients/{patient_id}")
    async def patient(patient_id: Annotated[str, PathParam(pattern=r"^[A-Za-z0-9_-]{1,40}$")],
                      model: Annotated[str, Query(min_length=1, max_length=200)],
                      bin: Annotated[int, Query(ge=0, le=100000)] = 0):
        lm = state.model(model)
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", patient_id):
            raise ApiError("patient_id", "a patient id is letters, digits, '-' or '_'")
        if state.has_real:
            if not patient_id.isdigit():
                raise ApiError("patient_id", f"unknown stay id {patient_id!r}", status=404)
            g = state.prepared.icu_grid
            rows = g[g["stay_id"] == int(patient_id)].sort_values("bin")
            if rows.empty:
                raise ApiError("patient_id", f"unknown stay id {patient_id!r}", status=404)
            if bin >= len(rows):
                raise ApiError("bin", f"stay {patient_id} has {len(rows)} time points (bin 0-{len(rows) - 1})")
            r = rows.iloc[bin]
            values = {n: (_f(float(r[n])) if n in r.index and pd.notna(r[n]) else None) for n in lm.names}
            observed = {n: bool(r["observed__" + n]) if "observed__" + n in r.index else None for n in lm.names}
            bins = [{"bin": int(b), "start_hours": _f(float(h))} for b, h in zip(rows["bin"], rows["bin_start_hours"])]
            return _json({"id": patient_id, "real": True, "bin": bin, "n_bins": len(rows), "bins": bins,
                          "values": values, "observed": observed})
        x = state.synthetic_patients(lm)
        m = re.fullmatch(r"S(\d{1,4})", patient_id)
        if not m or not 1 <= int(m[1]) <= len(x):
            raise ApiError("patient_id", f"unknown synthetic patient {patient_id!r} (S001-S{len(x):03d})", status=404)
        if bin != 0:
            raise ApiError("bin", "a synthetic patient has one time point (bin 0)")
        row = x[int(m[1]) - 1]
        return _json({"id": patient_id, "real": False, "bin": 0, "n_bins": 1,
                      "bins": [{"bin": 0, "start_hours": 0.0}],
                      "values": {n: _f(float(v)) for n, v in zip(lm.names, row)}, "observed": None})

    # ------------------------------------------------------------------ reconstruct
    async def reconstruct(request: Request):
        # The hot path, mounted as a plain Starlette route (below): the body is parsed and validated by
        # pydantic-core straight from bytes (same model, same 422 messages), without FastAPI's generic
        # body and dependency handling.
        t0 = time.perf_counter()
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise ApiError("content-type", "send the request body as application/json", status=415)
        try:
            req = ReconstructRequest.model_validate_json(await request.body())
        except ValidationError as e:
            raise RequestValidationError([{**err, "loc": ("body", *err["loc"])} for err in e.errors()]) from None
        lm = state.model(req.model)
        if req.n_samples > settings.max_samples:
            raise ApiError("n_samples", f"at most {settings.max_samples} samples per request, got {req.n_samples}")
        names = lm.names
        for k, v in req.values.items():
            if k not in lm._by_name:
                raise ApiError(f"values.{k}", f"unknown feature {k!r} for model {lm.id!r}")
            if v is None:
                continue
            f = lm.feature(k)
            if f.kind == "binary" and v not in (0.0, 1.0):
                raise ApiError(f"values.{k}", f"{k} is a yes/no flag: give 0 or 1, got {v:g}")
            if (f.lower is not None and v < f.lower) or (f.upper is not None and v > f.upper):
                raise ApiError(f"values.{k}", f"{v:g} is outside the plausible range {f.lower:g}-{f.upper:g}"
                                              f"{' ' + f.unit if f.unit else ''}")
        fixed: dict[str, float] = {}
        for i, k in enumerate(req.fixed):
            if k not in lm._by_name:
                raise ApiError(f"fixed[{i}]", f"unknown feature {k!r} for model {lm.id!r}")
            if req.values.get(k) is None:
                raise ApiError(f"fixed[{i}]", f"{k!r} is fixed but has no value in values")
            fixed[k] = float(req.values[k])
        if len(fixed) == len(names):
            raise ApiError("fixed", "every feature is fixed: leave at least one free to reconstruct")
        selected = req.constraints if req.constraints is not None else list(applicable_equations(names))
        for i, name in enumerate(selected):
            if name not in EQUATIONS:
                raise ApiError(f"constraints[{i}]", f"unknown equation {name!r}; known: {sorted(EQUATIONS)}")
        enforcement = "off"
        draws = None
        if req.enforce:
            if enforcement_function() is None:
                enforcement = "unavailable"
            else:
                try:
                    draws = draw_with_constraints(lm, fixed, req.n_samples, req.seed, selected)
                except SynthEHRError as e:
                    raise ApiError("constraints", str(e)) from None
                enforcement = "exact" if draws is not None else "off"
        if draws is None:
            draws = lm.draw(fixed, req.n_samples, req.seed)
        original = np.array([np.nan if req.values.get(n) is None else float(req.values[n]) for n in names])
        mean = draws.mean(axis=0)
        sd = draws.std(axis=0, ddof=1)
        sd[[names.index(k) for k in fixed]] = 0.0
        q05, q95 = _quantiles(draws, (0.05, 0.95))
        raw = _cells(np.vstack([original, mean, sd, q05, q95]), 5)
        z = _cells(lm.standardize(np.vstack([original, mean, q05, q95])), 3)
        # columnar: one list per quantity, in the order of "names" (compact and fast to encode)
        feats = {"names": names, "units": [f.unit for f in lm.features], "fixed": [n in fixed for n in names],
                 "original": raw[0], "mean": raw[1], "sd": raw[2], "q05": raw[3], "q95": raw[4],
                 "original_z": z[0], "mean_z": z[1], "q05_z": z[2], "q95_z": z[3]}
        checks = constraint_checks(names, original, draws, selected)
        return _json({"model": lm.id, "n_samples": req.n_samples, "seed": req.seed, "reference": lm.reference,
                      "features": feats, "constraints": checks, "enforcement": enforcement,
                      "elapsed_ms": round((time.perf_counter() - t0) * 1000, 2)})

    app.router.add_route("/api/reconstruct", reconstruct, methods=["POST"])

    # ------------------------------------------------------------------ scenarios
    def _excluded(result: sc.ScenarioResult) -> tuple[pd.DataFrame, int]:
        with state.sessions() as s:
            flagged = rv.flagged_keys(s)
        keep = ~result.table["record_key"].isin(flagged)
        return result.table[keep].reset_index(drop=True), int((~keep).sum())

    def _run_payload(result: sc.ScenarioResult, scenario_id: int | None) -> Response:
        kept, excluded = _excluded(result)
        view = dataclasses.replace(result, table=kept)
        out = view.summary(excluded=excluded)
        out["n_generated"] = len(result.table)
        out["n_exportable"] = len(kept)
        out["scenario_id"] = scenario_id
        return _json(out)

    @app.post("/api/scenarios/run")
    def scenario_run(req: ScenarioRunRequest):
        result = state.scenario(req)
        sid = None
        if req.save:
            with state.sessions() as s:
                row = Scenario(name=req.name or " and ".join(c.text() for c in result.criteria)[:200],
                               model_id=req.model, criteria=[c.to_json() for c in result.criteria], unit=req.unit,
                               n=req.n, seed=req.seed, created_by=req.created_by, created_at=utcnow(),
                               last_run_at=utcnow(), run_count=1)
                s.add(row)
                s.commit()
                sid = row.id
        return _run_payload(result, sid)

    def _saved_spec(s, scenario_id: int) -> ScenarioSpec:
        row = s.get(Scenario, scenario_id)
        if row is None:
            raise ApiError("scenario_id", f"no saved scenario {scenario_id}", status=404)
        return ScenarioSpec(model=row.model_id, criteria=[dict(c) for c in row.criteria], n=row.n,
                            unit=row.unit, seed=row.seed)

    @app.get("/api/scenarios")
    def scenario_list():
        with state.sessions() as s:
            rows = s.scalars(select(Scenario).order_by(Scenario.id.desc()).limit(200)).all()
            return _json({"scenarios": [{"id": r.id, "name": r.name, "model": r.model_id, "criteria": r.criteria,
                                         "unit": r.unit, "n": r.n, "seed": r.seed, "created_by": r.created_by,
                                         "created_at": iso(r.created_at), "run_count": r.run_count,
                                         "last_run_at": iso(r.last_run_at)}
                                        for r in rows]})

    @app.post("/api/scenarios/{scenario_id}/run")
    def scenario_rerun(scenario_id: Annotated[int, PathParam(ge=1)]):
        with state.sessions() as s:
            spec = _saved_spec(s, scenario_id)
            row = s.get(Scenario, scenario_id)
            row.run_count = Scenario.run_count + 1
            row.last_run_at = utcnow()
            s.commit()
        return _run_payload(state.scenario(spec), scenario_id)

    def _download(result: sc.ScenarioResult, fmt: str, name: str) -> Response:
        kept, excluded = _excluded(result)
        data = sc.export_bytes(kept, fmt, state.models[result.model_id].names,
                               bin_hours=float(state.prepared.info.get("bin_hours", 4.0)) if state.has_real else 4.0)
        fname = f"{name}.{sc.EXTENSIONS[fmt]}"
        return Response(data, media_type=sc.MEDIA_TYPES[fmt],
                        headers={"content-disposition": f'attachment; filename="{fname}"',
                                 "x-synthehr-excluded-flagged": str(excluded),
                                 "x-synthehr-records": str(len(kept))})

    @app.post("/api/scenarios/export")
    def scenario_export(req: ExportRequest):
        return _download(state.scenario(req), req.format, f"scenario-{req.model}-seed{req.seed}")

    @app.get("/api/scenarios/{scenario_id}/export")
    def scenario_export_saved(scenario_id: Annotated[int, PathParam(ge=1)],
                              format: Literal["csv", "parquet", "meds"] = "csv"):
        with state.sessions() as s:
            spec = _saved_spec(s, scenario_id)
        return _download(state.scenario(spec), format, f"scenario-{scenario_id}")

    # ------------------------------------------------------------------ review
    @app.post("/api/review/enqueue")
    def review_enqueue(req: EnqueueRequest):
        if (req.model is None) == (req.scenario_id is None):
            raise ApiError("model", "give either model (sample from it) or scenario_id (queue its records)")
        if req.n > settings.max_review_batch:
            raise ApiError("n", f"at most {settings.max_review_batch} records per request, got {req.n}")
        if req.model is not None:
            lm = state.model(req.model)
            x = lm.sample(req.n, seed=req.seed)
            origin = f"sample n={req.n} seed={req.seed}"
        else:
            with state.sessions() as s:
                spec = _saved_spec(s, req.scenario_id)
            result = state.scenario(spec)
            lm = state.models[result.model_id]
            x = result.table[lm.names].to_numpy(dtype=float)[: req.n]
            origin = f"scenario {req.scenario_id}"
        with state.sessions() as s:
            out = rv.enqueue(s, lm, x, origin, rules=state.user_rules())
        return out

    @app.post("/api/review/import")
    def review_import(req: ImportRequest):
        lm = state.model(req.model)
        if len(req.records) > settings.max_review_batch:
            raise ApiError("records", f"at most {settings.max_review_batch} records per request, got {len(req.records)}")
        x = np.full((len(req.records), len(lm.names)), np.nan)
        for i, rec in enumerate(req.records):
            for k, v in rec.items():
                if k not in lm._by_name:
                    raise ApiError(f"records[{i}].{k}", f"unknown feature {k!r} for model {lm.id!r}")
                x[i, lm.names.index(k)] = np.nan if v is None else v
        with state.sessions() as s:
            return rv.enqueue(s, lm, x, origin=f"imported, audited with {lm.id}", rules=state.user_rules(),
                              source=f"import:{req.source}", model_type="imported")

    @app.get("/api/review/next")
    def review_next(reviewer: Annotated[str, Query(min_length=1, max_length=100, pattern=_REVIEWER)],
                    source: Annotated[str | None, Query(max_length=200)] = None):
        with state.sessions() as s:
            rec = rv.next_record(s, reviewer, source)
            if rec is None:
                return _json({"record": None, "message": "nothing left to review for " + reviewer})
            return _json({"record": rv.record_json(rec, state.feature_model(rec), reviewer),
                          "remaining": rv.remaining(s, reviewer, source)})

    @app.get("/api/review/records/{record_id}")
    def review_record(record_id: Annotated[int, PathParam(ge=1)],
                      reviewer: Annotated[str | None, Query(max_length=100, pattern=_REVIEWER)] = None):
        with state.sessions() as s:
            rec = s.get(ReviewRecord, record_id)
            if rec is None:
                raise ApiError("record_id", f"no queued record {record_id}", status=404)
            return _json({"record": rv.record_json(rec, state.feature_model(rec), reviewer)})

    @app.post("/api/review/{record_id}/decision")
    def review_decision(record_id: Annotated[int, PathParam(ge=1)], req: DecisionRequest):
        reason = req.reason.strip()
        if req.decision == "flag" and not reason:
            raise ApiError("reason", "a flag needs a reason (what is clinically wrong with this record)")
        with state.sessions() as s:
            try:
                review = rv.submit(s, record_id, req.reviewer.strip(), req.decision, reason)
            except LookupError as e:
                raise ApiError("record_id", str(e), status=404) from None
            except IntegrityError:
                s.rollback()
                raise ApiError("reviewer", "a decision by this reviewer on this record was stored at the same "
                                           "moment; reload and try again", status=409) from None
            return _json({"review": rv.review_json(review)})

    @app.get("/api/review/history")
    def review_history(reviewer: Annotated[str, Query(min_length=1, max_length=100, pattern=_REVIEWER)],
                       limit: Annotated[int, Query(ge=1, le=200)] = 20):
        with state.sessions() as s:
            return _json({"reviews": rv.history(s, reviewer, limit)})

    @app.get("/api/review/stats")
    def review_stats():
        with state.sessions() as s:
            return _json(rv.agreement_stats(s))

    # ------------------------------------------------------------------ rules
    @app.get("/api/rules")
    def rules_list():
        with state.sessions() as s:
            rows = s.scalars(select(AuditRule).order_by(AuditRule.id)).all()
            return _json({"rules": [rv.rule_json(r) for r in rows],
                          "file": settings.user_rules_path.name})

    @app.post("/api/rules")
    def rules_promote(req: PromoteRequest):
        names = sorted({n for m in state.models.values() for n in m.names})
        with state.sessions() as s:
            if req.review_id is not None:
                review = s.get(Review, req.review_id)
                if review is None:
                    raise ApiError("review_id", f"no review {req.review_id}", status=404)
                if review.decision != "flag":
                    raise ApiError("review_id", f"review {req.review_id} accepted the record; only a flag can "
                                                "be promoted")
            try:
                rule = rv.promote_rule(s, req.review_id, req.pattern, req.severity, req.rationale.strip(),
                                       req.created_by, names, settings.user_rules_path)
            except sc.CriteriaError as e:
                raise ApiError(e.field, str(e)) from None
            return _json({"rule": rv.rule_json(rule)})

    return app
