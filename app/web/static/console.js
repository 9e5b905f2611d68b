// The operator console: batches, the appeals queue (propose, approve, reject), signing keys, and live
// figures from /metrics. Reads with the operator's own key, kept for this browser tab only.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  let key = sessionStorage.getItem("hc-operator-key") || "";

  async function api(path, options = {}) {
    const r = await fetch(path, {
      ...options, cache: "no-store",
      headers: { Authorization: "Bearer " + key, ...(options.body ? { "Content-Type": "application/json" } : {}) },
    });
    const body = await r.json();
    if (!r.ok) throw new Error(`${r.status} ${body.title || ""}: ${body.detail || ""}`);
    return body;
  }
  function problem(e) { $("problem").textContent = String(e.message || e); $("problem").hidden = !e; }
  const when = (t) => (t ? new Date(typeof t === "number" ? t * 1000 : t).toLocaleString("zh-CN", { hour12: false }) : "—");
  function row(tbody, cells, attrs = {}) {
    const tr = document.createElement("tr");
    for (const [k, v] of Object.entries(attrs)) tr.dataset[k] = v;
    for (const c of cells) {
      const td = document.createElement("td");
      if (c instanceof Node) td.append(c); else { td.textContent = c === null || c === undefined ? "—" : String(c); if (typeof c === "number") td.className = "n"; }
      tr.append(td);
    }
    tbody.append(tr);
    return tr;
  }
  function fill(id, items, cells, attrs) {
    const tbody = $(id).tBodies[0];
    tbody.replaceChildren();
    for (const item of items) row(tbody, cells(item), attrs ? attrs(item) : {});
  }

  async function batches() {
    const { batches } = await api("/v1/operator/batches?limit=50");
    fill("batches", batches, (b) => [b.id, b.agency, b.kind, b.state, b.counts.read, b.counts.accepted, b.counts.rejected, when(b.timings.received_at)],
      (b) => ({ id: String(b.id), state: b.state }));
  }

  function button(label, onclick) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = label;
    b.addEventListener("click", async () => { try { await onclick(); problem(""); await appeals(); } catch (e) { problem(e); } });
    return b;
  }
  async function appeals() {
    const [open, proposed] = await Promise.all([api("/v1/appeals?state=open"), api("/v1/appeals?state=proposed")]);
    const all = [...proposed.appeals, ...open.appeals];
    const tbody = $("appeals").tBodies[0];
    tbody.replaceChildren();
    for (const a of all) {
      const actions = document.createElement("span");
      if (a.state === "open") {
        actions.append(button("提议改绿 Propose green", async () => {
          const reason = prompt("理由 Reason", "records checked with the lab");
          if (reason) await api(`/v1/appeals/${a.id}/decisions`, { method: "POST", body: JSON.stringify({ action: "propose", colour: "green", reason, expires_at: Math.floor(Date.now() / 1000) + 7 * 86400 }) });
        }));
      } else if (a.state === "proposed") {
        actions.append(button("批准 Approve", async () => {
          const detail = await api(`/v1/appeals/${a.id}`);
          const reason = prompt("理由 Reason", "second review agrees");
          if (reason && detail.pending_proposal) await api(`/v1/appeals/${a.id}/decisions`, { method: "POST", body: JSON.stringify({ action: "approve", proposal_id: detail.pending_proposal.id, reason }) });
        }));
      }
      actions.append(button("驳回 Reject", async () => {
        const reason = prompt("理由 Reason");
        if (reason) await api(`/v1/appeals/${a.id}/decisions`, { method: "POST", body: JSON.stringify({ action: "reject", reason }) });
      }));
      const colour = document.createElement("span");
      colour.className = a.person.colour || "";
      colour.textContent = a.person.colour || "—";
      row(tbody, [a.id, a.state, a.category, `${a.person.name || ""} ${a.person.id_number || ""}`, colour, when(a.filed_at), actions], { id: String(a.id), state: a.state });
    }
  }

  async function keys() {
    const { keys } = await api("/v1/operator/keys");
    fill("keys", keys, (k) => [k.kid, k.alg, k.state, when(k.created_at), when(k.activate_at), when(k.activated_at), when(k.retired_at)],
      (k) => ({ state: k.state }));
  }

  // ---- live figures: counters from /metrics turned into rates between two scrapes ----
  const SERIES = [
    ["req/s", "#1d6fd6"], ["p99 ms", "#8a2be2"], ["cache hit %", "#0a7d3b"], ["shed/s", "#c4161c"],
  ];
  const history = [];
  let previous = null;
  function parse(text) {
    const sums = {}, buckets = {};
    for (const line of text.split("\n")) {
      if (!line || line[0] === "#") continue;
      const m = /^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
      if (!m) continue;
      const value = Number(m[3]);
      sums[m[1]] = (sums[m[1]] || 0) + value;
      const le = m[2] && /le="([^"]+)"/.exec(m[2]);
      if (le && /request_duration_seconds_bucket$/.test(m[1])) buckets[le[1]] = (buckets[le[1]] || 0) + value;
    }
    return { at: performance.now() / 1000, sums, buckets };
  }
  function p99(now, before) {
    // From a latency histogram's buckets, when the service exports one; null otherwise.
    const les = Object.keys(now.buckets).sort((a, b) => Number(a) - Number(b));
    if (!les.length) return null;
    const delta = les.map((le) => (now.buckets[le] || 0) - ((before && before.buckets[le]) || 0));
    const total = delta[delta.length - 1];
    if (total <= 0) return null;
    const i = delta.findIndex((c) => c >= total * 0.99);
    return Number(les[i]) * 1000;
  }
  async function live() {
    const r = await fetch("/metrics", { cache: "no-store" });
    const now = parse(await r.text());
    if (previous) {
      const dt = now.at - previous.at || 1;
      const d = (name) => (now.sums[name] || 0) - (previous.sums[name] || 0);
      const hits = d("healthcode_status_cache_hits_total"), misses = d("healthcode_status_cache_misses_total");
      history.push([d("healthcode_http_requests_total") / dt, p99(now, previous), hits + misses ? (100 * hits) / (hits + misses) : null, d("healthcode_shed_total") / dt]);
      if (history.length > 90) history.shift();
      $("chart").dataset.points = String(history.length);
      draw();
    }
    previous = now;
    $("live-now").textContent = new Date().toLocaleTimeString("zh-CN", { hour12: false });
  }
  function draw() {
    const c = $("chart"), ctx = c.getContext("2d"), w = c.width, h = c.height;
    ctx.clearRect(0, 0, w, h);
    ctx.strokeStyle = "#ddd";
    for (let y = 0; y <= 4; y++) { ctx.beginPath(); ctx.moveTo(0, (h * y) / 4); ctx.lineTo(w, (h * y) / 4); ctx.stroke(); }
    const legend = [];
    SERIES.forEach(([name, colour], s) => {
      const values = history.map((p) => p[s]);
      const top = Math.max(1, ...values.filter((v) => v !== null));
      ctx.strokeStyle = colour;
      ctx.lineWidth = 2;
      ctx.beginPath();
      values.forEach((v, i) => {
        if (v === null) return;
        const x = (w * i) / Math.max(1, values.length - 1), y = h - 4 - ((h - 8) * v) / top;
        if (i === 0 || values[i - 1] === null) ctx.moveTo(x, y); else ctx.lineTo(x, y);
      });
      ctx.stroke();
      const lastValue = values[values.length - 1];
      const span = document.createElement("span"), swatch = document.createElement("i");
      span.dataset.series = name;
      swatch.style.background = colour; // CSSOM, allowed where inline style attributes are not
      span.append(swatch, `${name}: ${lastValue === null ? "—" : lastValue.toFixed(1)}`);
      legend.push(span);
    });
    $("legend").replaceChildren(...legend);
  }

  async function refresh() {
    if (!key) return;
    try { await Promise.all([batches(), appeals(), keys()]); problem(""); } catch (e) { problem(e); }
  }
  $("login").addEventListener("submit", (e) => {
    e.preventDefault();
    key = $("key").value.trim();
    sessionStorage.setItem("hc-operator-key", key);
    $("key").value = "";
    refresh();
  });
  refresh();
  live();
  setInterval(refresh, 10000);
  // Every 2 s unless `?every=` (seconds) says otherwise.
  const every = Math.max(0.25, Number(new URLSearchParams(location.search).get("every")) || 2);
  setInterval(live, every * 1000);
})();
