/* synthehr clinician workbench: plain JS, no build step, no external assets. */
"use strict";

const $ = (sel) => document.querySelector(sel);
const SVGNS = "http://www.w3.org/2000/svg";
const S = {
  token: null, info: null, model: null, features: [], byName: {}, patient: null, record: null,
  edited: new Set(), fixed: new Set(), result: null, scenario: null, current: null, lastReview: null,
};

// ------------------------------------------------------------------ helpers
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined && v !== false) e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}
function svg(tag, attrs = {}, text) {
  const e = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
function fmt(v, d = 4) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e5 || a < 1e-3)) return v.toExponential(2);
  return String(Number(v.toPrecision(d)));
}
function status(msg, kind = "info") {
  const s = $("#status");
  s.textContent = msg || "";
  s.className = msg ? kind : "";
}
async function api(path, opts = {}) {
  const headers = Object.assign({}, opts.headers || {});
  if (S.token) headers["Authorization"] = "Bearer " + S.token;
  if (opts.json !== undefined) {
    headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(opts.json);
  }
  const res = await fetch(path, { method: opts.method || (opts.json !== undefined ? "POST" : "GET"), headers, body: opts.body });
  if (!res.ok) {
    let msg = res.status + " " + res.statusText;
    try { const j = await res.json(); msg = j.message || (j.detail && JSON.stringify(j.detail)) || msg; } catch (e) { /* not JSON */ }
    const err = new Error(msg);
    err.status = res.status;
    throw err;
  }
  if (opts.raw) return res;
  return res.json();
}
function guard(fn) {
  return async (...args) => {
    try { await fn(...args); } catch (e) { status(e.message, "error"); console.error(e); }
  };
}
function reviewer() { return $("#reviewer").value.trim(); }

// ------------------------------------------------------------------ start
async function start() {
  const params = new URLSearchParams(location.search);
  if (params.get("token")) {
    sessionStorage.setItem("synthehr-token", params.get("token"));
    history.replaceState(null, "", location.pathname);
  }
  S.token = sessionStorage.getItem("synthehr-token");
  $("#reviewer").value = localStorage.getItem("synthehr-reviewer") || "";
  $("#reviewer").addEventListener("change", () => {
    localStorage.setItem("synthehr-reviewer", reviewer());
    loadHistory();
  });
  for (const b of document.querySelectorAll(".tab")) b.addEventListener("click", () => showTab(b.id));
  S.info = await api("/api/info");
  const ms = $("#model-select");
  ms.replaceChildren(...S.info.models.map((m) => el("option", { value: m.id, text: `${m.id} (${m.model_type})` })));
  ms.addEventListener("change", guard(() => selectModel(ms.value)));
  $("#data-badge").textContent = S.info.real_data ? `real data: ${S.info.dataset}` : "synthetic patients only";
  $("#data-badge").classList.toggle("real", S.info.real_data);
  wireReconstruct();
  wireScenarios();
  wireReview();
  await selectModel(ms.value);
  const tab = localStorage.getItem("synthehr-tab");
  if (tab && $("#" + tab)) showTab(tab);
}

function showTab(id) {
  for (const b of document.querySelectorAll(".tab")) {
    const on = b.id === id;
    b.classList.toggle("active", on);
    $("#" + b.dataset.panel).classList.toggle("active", on);
  }
  localStorage.setItem("synthehr-tab", id);
  if (id === "tab-review") {
    loadHistory(); loadStats();
    if (reviewer() && !S.current) guard(nextRecord)();
  }
  if (id === "tab-rules") loadRules();
  if (id === "tab-scenarios") loadScenarios();
}

async function selectModel(id) {
  S.model = id;
  const m = await api(`/api/models/${encodeURIComponent(id)}`);
  S.features = m.features;
  S.byName = Object.fromEntries(m.features.map((f) => [f.name, f]));
  S.reference = m.reference;
  S.equations = m.equations;
  buildConstraintControls();
  const p = await api(`/api/patients?model=${encodeURIComponent(id)}`);
  const ps = $("#patient-select");
  ps.replaceChildren(...p.patients.map((x) => el("option", {
    value: x.id, text: `${x.id} · ${x.n_bins} time point${x.n_bins === 1 ? "" : "s"}${p.real ? " · " + x.split : ""}`,
  })));
  if (p.patients.length) await loadPatient(p.patients[0].id, 0);
}

