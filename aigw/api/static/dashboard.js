"use strict";
// The aigw dashboard: polls GET /admin/dashboard.json with the admin key and draws it.
// Every value from the server goes into the page as text (textContent), never as markup.
(() => {
  const DATA_URL = "/admin/dashboard.json";
  const STORE = "aigw.adminKey";
  const POLL_MS = 2000;
  const SVG = "http://www.w3.org/2000/svg";
  const $ = (id) => document.getElementById(id);
  let timer = null;
  let polling = false; // one request at a time
  let again = false; // a refresh was asked for while one was in flight
  let busy = false;

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value !== null && value !== undefined && value !== false) node.setAttribute(name, value);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function key() { return sessionStorage.getItem(STORE); }

  function ms(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    return seconds < 1 ? `${Math.round(seconds * 1000)} ms` : `${seconds.toFixed(2)} s`;
  }
  function pct(x) { return x === null || x === undefined ? "–" : `${(x * 100).toFixed(1)}%`; }
  function duration(s) {
    if (s < 120) return `${Math.round(s)} s`;
    if (s < 7200) return `${Math.round(s / 60)} min`;
    return s < 172800 ? `${(s / 3600).toFixed(1)} h` : `${(s / 86400).toFixed(1)} d`;
  }
  function num(x) { return x === null || x === undefined ? "–" : String(Math.round(x * 100) / 100); }

  function showMessage(text) {
    const box = $("message");
    box.textContent = text;
    box.hidden = !text;
  }

  function showLogin(text) {
    stop();
    $("fleet").hidden = true;
    $("forget").hidden = true;
    $("login").hidden = false;
    $("status").textContent = "not connected";
    showMessage(text || "");
    $("key").focus();
  }

  function stop() {
    if (timer !== null) clearTimeout(timer);
    timer = null;
  }

  // Poll now (or as soon as the request in flight is back), then every POLL_MS.
  function refresh() {
    stop();
    if (polling) { again = true; return; }
    poll();
  }

  async function poll() {
    polling = true;
    try {
      await pollOnce();
    } finally {
      polling = false;
    }
    if (again) { again = false; refresh(); }
  }

  async function pollOnce() {
    timer = null;
    const k = key();
    if (!k) { showLogin(""); return; }
    let response;
    try {
      response = await fetch(DATA_URL, {
        headers: { authorization: `Bearer ${k}` }, cache: "no-store",
        signal: AbortSignal.timeout(5000),
      });
    } catch (err) {
      $("status").textContent = `gateway unreachable (${err.name}); retrying`;
      timer = setTimeout(poll, POLL_MS);
      return;
    }
    if (response.status === 401 || response.status === 403) {
      const reason = await errorText(response);
      sessionStorage.removeItem(STORE);
      showLogin(response.status === 401
        ? `The admin key was refused (401): ${reason}`
        : `Not allowed (403): ${reason}`);
      return;
    }
    if (!response.ok) {
      $("status").textContent = `HTTP ${response.status}: ${await errorText(response)}; retrying`;
      timer = setTimeout(poll, POLL_MS);
      return;
    }
    const data = await response.json();
    if (key() !== k) return; // the key changed meanwhile: its own poll draws
    showMessage("");
    $("login").hidden = true;
    $("forget").hidden = false;
    $("fleet").hidden = false;
    render(data);
    timer = setTimeout(poll, POLL_MS);
  }

  async function errorText(response) {
    try {
      const body = await response.json();
      return (body.error && body.error.message) || response.statusText;
    } catch (_) {
      return response.statusText;
    }
  }

  async function setDraining(id, drain) {
    if (busy) return;
    busy = true;
    try {
      const action = drain ? "drain" : "undrain";
      const response = await fetch(`/admin/deployments/${encodeURIComponent(id)}/${action}`, {
        method: "POST",
        headers: { authorization: `Bearer ${key()}`, "content-type": "application/json" },
        body: "{}",
      });
      if (!response.ok) showMessage(`${action} ${id}: HTTP ${response.status}: ${await errorText(response)}`);
    } finally {
      busy = false;
    }
    refresh();
  }

  function render(data) {
    const now = new Date(data.time * 1000);
    $("status").textContent = `updated ${now.toLocaleTimeString()} · up ${duration(data.uptime_s)} · ` +
      `state: ${data.state_backend}`;
    $("window-note").textContent =
      `(last ${Math.round(data.window_s / 60)} min; charts: ${data.bucket_s} s per point)`;
    renderModels(data.models);
    const cards = $("deployments");
    cards.replaceChildren(...data.deployments.map((d) => card(d, data.bucket_s)));
    renderLimits(data.rate_limits);
  }

  function renderModels(models) {
    const rows = models.map((m) => el("tr", { "data-model": m.name },
      el("td", null, m.name),
      el("td", null, el("span", { class: `badge ${m.ready ? "healthy" : "ejected"}` }, m.ready ? "ready" : "unready")),
      el("td", null, m.queue_depth),
      el("td", null, m.deployments.join(", ")),
      el("td", null, m.fallbacks.join(", ") || "–")));
    $("models").tBodies[0].replaceChildren(...rows);
  }

  function deploymentState(d) {
    if (d.draining) return "draining";
    return d.healthy ? "healthy" : "ejected";
  }

  function stat(label, value, extra) {
    return el("div", { class: "stat" }, el("div", { class: "label" }, label),
      el("div", { class: "value" }, value), extra || null);
  }

  function bar(fraction) {
    const inner = el("div");
    const f = Math.max(0, Math.min(1, fraction || 0));
    inner.style.width = `${(f * 100).toFixed(1)}%`;
    return el("div", { class: `bar${f >= 0.95 ? " full" : f >= 0.8 ? " hot" : ""}` }, inner);
  }

  function card(d, bucketS) {
    const state = deploymentState(d);
    const w = d.window || {};
    const engine = d.engine;
    const badges = [el("span", { class: `badge ${state}`, "data-role": "state" }, state)];
    if (!d.healthy && d.draining) badges.push(el("span", { class: "badge ejected" }, "ejected"));
    if (!d.healthy) badges.push(el("span", { class: "dim" }, `for ${num(d.ejected_for_s)} s`));
    if (engine && engine.stale) badges.push(el("span", { class: "badge stale" }, "metrics stale"));
    const button = el("button", { type: "button" }, d.draining ? "Undrain" : "Drain");
    button.addEventListener("click", () => setDraining(d.id, !d.draining));
    const kv = engine ? engine.kv_usage : null;
    const inFlight = d.max_concurrency ? `${d.in_flight} / ${d.max_concurrency}` : String(d.in_flight);
    const scores = Object.entries(d.last_scores || {});
    const series = d.series || {};
    // Requests per second; the current bucket has run for only -start_s seconds so far.
    const starts = series.start_s || [];
    const rps = (series.requests || []).map((n, i) =>
      n / (i === starts.length - 1 ? Math.max(1, -starts[i]) : bucketS));
    return el("div", { class: `card ${state}`, "data-deployment": d.id, "data-state": state,
      "data-requests": w.requests || 0 },
      el("div", { class: "card-head" },
        el("span", { class: "name" }, d.id), el("span", { class: "dim" }, d.model), ...badges, button),
      el("div", { class: "stats" },
        stat("in flight", inFlight),
        stat("engine queue", engine ? `${num(engine.waiting)} waiting` : "–",
          el("div", { class: "dim" }, engine ? `${num(engine.running)} running` : "no metrics")),
        stat("KV cache", kv === null || kv === undefined ? "–" : pct(kv), bar(kv)),
        stat("TTFT p50 / p99", `${ms(w.ttft_p50_s)} / ${ms(w.ttft_p99_s)}`),
        stat("latency p50 / p99", `${ms(w.latency_p50_s)} / ${ms(w.latency_p99_s)}`),
        stat("error rate", pct(w.error_rate),
          el("div", { class: "dim" }, `${w.requests || 0} req, ${w.errors || 0} err`))),
      el("div", { class: "charts" },
        chart("requests/s", rps, (v) => num(v), "var(--accent)"),
        chart("TTFT p50", series.ttft_p50_s || [], ms, "var(--accent2)"),
        chart("KV cache", series.kv_usage || [], pct, "var(--warn)", 1)),
      scores.length
        ? el("div", { class: "scores" }, "last routing scores: ",
          ...scores.map(([k, v]) => el("span", null, `${k} ${num(v)}`)))
        : el("div", { class: "scores" }, "last routing scores: –"),
      d.last_error ? el("div", { class: "error" }, `last error: ${d.last_error}`) : null);
  }

  // A sparkline in inline SVG: one polyline per run of known values; null is a gap.
  function chart(label, values, format, color, fixedMax) {
    const width = 120;
    const height = 40;
    const known = values.filter((v) => v !== null && v !== undefined);
    const max = fixedMax || Math.max(...known, 0) || 1;
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    svg.setAttribute("preserveAspectRatio", "none");
    const step = values.length > 1 ? width / (values.length - 1) : width;
    let run = [];
    const flush = () => {
      if (run.length === 1) run.push([run[0][0] + 0.5, run[0][1]]);
      if (run.length > 1) {
        const line = document.createElementNS(SVG, "polyline");
        line.setAttribute("points", run.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(" "));
        line.setAttribute("fill", "none");
        line.setAttribute("stroke", color);
        line.setAttribute("stroke-width", "1.5");
        line.setAttribute("vector-effect", "non-scaling-stroke");
        svg.append(line);
      }
      run = [];
    };
    values.forEach((v, i) => {
      if (v === null || v === undefined) { flush(); return; }
      run.push([i * step, height - 2 - (Math.min(v, max) / max) * (height - 4)]);
    });
    flush();
    const last = known.length ? format(known[known.length - 1]) : "–";
    return el("div", { class: "chart" },
      el("div", { class: "label" }, el("span", null, label), el("span", null, last)), svg);
  }

  function renderLimits(limits) {
    const box = $("limits");
    if (limits.quotas === null) {
      box.replaceChildren(el("p", { class: "error" }, `unavailable: ${limits.error}`));
      return;
    }
    if (!limits.quotas.length) {
      box.replaceChildren(el("p", { class: "dim" }, "No rpm/tpm quotas are configured."));
      return;
    }
    const rows = limits.quotas.map((q) => el("tr", { "data-quota": `${q.kind}:${q.name}:${q.unit}` },
      el("td", null, q.kind), el("td", null, q.name), el("td", null, q.unit === "requests" ? "rpm" : "tpm"),
      el("td", null, `${q.used} / ${q.limit}`),
      el("td", { class: "bar-cell" }, pct(q.headroom), bar(1 - q.headroom)),
      el("td", null, q.reset_s > 0 ? `${num(q.reset_s)} s` : "–")));
    box.replaceChildren(el("table", { class: "limits" },
      el("thead", null, el("tr", null, ...["kind", "name", "quota", "used / limit", "headroom", "full again in"]
        .map((h) => el("th", null, h)))),
      el("tbody", null, ...rows)));
  }

  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("key").value.trim();
    if (!value) return;
    sessionStorage.setItem(STORE, value);
    $("key").value = "";
    showMessage("");
    $("status").textContent = "connecting…";
    refresh();
  });
  $("forget").addEventListener("click", () => {
    sessionStorage.removeItem(STORE);
    showLogin("");
  });

  if (key()) refresh(); else showLogin("");
})();
