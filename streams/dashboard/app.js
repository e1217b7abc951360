// The fraudpipe dashboard: polls /v1/dashboard/alerts every second and /v1/dashboard/summary every two, and draws
// what they return. Hand-written, no dependencies; text goes in with textContent only (never as HTML).
//
// The data needs an API key with the read:alerts scope (when the API asks for keys): the page asks for it once
// (the #login form, shown at the first 401 or 403), keeps it in this tab's sessionStorage (never in a cookie or
// localStorage) and sends it as "Authorization: Bearer". Report links fetch a one-minute ticket with the key.
"use strict";

(() => {
  const ALERTS_EVERY_MS = 1000;
  const SUMMARY_EVERY_MS = 2000;
  const MAX_ALERT_ROWS = 200;
  const KEY_ITEM = "fraudpipe.apiKey";
  const SVG = "http://www.w3.org/2000/svg";
  const state = { lastId: null, seen: 0, problems: {}, locked: false, key: null };
  const $ = (id) => document.getElementById(id);

  // --- the API key --------------------------------------------------------------------------------------------

  // The key lives in sessionStorage (this tab, until it closes); where storage is refused, in this page only.
  function storedKey() {
    try {
      return sessionStorage.getItem(KEY_ITEM);
    } catch {
      return state.key || null;
    }
  }

  function keepKey(key) {
    state.key = key;
    try {
      if (key) sessionStorage.setItem(KEY_ITEM, key);
      else sessionStorage.removeItem(KEY_ITEM);
    } catch {
      // storage refused (privacy settings): state.key serves until the page is left
    }
  }

  // A 401 or 403 for the key that is stored now: forget it, show the form, and poll nothing until a key is given.
  function askForKey(status, used) {
    if (storedKey() !== used) return; // a request that left before a new key was given
    keepKey(null);
    state.locked = true;
    $("login-problem").textContent =
      status === 403 ? "This key lacks the read:alerts scope." : used ? "This key was refused." : "";
    $("login").hidden = false;
    $("api-key").focus();
  }

  $("login").addEventListener("submit", (event) => {
    event.preventDefault(); // nothing is submitted anywhere: the key stays in this tab
    const key = $("api-key").value.trim();
    if (!key) return;
    keepKey(key);
    $("api-key").value = "";
    $("login").hidden = true;
    state.locked = false;
  });

  for (const link of document.querySelectorAll("a[data-report]")) {
    link.addEventListener("click", async (event) => {
      event.preventDefault();
      try {
        const path = new URL(link.href).pathname;
        const ticket = await getJson(`/v1/dashboard/ticket?${new URLSearchParams({ path })}`);
        if (typeof ticket.url !== "string" || !ticket.url.startsWith("/reports/")) throw new Error("no report link");
        window.location.assign(ticket.url);
      } catch (problem) {
        report("report", problem);
      }
    });
  }

  function el(tag, className, ...children) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    return node;
  }

  function num(value, digits) {
    return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
  }

  function compact(value) {
    if (value === null || value === undefined) return "missing";
    const n = Number(value);
    if (Number.isInteger(n)) return n.toLocaleString();
    return Math.abs(n) >= 100 ? n.toFixed(0) : Math.abs(n) >= 1 ? n.toFixed(2) : n.toPrecision(3);
  }

  function clock(iso) {
    const moment = new Date(iso);
    return Number.isNaN(moment.getTime()) ? String(iso) : moment.toLocaleTimeString([], { hour12: false });
  }

  async function getJson(url) {
    const key = storedKey();
    const headers = { Accept: "application/json" };
    if (key) headers.Authorization = `Bearer ${key}`;
    const response = await fetch(url, { cache: "no-store", headers });
    if (response.status === 401 || response.status === 403) {
      askForKey(response.status, key);
      throw new Error("an API key with the read:alerts scope is needed");
    }
    const body = await response.json().catch(() => null);
    if (!response.ok) throw new Error((body && (body.detail || body.reason)) || `HTTP ${response.status}`);
    return body;
  }

  function report(part, problem) {
    state.problems[part] = problem ? String(problem.message || problem) : null;
    const bad = Object.entries(state.problems).filter(([, text]) => text);
    const line = $("status");
    line.textContent = bad.length
      ? bad.map(([name, text]) => `${name}: ${text}`).join(" · ")
      : `live · ${new Date().toLocaleTimeString([], { hour12: false })}`;
    line.className = bad.length ? "bad" : "muted";
  }

  // --- alerts -----------------------------------------------------------------------------------------------------

  function reasons(codes) {
    const list = el("ul", "reasons");
    for (const code of codes) {
      if (code.kind === "rule") {  // a policy rule forced the outcome (no SHAP): its id, and what it tested
        const known = (value) => value !== null && value !== undefined;
        const tested = known(code.value) ? ` = ${compact(code.value)}` : "";
        const limit = known(code.value) && known(code.threshold) ? ` (≥ ${compact(code.threshold)})` : "";
        list.append(el("li", "rule", `rule ${code.rule}`, el("span", "muted", tested + limit)));
        continue;
      }
      const sign = code.contribution >= 0 ? "+" : "";
      list.append(el("li", code.direction, code.feature,
        el("span", "muted", ` = ${compact(code.value)} (${sign}${num(code.contribution, 2)})`)));
    }
    return list;
  }

  function alertRow(entry) {
    const alert = entry.alert;
    const row = el("tr", "fresh");
    row.dataset.alertId = alert.alert_id;
    row.dataset.txnId = alert.txn_id;
    const token = alert.card_token.length > 12 ? `${alert.card_token.slice(0, 12)}…` : alert.card_token;
    const decision = el("span", `badge ${alert.decision}`, alert.decision);
    const cells = [
      el("td", "", clock(alert.raised_at)),
      el("td", "", decision, alert.degraded ? el("span", "badge degraded", "degraded") : ""),
      el("td", "num", num(alert.score, 3)),
      el("td", "", el("code", "", alert.txn_id)),
      el("td", "", `•••• ${alert.card_last4 || "····"} `, el("span", "muted", token)),
      el("td", "num", `${Number(alert.amount).toFixed(2)} ${alert.currency}`),
      el("td", "", alert.model ? alert.model.version : "–"),
      el("td", "", reasons(alert.reason_codes || [])),
    ];
    row.append(...cells);
    return row;
  }

  async function pollAlerts() {
    if (state.locked) {
      setTimeout(pollAlerts, ALERTS_EVERY_MS);
      return;
    }
    try {
      const query = new URLSearchParams({ limit: "50" });
      if (state.lastId) query.set("after", state.lastId);
      const data = await getJson(`/v1/dashboard/alerts?${query}`);
      const body = $("alerts").tBodies[0];
      for (const entry of data.alerts.slice().reverse()) body.prepend(alertRow(entry));
      while (body.rows.length > MAX_ALERT_ROWS) body.deleteRow(-1);
      if (data.last_id) state.lastId = data.last_id;
      state.seen += data.alerts.length;
      $("alert-count").textContent = state.seen ? `${state.seen} since this page opened` : "";
      $("alerts-empty").hidden = body.rows.length > 0;
      report("alerts", null);
    } catch (problem) {
      report("alerts", problem);
    }
    setTimeout(pollAlerts, ALERTS_EVERY_MS);
  }

  // --- charts -----------------------------------------------------------------------------------------------------

  // Lines of [time, value] points in a 400 x 140 box; a null value breaks its line. Returns the top of the scale.
  function lineChart(svg, lines) {
    const width = 400, height = 140, pad = 4;
    svg.replaceChildren();
    const points = lines.flatMap((line) => line.points.filter(([, v]) => v !== null));
    const times = lines.flatMap((line) => line.points.map(([t]) => t));
    const top = Math.max(...points.map(([, v]) => v), 0) * 1.15 || 1;
    for (const share of [0.25, 0.5, 0.75]) {
      const grid = document.createElementNS(SVG, "line");
      const y = String(pad + (height - 2 * pad) * share);
      grid.setAttribute("x1", "0"); grid.setAttribute("x2", String(width));
      grid.setAttribute("y1", y); grid.setAttribute("y2", y);
      svg.append(grid);
    }
    if (!times.length) return top;
    const t0 = Math.min(...times), span = Math.max(...times) - t0 || 1;
    const x = (t) => (pad + ((t - t0) / span) * (width - 2 * pad)).toFixed(1);
    const y = (v) => (height - pad - (v / top) * (height - 2 * pad)).toFixed(1);
    for (const line of lines) {
      const segments = [[]];
      for (const [t, v] of line.points) {
        if (v === null) segments.push([]);
        else segments[segments.length - 1].push(`${x(t)} ${y(v)}`);
      }
      // A point alone (between gaps) is drawn as a dot: a zero-length stroke with round caps.
      const d = segments.filter((s) => s.length).map((s) => `M${s.join(" L")}${s.length === 1 ? " l0.01 0" : ""}`);
      const path = document.createElementNS(SVG, "path");
      path.setAttribute("class", line.name);
      path.setAttribute("d", d.join(" ") || "M0 0");
      svg.append(path);
    }
    return top;
  }

  function span(points) {
    if (points.length < 2) return "collecting…";
    const minutes = (points[points.length - 1].at - points[0].at) / 60;
    return minutes < 1 ? `last ${Math.round(minutes * 60)} s` : `last ${minutes.toFixed(1)} min`;
  }

  function drawCharts(summary) {
    const rate = summary.throughput;
    lineChart($("throughput-chart"), [{ name: "throughput", points: rate.map((p) => [p.at, p.per_s]) }]);
    const now = rate.length ? rate[rate.length - 1].per_s : null;
    const peak = rate.length ? Math.max(...rate.map((p) => p.per_s)) : null;
    $("throughput-caption").textContent = `now ${compact(now)}/s · peak ${compact(peak)}/s · ${span(rate)}`;
    const lat = summary.latency;
    lineChart($("latency-chart"), [
      { name: "p50", points: lat.map((p) => [p.at, p.p50_ms]) },
      { name: "p99", points: lat.map((p) => [p.at, p.p99_ms]) },
    ]);
    const last = lat.filter((p) => p.p99_ms !== null).pop();
    $("latency-caption").textContent = last
      ? ` latest ${num(last.p50_ms, 1)} / ${num(last.p99_ms, 1)} ms · ${span(lat)}`
      : ` no decisions timed yet · ${span(lat)}`;
  }

  // --- panels -----------------------------------------------------------------------------------------------------

  function bar(label, value, max, kind, text) {
    const fill = el("div", `fill ${kind}`);
    fill.style.width = `${Math.min(100, max > 0 ? (100 * value) / max : 0).toFixed(1)}%`;
    const name = el("span", "label", label);
    name.title = label;
    return el("div", "bar", name, el("div", "track", fill), el("span", "num", text));
  }

  function drawDecisions(decisions) {
    const counts = Object.entries(decisions.by_outcome);
    const total = counts.reduce((sum, [, n]) => sum + n, 0);
    $("decisions").replaceChildren(...counts.map(([outcome, n]) =>
      bar(outcome, n, total, outcome, `${n.toLocaleString()} · ${total ? ((100 * n) / total).toFixed(1) : "0.0"}%`)));
    $("decisions-caption").textContent = `${total.toLocaleString()} decisions since the processes started` +
      (decisions.degraded ? ` · ${decisions.degraded.toLocaleString()} degraded (no features)` : "");
  }

  function drawDeadLetters(summary) {
    const rows = summary.dead_letters.map((d) => el("tr", "", el("td", "", d.topic), el("td", "", el("code", "", d.reason)),
      el("td", "num", d.count.toLocaleString())));
    rows.push(...summary.sink_dead_letters.map((d) => el("tr", "", el("td", "", `sink ${d.sink}`),
      el("td", "", el("code", "", "sink_failed")), el("td", "num", d.count.toLocaleString()))));
    $("dead-letters").tBodies[0].replaceChildren(...rows);
    $("dead-letters-empty").hidden = rows.length > 0;
  }

  function pct(value) {
    return value === undefined || value === null ? "–" : `${(100 * value).toFixed(1)} %`;
  }

  function drawMoney(summary) {
    const rows = summary.money.map((m) => el("tr", "", el("td", "", m.version), el("td", "num", pct(m.saving_vs_rules_only)),
      el("td", "num", pct(m.amount_recall)), el("td", "num", num(m.fraud_amount_missed, 0)),
      el("td", "num", `${num(m.false_declines, 0)} (${num(m.false_decline_amount, 0)})`),
      el("td", "num", `${num(m.reviews, 0)} / ${num(m.review_capacity, 0)}`), el("td", "num", pct(m.alert_rate)),
      el("td", "num", pct(m.model_precision)), el("td", "num", num(m.expected_cost, 0))));
    $("money").tBodies[0].replaceChildren(...rows);
    $("money-empty").hidden = rows.length > 0;
  }

  function drawDrift(summary) {
    const bounds = summary.psi_bounds;
    const blocks = summary.drift.map((version) => {
      const max = Math.max(bounds.breach * 1.5, ...version.columns.map((c) => c.psi ?? 0));
      const heading = el("h3", "", `${version.version} `,
        el("small", "", `${version.breaches} past the breach bound ${bounds.breach} · moderate from ${bounds.moderate}`));
      const bars = el("div", "bars", ...version.columns.map((c) => bar(c.column, c.psi ?? 0, max, c.level, num(c.psi, 3))));
      return el("div", "", heading, bars);
    });
    if (!blocks.length) blocks.push(el("p", "muted", "No drift gauges yet: run `fraudpipe monitor --every 60`."));
    $("drift").replaceChildren(...blocks);
  }

  function drawFairness(summary) {
    const fairness = summary.fairness;
    const [low, high] = fairness.band;
    const max = Math.max(high * 1.5, ...fairness.segments.map((s) => s.fpr_ratio));
    const columns = [...new Set(fairness.segments.map((s) => s.column))];
    const blocks = columns.map((column) => el("div", "", el("h3", "", column),
      el("div", "bars", ...fairness.segments.filter((s) => s.column === column)
        .map((s) => bar(s.segment, s.fpr_ratio, max, s.level, num(s.fpr_ratio, 2))))));
    const breaches = fairness.breaches === null ? "not watched"
      : `${fairness.breaches} clearly outside the bound (segments large enough to judge)`;
    blocks.unshift(el("p", "muted", `${breaches} · band ${num(low, 2)} – ${num(high, 2)}; amber: outside the band, not yet clearly`));
    if (!fairness.segments.length && fairness.breaches === null) {
      blocks.push(el("p", "muted", "No fairness gauges: `fraudpipe monitor --every 60` with FRAUD_GOVERNANCE__SEGMENTS_PATH exports them."));
    }
    $("fairness").replaceChildren(...blocks);
  }

  function drawModel(model) {
    const champion = model.champion;
    $("champion-version").textContent = champion ? champion.version : "none";
    $("champion-sha").textContent = champion ? champion.sha256.slice(0, 12) : "";
    $("champion-sha").title = champion ? champion.sha256 : "";
    const facts = [];
    if (champion) {
      const m = champion.metrics;
      facts.push(["champion", `${champion.version} (sha256 ${champion.sha256.slice(0, 12)}…)`]);
      facts.push(["registered", `${champion.created_at.slice(0, 19).replace("T", " ")} by ${champion.created_by}`]);
      facts.push(["validation", `AUC ${num(m.auc, 3)} · AP ${num(m.ap, 3)} · CP@k ${num(m.cp_at_k, 3)}`]);
    }
    facts.push(["challenger", model.challenger || "none"]);
    facts.push(["API serves", model.serving ? `${model.serving.version} (${model.serving.sha256.slice(0, 12)}…)` : "–"]);
    facts.push(["workers serve", model.workers.length
      ? model.workers.map((w) => `${w.version} (${w.sha256.slice(0, 12)}…)`).join(", ") : "no worker answered"]);
    if (model.note) facts.push(["note", model.note]);
    $("model").replaceChildren(...facts.flatMap(([term, text]) => [el("dt", "", term), el("dd", "", text)]));
    $("history").tBodies[0].replaceChildren(...model.history.map((h) => el("tr", "",
      el("td", "", String(h.at || "").slice(0, 19).replace("T", " ")), el("td", "", h.alias || ""),
      el("td", "", `${h.action || ""} ${h.previous || "–"} → ${h.version || "–"}`), el("td", "", h.by || ""),
      el("td", "", h.why || ""))));
  }

  function drawSources(summary) {
    $("sources").replaceChildren(...summary.sources.map((s) =>
      el("li", s.up ? "up" : "down", `${s.up ? "●" : "○"} ${s.name}`)));
    $("notes").replaceChildren(...summary.notes.map((note) => el("li", "", note)));
  }

  async function pollSummary() {
    if (state.locked) {
      setTimeout(pollSummary, SUMMARY_EVERY_MS);
      return;
    }
    try {
      const summary = await getJson("/v1/dashboard/summary");
      drawModel(summary.model);
      drawCharts(summary);
      drawDecisions(summary.decisions);
      drawDeadLetters(summary);
      drawMoney(summary);
      drawDrift(summary);
      drawFairness(summary);
      drawSources(summary);
      report("summary", null);
    } catch (problem) {
      report("summary", problem);
    }
    setTimeout(pollSummary, SUMMARY_EVERY_MS);
  }

  pollAlerts();
  pollSummary();
})();