// ------------------------------------------------------------------ reconstruct
function wireReconstruct() {
  $("#patient-select").addEventListener("change", guard(() => loadPatient($("#patient-select").value, 0)));
  $("#bin-select").addEventListener("change", guard(() => loadPatient($("#patient-select").value, Number($("#bin-select").value))));
  $("#btn-reconstruct").addEventListener("click", guard(reconstruct));
  $("#btn-reset").addEventListener("click", guard(async () => loadPatient($("#patient-select").value, Number($("#bin-select").value))));
  $("#chart-all").addEventListener("change", () => S.result && drawChart(S.result));
}

async function loadPatient(id, bin) {
  const r = await api(`/api/patients/${encodeURIComponent(id)}?model=${encodeURIComponent(S.model)}&bin=${bin}`);
  S.record = r;
  S.values = Object.assign({}, r.values);
  S.edited = new Set();
  S.fixed = new Set();
  const bs = $("#bin-select");
  bs.replaceChildren(...r.bins.map((b) => el("option", { value: b.bin, text: `bin ${b.bin} · ${fmt(b.start_hours, 3)} h` })));
  bs.value = String(r.bin);
  $("#record-caption").textContent = `${r.real ? "real stay" : "synthetic patient"} ${r.id}, time point ${r.bin}`;
  buildFeatureTable();
  await reconstruct();
}

function buildFeatureTable() {
  const tbody = $("#feature-table tbody");
  const rows = S.features.map((f) => {
    const v = S.values[f.name];
    const obs = S.record.observed ? S.record.observed[f.name] : null;
    const num = el("input", { type: "number", step: f.step, min: f.slider_min, max: f.slider_max, value: v === null ? "" : v,
      "aria-label": f.name + " value", class: "num" });
    const slider = el("input", { type: "range", min: f.slider_min, max: f.slider_max, step: f.step,
      value: v === null ? (f.slider_min + f.slider_max) / 2 : v, "aria-label": f.name + " slider" });
    const fixed = el("input", { type: "checkbox", "aria-label": f.name + " fixed", class: "fix" });
    const tr = el("tr", { "data-feature": f.name },
      el("td", { title: f.name }, el("span", { class: f.salient ? "salient" : "", text: f.label }), el("small", { text: f.unit ? " " + f.unit : "" })),
      el("td", { class: "obs", text: obs === null ? "" : obs ? "✓" : "·", title: obs ? "measured" : "filled" }),
      el("td", {}, num),
      el("td", { class: "slider" }, slider),
      el("td", {}, fixed));
    const setFixed = (on) => {
      fixed.checked = on;
      if (on) S.fixed.add(f.name); else S.fixed.delete(f.name);
      tr.classList.toggle("is-fixed", on);
    };
    slider.addEventListener("input", () => {
      num.value = slider.value;
      S.values[f.name] = Number(slider.value);
      S.edited.add(f.name);
      tr.classList.add("edited");
      setFixed(true);
    });
    num.addEventListener("change", () => {
      if (num.value === "") { S.values[f.name] = null; setFixed(false); return; }
      const x = Number(num.value);
      if (f.lower !== null && x < f.lower || f.upper !== null && x > f.upper) {
        num.classList.add("invalid");
        status(`${f.name}: ${x} is outside the plausible range ${f.lower}–${f.upper} ${f.unit}`, "error");
        return;
      }
      num.classList.remove("invalid");
      slider.value = x;
      S.values[f.name] = x;
      S.edited.add(f.name);
      tr.classList.add("edited");
      setFixed(true);
    });
    fixed.addEventListener("change", () => {
      if (fixed.checked && (S.values[f.name] === null || S.values[f.name] === undefined)) {
        fixed.checked = false;
        status(`${f.name} has no value to fix`, "error");
        return;
      }
      setFixed(fixed.checked);
    });
    return tr;
  });
  tbody.replaceChildren(...rows);
}

