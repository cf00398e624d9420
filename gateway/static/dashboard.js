// mlmesh dashboard: polls the gateway's public GET endpoints and redraws. No dependencies, no
// external URLs; every value from the server goes in as text (never HTML).
"use strict";

(() => {
  const params = new URLSearchParams(window.location.search);
  // ?refresh=<seconds> for a faster or slower page (tests use 0.5); bounded so a typo cannot hammer the gateway.
  const REFRESH_MS = 1000 * Math.min(60, Math.max(0.5, Number(params.get("refresh")) || 2));
  const COMPONENTS_EVERY_MS = 15000;
  const PALETTE = ["#2f5bd3", "#d9480f", "#2b8a3e", "#ae3ec9", "#1098ad", "#e67700", "#5c7cfa", "#c2255c"];
  const TIER_NAMES = {
    tier1: "Tier 1 · core learning loop",
    tier2: "Tier 2 · optimization",
    tier3: "Tier 3 · evaluation",
    tier4: "Tier 4 · performance, infrastructure, security",
  };

  const state = { componentsAt: 0, componentsKey: "", colors: new Map(), traffic: [] };

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(key, String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const $ = (id) => document.getElementById(id);

  async function getJSON(path) {
    const response = await fetch(path, { headers: { accept: "application/json" }, cache: "no-store" });
    if (!response.ok) {
      const error = new Error(`${path} answered ${response.status}`);
      error.status = response.status;
      throw error;
    }
    return response.json();
  }

  // Timestamps arrive as ISO strings or unix seconds; errors as text or {detail: ...} objects.
  function toMillis(when) {
    if (when === null || when === undefined || when === "") return 0;
    if (typeof when === "number") return when * 1000;
    const parsed = Date.parse(when);
    return Number.isNaN(parsed) ? 0 : parsed;
  }

  function errorText(error) {
    if (error === null || error === undefined || error === "") return "";
    if (typeof error === "string") return error;
    if (typeof error === "object" && error.detail) return String(error.detail);
    return JSON.stringify(error);
  }

  const fmt = {
    ms: (v) => (v === null || v === undefined ? "–" : v < 10 ? `${v.toFixed(2)} ms` : `${v.toFixed(0)} ms`),
    rate: (v) => (v === null || v === undefined ? "–" : v < 10 ? v.toFixed(2) : v.toFixed(0)),
    pct: (v) => (v === null || v === undefined ? "–" : `${(100 * v).toFixed(v < 0.1 ? 1 : 0)}%`),
    ago: (s) => (s === null || s === undefined ? "never" : s < 1 ? "just now" : s < 120 ? `${s.toFixed(0)} s ago` : `${(s / 60).toFixed(0)} min ago`),
    time: (when) => (toMillis(when) ? new Date(toMillis(when)).toLocaleTimeString() : "–"),
    duration: (ms) => (ms === null || ms === undefined ? "–" : ms < 1000 ? `${ms.toFixed(0)} ms` : `${(ms / 1000).toFixed(1)} s`),
  };

  function pill(status, text) {
    const s = String(status || "unknown");
    return el("span", { class: `pill pill-${s}`, dataset: { status: s } }, text || s);
  }

  function colorOf(id) {
    if (!state.colors.has(id)) state.colors.set(id, PALETTE[state.colors.size % PALETTE.length]);
    return state.colors.get(id);
  }

  // ---- services ---------------------------------------------------------------------------

  function renderHealth(health, traffic) {
    const status = $("mesh-status");
    status.className = `pill pill-${health.status}`;
    status.dataset.status = health.status;
    status.textContent = `mesh ${health.status} · ${health.components} components`;

    const byId = new Map((traffic || []).map((t) => [t.id, t]));
    const rows = [];
    const gw = byId.get("gateway");
    if (gw) {
      rows.push(serviceRow({ id: "gateway", tier: "gateway", status: "up", breaker: null, latency_ms: null,
        last_seen_s: 0, components: health.components, error: null }, gw));
    }
    for (const s of health.services) rows.push(serviceRow(s, byId.get(s.id)));
    if (!health.services.length) rows.push(el("tr", { class: "empty" }, el("td", { colspan: 12 }, "no services registered")));
    $("services").tBodies[0].replaceChildren(...rows);
  }

  function serviceRow(s, traffic) {
    const now = traffic && traffic.current;
    const note = s.error || (traffic && traffic.metrics_error && s.status !== "down" ? `metrics: ${traffic.metrics_error}` : "");
    return el(
      "tr",
      { class: `service ${s.status}`, dataset: { serviceId: s.id, tier: s.tier, status: s.status } },
      el("td", { class: "mono" }, s.id),
      el("td", {}, s.tier),
      el("td", { class: "status" }, pill(s.status)),
      el("td", { class: "num" }, fmt.ms(s.latency_ms)),
      el("td", {}, s.tier === "gateway" ? "this page" : fmt.ago(s.last_seen_s)),
      el("td", {}, s.breaker ? pill(s.breaker) : "–"),
      el("td", { class: "num" }, s.components),
      el("td", { class: "num" }, now ? fmt.rate(now.rate_rps) : "–"),
      el("td", { class: "num" }, now ? fmt.ms(now.p50_ms) : "–"),
      el("td", { class: "num" }, now ? fmt.ms(now.p95_ms) : "–"),
      el("td", { class: "num" }, now ? fmt.pct(now.error_rate) : "–"),
      el("td", { class: "note" }, note),
    );
  }

  function renderAlerts(alerts) {
    $("alert-count").textContent = alerts.length ? `(${alerts.length})` : "";
    const items = alerts.map((a) =>
      el("li", { class: `alert ${a.severity}`, dataset: { kind: a.kind, service: a.service } },
        pill(a.severity), el("span", { class: "mono" }, a.service), el("span", {}, a.message)));
    $("alerts").replaceChildren(...(items.length ? items : [el("li", { class: "empty" }, "no alerts")]));
  }

  // ---- charts -----------------------------------------------------------------------------

  function niceMax(value) {
    if (!(value > 0)) return 1;
    const exp = Math.pow(10, Math.floor(Math.log10(value)));
    for (const step of [1, 2, 2.5, 5, 10]) if (value <= step * exp) return step * exp;
    return 10 * exp;
  }

  function drawChart(canvas, series, unit) {
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || 600;
    const height = canvas.clientHeight || 200;
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const pad = { left: 52, right: 12, top: 10, bottom: 24 };
    const plotW = width - pad.left - pad.right;
    const plotH = height - pad.top - pad.bottom;

    const points = series.flatMap((s) => s.points.filter((p) => p.y !== null));
    const now = Date.now() / 1000;
    const tMax = Math.max(now, ...points.map((p) => p.t));
    const tMin = Math.min(tMax - 60, ...points.map((p) => p.t));
    const yMax = niceMax(Math.max(0, ...points.map((p) => p.y)) * 1.1);
    const x = (t) => pad.left + ((t - tMin) / (tMax - tMin)) * plotW;
    const y = (v) => pad.top + plotH - (v / yMax) * plotH;

    ctx.font = "11px system-ui, sans-serif";
    ctx.fillStyle = "#667085";
    ctx.strokeStyle = "#e3e6eb";
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (let i = 0; i <= 4; i++) {
      const v = (yMax * i) / 4;
      ctx.beginPath();
      ctx.moveTo(pad.left, y(v));
      ctx.lineTo(width - pad.right, y(v));
      ctx.stroke();
      ctx.fillText(`${+v.toPrecision(3)}${unit}`, pad.left - 6, y(v));
    }
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    const span = tMax - tMin;
    const step = span > 600 ? 120 : span > 240 ? 60 : span > 120 ? 30 : 15;
    for (let ago = 0; ago <= span; ago += step) {
      ctx.fillText(ago === 0 ? "now" : `-${ago}s`, x(tMax - ago), height - pad.bottom + 6);
    }

    if (!points.length) {
      ctx.textBaseline = "middle";
      ctx.fillText("no traffic yet", pad.left + plotW / 2, pad.top + plotH / 2);
      return;
    }
    for (const s of series) {
      ctx.strokeStyle = s.color;
      ctx.lineWidth = s.dashed ? 1.25 : 2;
      ctx.setLineDash(s.dashed ? [4, 3] : []);
      ctx.beginPath();
      let drawing = false;
      for (const p of s.points) {
        if (p.y === null) {
          drawing = false;
          continue;
        }
        if (drawing) ctx.lineTo(x(p.t), y(p.y));
        else ctx.moveTo(x(p.t), y(p.y));
        drawing = true;
      }
      ctx.stroke();
      // A dot on every sample, so that a lone sample between gaps still shows.
      ctx.fillStyle = s.color;
      for (const p of s.points) {
        if (p.y === null) continue;
        ctx.beginPath();
        ctx.arc(x(p.t), y(p.y), s.dashed ? 1.5 : 2.5, 0, 2 * Math.PI);
        ctx.fill();
      }
    }
    ctx.setLineDash([]);
  }

  function renderTraffic(traffic) {
    state.traffic = traffic;
    const seriesOf = (key, dashed) =>
      traffic.map((s) => ({
        color: colorOf(s.id),
        dashed,
        points: s.points.map((p) => ({ t: p.t, y: p[key] })),
      }));
    drawChart($("chart-rate"), seriesOf("rate_rps", false), "");
    drawChart($("chart-latency"), [...seriesOf("p95_ms", false), ...seriesOf("p50_ms", true)], "");
    const items = traffic.map((s) => {
      const swatch = el("span", { class: "swatch" });
      swatch.style.background = colorOf(s.id);
      return el("li", {}, swatch, el("span", { class: "mono" }, s.id));
    });
    $("legend").replaceChildren(...items);
  }

  // ---- runs -------------------------------------------------------------------------------

  const ACTIVE = new Set(["pending", "queued", "running", "retrying"]);

  function renderRuns(result) {
    const box = $("runs");
    $("run-counts").textContent = "";
    if (result.status === "rejected") {
      const missing = result.reason && result.reason.status === 404;
      box.replaceChildren(el("p", { class: "empty" }, missing ? "no runs (this gateway does not record pipeline runs)" : `no runs (${result.reason.message})`));
      return;
    }
    const body = result.value || {};
    const runs = Array.isArray(body.runs) ? body.runs.slice() : [];
    const counts = body.counts && typeof body.counts === "object" ? body.counts : {};
    const countText = Object.entries(counts).map(([k, v]) => `${v} ${k}`).join(" · ");
    $("run-counts").textContent = countText ? `(${countText})` : "";
    if (!runs.length) {
      box.replaceChildren(el("p", { class: "empty" }, "no runs"));
      return;
    }
    runs.sort((a, b) => (ACTIVE.has(b.status) - ACTIVE.has(a.status)) || toMillis(b.created_at) - toMillis(a.created_at));
    const rows = runs.map((run) => {
      const steps = (run.steps || []).map((step) =>
        el("span", {
          class: `pill pill-${step.status}`,
          title: `${step.id}: ${step.status}, ${step.attempts ?? 0} attempt(s), ${fmt.duration(step.duration_ms)}${step.error ? ` — ${errorText(step.error)}` : ""}`,
        }, step.component || step.id));
      const failed = (run.steps || []).filter((s) => errorText(s.error));
      const runError = errorText(run.error);
      return el("tr", { class: `run ${ACTIVE.has(run.status) ? "active" : ""}`, dataset: { runId: run.id, status: run.status } },
        el("td", { class: "mono", title: run.id }, String(run.id).slice(0, 12)),
        el("td", {}, run.pipeline),
        el("td", {}, pill(run.status)),
        el("td", {}, fmt.time(run.created_at)),
        el("td", { class: "num" }, `${fmt.duration(run.duration_ms)}${ACTIVE.has(run.status) && run.duration_ms ? " so far" : ""}`),
        el("td", {}, el("div", { class: "steps" }, steps),
          runError && !failed.length ? el("div", { class: "step-error" }, runError) : null,
          failed.map((s) => el("div", { class: "step-error" }, `${s.id}: ${errorText(s.error)}`))),
      );
    });
    const head = el("thead", {}, el("tr", {}, ["Run", "Pipeline", "Status", "Created", "Duration", "Steps"].map((h, i) =>
      el("th", { class: i === 4 ? "num" : null }, h))));
    box.replaceChildren(el("div", { class: "scroll" }, el("table", { class: "grid" }, head, el("tbody", {}, rows))));
  }

  // ---- components -------------------------------------------------------------------------

  function renderComponents(components) {
    $("component-count").textContent = `(${components.length})`;
    const byTier = new Map();
    for (const c of components) {
      if (!byTier.has(c.tier)) byTier.set(c.tier, []);
      byTier.get(c.tier).push(c);
    }
    const columns = [...byTier.keys()].sort().map((tier) => {
      const list = byTier.get(tier).sort((a, b) => a.name.localeCompare(b.name));
      return el("div", { class: "tier", dataset: { tier } },
        el("h3", {}, `${TIER_NAMES[tier] || tier} `, el("span", { class: "count" }, `(${list.length})`)),
        el("ul", {}, list.map((c) =>
          el("li", { class: "component", title: c.description || "", dataset: { name: c.name, status: c.status } },
            el("span", { class: `dot ${c.status}` }), el("span", { class: "mono" }, c.name),
            el("span", { class: "version" }, c.version ? `v${c.version}` : "")))));
    });
    $("components").replaceChildren(...(columns.length ? columns : [el("p", { class: "empty" }, "no components yet")]));
  }

  // ---- loop -------------------------------------------------------------------------------

  async function refresh() {
    const [health, data, runs] = await Promise.allSettled([
      getJSON("/health"),
      getJSON("/dashboard/data"),
      getJSON("/runs?limit=20"),
    ]);
    if (health.status === "rejected") throw health.reason;
    const traffic = data.status === "fulfilled" ? data.value.services : state.traffic;
    renderHealth(health.value, traffic);
    if (data.status === "fulfilled") {
      renderAlerts(data.value.alerts);
      renderTraffic(data.value.services);
    }
    renderRuns(runs);

    // The component list changes only when services come and go: fetch it then, or now and again.
    const key = `${health.value.components}|${health.value.services.map((s) => `${s.id}:${s.status}`).join(",")}`;
    if (key !== state.componentsKey || Date.now() - state.componentsAt > COMPONENTS_EVERY_MS) {
      const body = await getJSON("/components");
      renderComponents(body.components || []);
      state.componentsKey = key;
      state.componentsAt = Date.now();
    }
  }

  async function tick() {
    try {
      await refresh();
      $("banner").hidden = true;
      $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    } catch (error) {
      $("banner").hidden = false;
      $("banner").textContent = `The gateway did not answer (${error.message}); retrying every ${REFRESH_MS / 1000} s.`;
    } finally {
      window.setTimeout(tick, REFRESH_MS);
    }
  }

  window.addEventListener("resize", () => state.traffic.length && renderTraffic(state.traffic));
  tick();
})();
