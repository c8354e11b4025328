// The console's only script: live updates over server-sent events (rollouts, alarms, command
// answers), the bundle upload, the chart's drag-to-zoom. Plain DOM, no framework, no network but the console itself.
"use strict";
(function () {
  const csrf = () => document.querySelector('meta[name="csrf"]').content;
  const page = document.body.dataset.page;

  function setText(el, text) { if (el && el.textContent !== String(text)) el.textContent = text; }

  function updateRollouts(list) {
    const box = document.getElementById("rollouts");
    if (!box) return;
    for (const r of list) {
      const sec = box.querySelector(`section[data-rollout="${CSS.escape(r.id)}"]`);
      if (!sec) { location.reload(); return; }  // a new rollout: draw it from the server
      if (r.broken) continue;
      const status = sec.querySelector('[data-field="status"]');
      setText(status, r.status);
      setText(sec.querySelector('[data-field="queued"]'), r.queued ? r.queued + " queued" : "");
      r.waves.forEach((w, i) => {
        const row = sec.querySelector(`tr[data-wave="${i}"]`);
        if (!row) return;
        for (const k of ["pending", "applied", "failed", "reverted"]) {
          setText(row.querySelector(`[data-count="${k}"]`), w[k]);
        }
        const bar = row.querySelector("progress");
        if (bar) bar.value = w.applied;
      });
      const actions = sec.querySelector(".actions");
      if (actions && !["running", "paused"].includes(r.status)) actions.remove();
    }
  }

  async function updateAlarms(list) {
    setText(document.getElementById("alarm-count"), list.length ? String(list.length) : "");
    const box = document.getElementById("alarm-tables");
    if (!box) return;
    const res = await fetch("/alarms?partial=1", { credentials: "same-origin" });
    if (res.ok) box.innerHTML = await res.text();
  }

  async function updateCommands() {
    // an answer came in (or a command was sent elsewhere): draw the list from the server
    const box = document.getElementById("command-list");
    if (!box) return;
    const res = await fetch("/commands?partial=1", { credentials: "same-origin" });
    if (res.ok) box.innerHTML = await res.text();
  }

  if (page !== "login" && window.EventSource) {
    const es = new EventSource(page === "commands" ? "/events?commands=1" : "/events");
    es.addEventListener("rollouts", (e) => updateRollouts(JSON.parse(e.data)));
    es.addEventListener("alarms", (e) => updateAlarms(JSON.parse(e.data)));
    es.addEventListener("commands", () => updateCommands());
    document.body.dataset.live = "connecting";
    es.onopen = () => { document.body.dataset.live = "open"; };
    es.onerror = () => { document.body.dataset.live = "retrying"; };
  }

  const upload = document.getElementById("upload");
  if (upload) {
    upload.addEventListener("submit", async (e) => {
      e.preventDefault();
      const out = document.getElementById("upload-result");
      const file = upload.elements.bundle.files[0];
      if (!file) return;
      const q = new URLSearchParams({ waves: upload.elements.waves.value, deadline_s: upload.elements.deadline_s.value });
      const res = await fetch("/rollouts/upload?" + q, {
        method: "POST", credentials: "same-origin", body: await file.arrayBuffer(),
        headers: { "Content-Type": "application/octet-stream", "X-CSRF-Token": csrf() },
      });
      out.textContent = await res.text();
      out.className = res.ok ? "ok" : "error";
      // the event stream sees the new rollout and draws the page again
    });
  }

  const form = document.getElementById("series-form");
  if (form) {
    const gw = document.getElementById("sel-gw"), dev = document.getElementById("sel-dev");
    gw.addEventListener("change", () => { dev.selectedIndex = -1; form.elements.pt.selectedIndex = -1; form.submit(); });
    dev.addEventListener("change", () => { form.elements.pt.selectedIndex = -1; form.submit(); });
    form.elements.pt.addEventListener("change", () => form.submit());
  }

  const chart = document.getElementById("chart");
  if (chart) {
    const zoom = document.getElementById("zoom");
    const start = Number(chart.dataset.start), end = Number(chart.dataset.end);
    const pad = Number(chart.dataset.pad), width = chart.viewBox.baseVal.width;
    const toX = (ev) => {
      const box = chart.getBoundingClientRect();
      return Math.min(width - pad, Math.max(pad, (ev.clientX - box.left) * width / box.width));
    };
    const toT = (x) => Math.round(start + (x - pad) * (end - start) / (width - 2 * pad));
    let from = null;
    chart.addEventListener("mousedown", (ev) => { from = toX(ev); zoom.setAttribute("x", from); zoom.setAttribute("width", 0); });
    chart.addEventListener("mousemove", (ev) => {
      if (from === null) return;
      const x = toX(ev);
      zoom.setAttribute("x", Math.min(from, x)); zoom.setAttribute("width", Math.abs(x - from));
    });
    chart.addEventListener("mouseup", (ev) => {
      if (from === null) return;
      const a = toT(Math.min(from, toX(ev))), b = toT(Math.max(from, toX(ev)));
      from = null;
      if (b - a < 1000) { zoom.setAttribute("width", 0); return; }
      const q = new URLSearchParams(location.search);
      q.set("start", a); q.set("end", b);
      location.search = q.toString();
    });
  }
})();