function buildConstraintControls() {
  const box = $("#constraint-controls");
  const eqs = S.info.equations.filter((e) => S.equations.includes(e.name));
  const items = eqs.map((e) => el("label", { class: "check" },
    el("input", { type: "checkbox", class: "eq", value: e.name, checked: true }),
    ` ${e.name.replace(/_/g, " ")} (${e.target} from ${e.inputs.join(", ")})`));
  const enforce = el("label", { class: "check", title: S.info.enforcement_available ? "" : "not available in this installation" },
    el("input", { type: "checkbox", id: "enforce", disabled: !S.info.enforcement_available }),
    " enforce selected equations exactly");
  box.replaceChildren(...items, enforce);
  if (!eqs.length) box.replaceChildren(el("span", { class: "hint", text: "no physiological equation applies to this model's features" }));
}

async function reconstruct() {
  if (!S.record) return;
  const values = {};
  for (const f of S.features) values[f.name] = S.values[f.name] === undefined ? null : S.values[f.name];
  const body = {
    model: S.model, values, fixed: [...S.fixed],
    n_samples: Number($("#n-samples").value) || 20, seed: Number($("#seed").value) || 0,
    constraints: [...document.querySelectorAll("#constraint-controls input.eq:checked")].map((x) => x.value),
    enforce: !!($("#enforce") && $("#enforce").checked),
  };
  status("reconstructing…");
  const r = await api("/api/reconstruct", { json: body });
  r.rows = rowsOf(r.features);
  S.result = r;
  drawChart(r);
  drawConstraints(r);
  status(`reconstructed ${r.rows.length - S.fixed.size} free feature(s) from ${r.n_samples} draws in ${r.elapsed_ms} ms`, "ok");
}

// the API answers column-wise (names, original, mean, ...): one object per feature for drawing
function rowsOf(f) {
  const keys = ["fixed", "original", "mean", "sd", "q05", "q95", "original_z", "mean_z", "q05_z", "q95_z"];
  return f.names.map((name, j) => {
    const o = { name, unit: f.units[j] };
    for (const k of keys) o[k] = f[k][j];
    return o;
  });
}

function drawChart(r) {
  const all = $("#chart-all").checked;
  const anySalient = S.features.some((f) => f.salient);
  const rows = r.rows.filter((f) => all || !anySalient || f.fixed || S.edited.has(f.name) || (S.byName[f.name] || {}).salient);
  const W = 600, rowH = 22, top = 26, left = 190, right = 20, H = top + rows.length * rowH + 24;
  const zmax = 4, plotW = W - left - right;
  const x = (z) => left + ((Math.max(-zmax, Math.min(zmax, z)) + zmax) / (2 * zmax)) * plotW;
  const g = $("#chart");
  g.setAttribute("viewBox", `0 0 ${W} ${H}`);
  g.setAttribute("width", W);
  g.setAttribute("height", H);
  const kids = [];
  for (let z = -zmax; z <= zmax; z += 1) {
    kids.push(svg("line", { x1: x(z), x2: x(z), y1: top - 6, y2: H - 20, class: z === 0 ? "axis0" : "grid" }));
    kids.push(svg("text", { x: x(z), y: top - 10, class: "tick", "text-anchor": "middle" }, String(z)));
  }
  kids.push(svg("text", { x: left + plotW / 2, y: H - 4, class: "tick", "text-anchor": "middle" },
    `standardized value (z vs. ${r.reference}); beyond ±${zmax} clipped`));
  rows.forEach((f, i) => {
    const y = top + i * rowH;
    const meta = S.byName[f.name] || {};
    kids.push(svg("text", { x: left - 6, y: y + 14, class: "label" + (f.fixed ? " fixed" : ""), "text-anchor": "end" },
      (meta.label || f.name).slice(0, 30) + (f.fixed ? " ●" : "")));
    if (f.original_z !== null) {
      const x0 = x(0), x1 = x(f.original_z);
      kids.push(svg("rect", { x: Math.min(x0, x1), y: y + 3, width: Math.max(1, Math.abs(x1 - x0)), height: 7,
        class: "bar orig", "data-feature": f.name },));
    }
    if (f.mean_z !== null) {
      const x0 = x(0), x1 = x(f.mean_z);
      const bar = svg("rect", { x: Math.min(x0, x1), y: y + 11, width: Math.max(1, Math.abs(x1 - x0)), height: 7,
        class: "bar recon" + (f.fixed ? " fixed" : ""), "data-feature": f.name });
      bar.append(svg("title", {}, `${f.name}: original ${fmt(f.original)} · reconstructed ${fmt(f.mean)} ± ${fmt(f.sd)} ` +
        `(5–95 %: ${fmt(f.q05)}–${fmt(f.q95)}) ${f.unit}`));
      kids.push(bar);
      if (!f.fixed && f.q05_z !== null && f.q95_z !== null) {
        kids.push(svg("line", { x1: x(f.q05_z), x2: x(f.q95_z), y1: y + 14.5, y2: y + 14.5, class: "whisker" }));
        kids.push(svg("line", { x1: x(f.q05_z), x2: x(f.q05_z), y1: y + 11, y2: y + 18, class: "whisker" }));
        kids.push(svg("line", { x1: x(f.q95_z), x2: x(f.q95_z), y1: y + 11, y2: y + 18, class: "whisker" }));
      }
    }
  });
  g.replaceChildren(...kids);
  g.dataset.version = String(Number(g.dataset.version || 0) + 1);
  $("#chart-caption").textContent = `${rows.length} of ${r.rows.length} features · ${r.n_samples} draws · seed ${r.seed}`;
}

function drawConstraints(r) {
  const tbody = $("#constraint-table tbody");
  const yes = (b) => el("span", { class: b ? "pill ok" : "pill bad", text: b ? "holds" : "violated" });
  tbody.replaceChildren(...r.constraints.map((c) => el("tr", { class: c.selected ? "" : "muted", "data-equation": c.name },
    el("td", { text: `${c.name.replace(/_/g, " ")}: ${c.target} ~ ${c.inputs.join(", ")}` }),
    el("td", { text: "±" + c.tolerance }),
    el("td", {}, yes(c.original_holds), ` |Δ| ${fmt(c.original_residual === null ? null : Math.abs(c.original_residual), 3)}`),
    el("td", {}, yes(c.reconstructed_holds),
      ` ${c.reconstructed_fraction_holding === null ? "–" : Math.round(100 * c.reconstructed_fraction_holding) + " % of draws"},` +
      ` MAE ${fmt(c.reconstructed_mae, 3)}`))));
  const note = {
    exact: "Selected equations were enforced exactly (free features solved or drawn so they hold).",
    unavailable: "Exact enforcement is not available in this installation: showing how well the model's draws satisfy the equations.",
    off: "Not enforced: the table shows how well the model's own draws satisfy the equations.",
  }[r.enforcement];
  $("#enforcement-note").textContent = note || "";
}

// ------------------------------------------------------------------ scenarios
function scenarioSpec() {
  return {
    model: S.model, criteria: $("#criteria").value, n: Number($("#scn-n").value) || 1,
    unit: $("#scn-unit").value, seed: Number($("#scn-seed").value) || 0,
  };
}
function wireScenarios() {
  $("#btn-scn-run").addEventListener("click", guard(() => runScenario(false)));
  $("#btn-scn-save").addEventListener("click", guard(() => runScenario(true)));
  for (const fmtName of ["csv", "parquet", "meds"]) $("#btn-dl-" + fmtName).addEventListener("click", guard(() => download(fmtName)));
  $("#btn-scn-review").addEventListener("click", guard(async () => {
    const r = await api("/api/review/enqueue", { json: { scenario_id: S.scenario.scenario_id, n: Math.min(500, S.scenario.n_exportable) } });
    status(`queued ${r.added} record(s) for review (${r.already_queued} already queued)`, "ok");
  }));
}
async function runScenario(save) {
  status("generating…");
  const body = Object.assign(scenarioSpec(), save ? { save: true, name: $("#scn-name").value, created_by: reviewer() } : {});
  const r = await api("/api/scenarios/run", { json: body });
  showScenario(r, body);
  if (save) loadScenarios();
}
function showScenario(r, spec) {
  S.scenario = r;
  S.scenarioSpec = spec;
  $("#scn-caption").textContent = r.scenario_id ? `saved scenario #${r.scenario_id}` : "preview (not saved)";
  const acc = r.acceptance_rate === null ? "–" : (100 * r.acceptance_rate).toPrecision(3) + " %";
  $("#scn-summary").replaceChildren(
    el("b", { text: `${r.n_exportable} record(s)` }),
    ` meet ${r.criteria_text} (${r.n_generated} generated, ${r.flagged_excluded} flagged and left out; ` +
    `${r.drawn.toLocaleString()} draws, acceptance ${acc}).`,
    r.warning ? el("span", { class: "warn", text: " " + r.warning }) : "");
  for (const b of ["csv", "parquet", "meds"]) $("#btn-dl-" + b).disabled = r.n_exportable === 0;
  $("#btn-scn-review").disabled = !r.scenario_id;
  const fd = r.fidelity;
  const box = $("#scn-fidelity");
  if (!fd.available) box.replaceChildren(el("p", { class: "hint", text: fd.reason }));
  else box.replaceChildren(
    el("p", { text: `${fd.n_real_matching} real rows match (of ${fd.n_real_total}). Mean KS ${fmt(fd.ks_mean, 3)}, ` +
      `mean |standardized bias| ${fmt(fd.std_mean_bias_mean_abs, 3)}, correlation difference ${fmt(fd.corr_mean_abs_diff, 3)}.` }),
    el("table", { class: "data small" },
      el("thead", {}, el("tr", {}, ...["feature", "real mean", "synthetic mean", "std. bias", "KS"].map((h) => el("th", { text: h })))),
      el("tbody", {}, ...fd.features.map((f) => el("tr", {},
        el("td", { text: f.feature }), el("td", { text: fmt(f.mean_real) }), el("td", { text: fmt(f.mean_synthetic) }),
        el("td", { text: fmt(f.std_mean_bias, 3) }), el("td", { text: fmt(f.ks, 3) }))))));
  const cols = r.columns.slice(0, 12);
  $("#scn-preview thead").replaceChildren(el("tr", {}, ...cols.map((c) => el("th", { text: c === "record_key" ? "key" : c }))));
  $("#scn-preview tbody").replaceChildren(...r.preview.map((row) => el("tr", {},
    ...cols.map((c) => el("td", { text: c === "record_key" ? String(row[c]).slice(0, 8) : fmt(row[c]) })))));
  status(`scenario ready: ${r.n_exportable} record(s)`, "ok");
}
async function download(format) {
  const r = S.scenario;
  const res = r.scenario_id
    ? await api(`/api/scenarios/${r.scenario_id}/export?format=${format}`, { raw: true })
    : await api("/api/scenarios/export", { json: Object.assign({}, S.scenarioSpec, { format, save: undefined, name: undefined, created_by: undefined }), raw: true });
  const blob = await res.blob();
  const cd = res.headers.get("content-disposition") || "";
  const name = (cd.match(/filename="([^"]+)"/) || [])[1] || `scenario.${format}`;
  const a = el("a", { href: URL.createObjectURL(blob), download: name });
  document.body.append(a);
  a.click();
  a.remove();
  status(`downloaded ${name} (${res.headers.get("x-synthehr-records")} records, ${res.headers.get("x-synthehr-excluded-flagged")} flagged left out)`, "ok");
}
async function loadScenarios() {
  const r = await api("/api/scenarios");
  $("#scenario-list tbody").replaceChildren(...r.scenarios.map((s) => el("tr", {},
    el("td", { text: s.id }), el("td", { text: s.name }),
    el("td", { text: s.criteria.map((c) => `${c.feature} ${c.op} ${c.value}`).join(" and ") }),
    el("td", { text: s.n }),
    el("td", {}, el("button", { class: "small", text: "Re-run", onclick: guard(async () => {
      const out = await api(`/api/scenarios/${s.id}/run`, { method: "POST" });
      showScenario(out, { model: s.model, criteria: s.criteria.map((c) => `${c.feature} ${c.op} ${c.value}`).join(" and "), n: s.n, unit: s.unit, seed: s.seed });
      loadScenarios();
    }) })))));
}

// ------------------------------------------------------------------ review
function wireReview() {
  $("#btn-enqueue").addEventListener("click", guard(async () => {
    const r = await api("/api/review/enqueue", { json: { model: S.model, n: Number($("#enqueue-n").value) || 20, seed: Number($("#enqueue-seed").value) || 0 } });
    status(`queued ${r.added} record(s) (${r.already_queued} already queued)`, "ok");
    await nextRecord();
    loadStats();
  }));
  $("#btn-next").addEventListener("click", guard(nextRecord));
  $("#btn-accept").addEventListener("click", guard(() => decide("accept")));
  $("#btn-flag").addEventListener("click", guard(() => decide("flag")));
  $("#btn-promote").addEventListener("click", guard(promote));
}
function needReviewer() {
  if (!reviewer()) { $("#reviewer").focus(); throw new Error("reviewer: enter your name first"); }
  localStorage.setItem("synthehr-reviewer", reviewer());
}
async function nextRecord() {
  needReviewer();
  const r = await api(`/api/review/next?reviewer=${encodeURIComponent(reviewer())}`);
  S.current = r.record;
  $("#promote").classList.add("hidden");
  if (!r.record) {
    $("#review-record").replaceChildren(el("p", { class: "hint", text: r.message + ". Add records to the queue." }));
    $("#decision").classList.add("hidden");
    return;
  }
  showRecord(r.record);
  $("#review-caption").textContent = `record #${r.record.id} · ${r.remaining} left for you`;
}
function showRecord(rec) {
  const sev = { critical: "bad", error: "bad", warning: "warn", info: "muted" };
  const findings = rec.findings.length
    ? el("ul", { class: "findings" }, ...rec.findings.map((f) => el("li", {},
        el("span", { class: "pill " + (sev[f.severity] || ""), text: f.severity }), ` ${f.message} `, el("small", { text: `(${f.rule})` }))))
    : el("p", { class: "hint", text: "No audit findings." });
  const z = rec.z || {};
  const rows = Object.entries(rec.values).map(([k, v]) => {
    const zz = z[k];
    const bar = el("span", { class: "zbar" });
    if (zz !== null && zz !== undefined) {
      const w = Math.min(50, Math.abs(zz) * 12.5);
      const inner = el("i", { class: zz >= 0 ? "pos" : "neg" });
      inner.style.width = w + "%";
      inner.style.left = zz >= 0 ? "50%" : (50 - w) + "%";
      bar.append(inner);
    }
    const meta = S.byName[k] || {};
    return el("tr", {}, el("td", { text: meta.label || k }), el("td", { class: "num", text: fmt(v) }),
      el("td", { text: meta.unit || "" }), el("td", {}, bar));
  });
  $("#review-record").replaceChildren(
    el("p", {}, el("b", { id: "record-title", "data-record": rec.id, text: `Record #${rec.id}` }), ` from ${rec.source} (${rec.model_type}), ${rec.origin}; ` +
      `${rec.n_reviews} review(s) so far` + (rec.my_review ? `; you said ${rec.my_review.decision}` : "")),
    el("h3", { text: "Audit findings" }), findings,
    el("div", { class: "scroll tall" }, el("table", { class: "data small" }, el("tbody", {}, ...rows))));
  $("#decision").classList.remove("hidden");
  $("#flag-reason").value = "";
}
async function decide(decision) {
  needReviewer();
  if (!S.current) throw new Error("no record shown: press Next record");
  const reason = $("#flag-reason").value.trim();
  const r = await api(`/api/review/${S.current.id}/decision`, { json: { reviewer: reviewer(), decision, reason } });
  S.lastReview = r.review;
  status(`${decision === "flag" ? "flagged" : "accepted"} record #${S.current.id}`, "ok");
  await loadHistory();
  loadStats();
  if (decision === "flag") {
    $("#rule-pattern").value = S.current.suggested_pattern || "";
    $("#rule-rationale").value = reason;
    $("#promote").classList.remove("hidden");
    $("#decision").classList.add("hidden");
  } else {
    await nextRecord();
  }
}
async function promote() {
  needReviewer();
  const r = await api("/api/rules", { json: {
    review_id: S.lastReview ? S.lastReview.id : null, pattern: $("#rule-pattern").value,
    severity: $("#rule-severity").value, rationale: $("#rule-rationale").value, created_by: reviewer() } });
  status(`rule ${r.rule.id} saved: ${r.rule.pattern}`, "ok");
  $("#promote").classList.add("hidden");
  await nextRecord();
}
async function loadHistory() {
  if (!reviewer()) { $("#history").replaceChildren(el("li", { class: "hint", text: "enter your name to see your decisions" })); return; }
  const r = await api(`/api/review/history?reviewer=${encodeURIComponent(reviewer())}`);
  $("#history").replaceChildren(...(r.reviews.length ? r.reviews.map((x) => el("li", { "data-record": x.record_id, "data-decision": x.decision },
    el("span", { class: "pill " + (x.decision === "flag" ? "bad" : "ok"), text: x.decision }),
    ` record #${x.record_id}`, x.reason ? ` — ${x.reason}` : "", el("small", { text: ` ${new Date(x.created_at).toLocaleString()}` })))
    : [el("li", { class: "hint", text: "no decisions yet" })]));
}
async function loadStats() {
  const s = await api("/api/review/stats");
  const pct = (v) => (v === null ? "–" : (100 * v).toFixed(1) + " %");
  $("#stats").replaceChildren(
    el("p", { text: `${s.n_reviewed} of ${s.n_records} queued records reviewed (${s.n_reviews} decisions, ${s.n_flagged_records} flagged). ` +
      `${s.n_multi_reviewed} record(s) have 2+ reviewers: agreement ${pct(s.percent_agreement)}, Fleiss κ ${fmt(s.fleiss_kappa, 3)}.` }),
    el("table", { class: "data small" },
      el("thead", {}, el("tr", {}, ...["reviewer", "accepted", "flagged"].map((h) => el("th", { text: h })))),
      el("tbody", {}, ...s.reviewers.map((r) => el("tr", {}, el("td", { text: r.reviewer }), el("td", { text: r.accept }), el("td", { text: r.flag }))))),
    s.pairs.length ? el("table", { class: "data small" },
      el("thead", {}, el("tr", {}, ...["pair", "common", "agreement", "Cohen κ"].map((h) => el("th", { text: h })))),
      el("tbody", {}, ...s.pairs.map((p) => el("tr", {}, el("td", { text: p.reviewers.join(" / ") }), el("td", { text: p.n_common }),
        el("td", { text: pct(p.agreement) }), el("td", { text: fmt(p.cohen_kappa, 3) }))))) : "");
}
async function loadRules() {
  const r = await api("/api/rules");
  $("#rules-file").textContent = `(user rule file ${r.file})`;
  $("#rules-table tbody").replaceChildren(...r.rules.map((x) => el("tr", {},
    el("td", { text: x.id }), el("td", {}, el("span", { class: "pill " + (x.severity === "warning" ? "warn" : "bad"), text: x.severity })),
    el("td", {}, el("code", { text: x.pattern })), el("td", { text: x.rationale }), el("td", { text: x.source }), el("td", { text: x.created_by }))));
}

document.addEventListener("DOMContentLoaded", guard(start));
