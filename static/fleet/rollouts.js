/* Rollout page: while the rollout runs, poll its JSON (/api/rollouts/ID/) every 2 s and repaint the target
   grid, the wave bars, the state and the event log; reload once when it ends (the buttons change). */
(function () {
  "use strict";
  const root = document.getElementById("rollout");
  if (!root || root.getAttribute("data-live") !== "1") return;
  const url = root.getAttribute("data-api-url");
  const colours = JSON.parse(document.getElementById("rollout-colours").textContent);
  const TERMINAL = ["succeeded", "aborted", "superseded"];
  const label = (s) => colours.labels[s] || s.replace(/_/g, " ");
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  function size(n) {
    let u = 0;
    while (n >= 1024 && u < units.length - 1) { n /= 1024; u++; }
    return u ? n.toFixed(1) + " " + units[u] : n + " B";
  }

  function cell(text, cls) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    return td;
  }
  function timeCell(iso) {  // as the server writes it (the `when` filter), in the browser's time zone
    const td = document.createElement("td");
    const time = document.createElement("time");
    const date = new Date(iso);
    time.setAttribute("datetime", iso);
    time.setAttribute("data-local", "time");
    time.textContent = window.fleetFormat.local(date, "time");
    time.title = window.fleetFormat.utc(date);
    td.className = "nowrap";
    td.append(time);
    return td;
  }
  function paint(data) {
    const badge = root.querySelector("[data-rollout-state]");
    badge.className = "badge badge-" + (colours.rollout[data.state] || "grey");
    badge.textContent = label(data.state);
    root.querySelector("[data-rollout-reason]").textContent = data.reason || data.pause_reason || "";
    const waves = {};
    for (const t of data.targets) {
      const el = root.querySelector('[data-target="' + CSS.escape(t.node) + '"]');
      const w = (waves[t.wave] = waves[t.wave] || { done: 0, total: 0 });
      w.total++;
      if (t.state === "committed" || t.state === "skipped") w.done++;
      if (!el) continue;
      el.className = "target target-" + (colours.target[t.state] || "grey");
      el.querySelector("[data-target-state]").textContent = label(t.state);
      const error = el.querySelector("[data-target-error]");
      error.textContent = t.error || "";
      error.title = t.error || "";
      const download = el.querySelector("[data-target-download]");
      const moving = t.bytes_total > 0 && (t.state === "scheduled" || t.state === "downloading");
      download.classList.toggle("idle", !moving);
      if (moving) {
        const pct = Math.min(100, Math.floor((100 * t.bytes_done) / t.bytes_total));
        download.querySelector(".progress span").style.width = pct + "%";
        download.querySelector(".progress").setAttribute("aria-valuenow", String(pct));
        download.querySelector("[data-target-bytes]").textContent = size(t.bytes_done) + " / " + size(t.bytes_total);
        download.querySelector("[data-target-rate]").textContent = t.bytes_per_second ? size(t.bytes_per_second) + "/s" : "";
      }
    }
    for (const [wave, w] of Object.entries(waves)) {
      const el = root.querySelector('.wave-progress[data-wave="' + wave + '"]');
      if (!el) continue;
      const pct = w.total ? Math.floor((100 * w.done) / w.total) : 0;
      el.querySelector("[data-wave-count]").textContent = w.done + "/" + w.total;
      const bar = el.querySelector(".progress");
      bar.querySelector("span").style.width = pct + "%";
      bar.classList.toggle("done", w.done === w.total);
      bar.setAttribute("aria-valuenow", String(pct));
    }
    const compare = root.querySelector("[data-compare]");
    if (compare) {  // shown once the canary serves the new version
      compare.hidden = !data.targets.some(function (t) {
        return t.wave === 0 && (t.on === "new" || t.state === "verifying" || t.state === "committed");
      });
    }
    const body = root.querySelector("[data-events]");
    const rows = (data.events || []).map(function (e) {
      const tr = document.createElement("tr");
      tr.append(timeCell(e.at), cell(e.node || "rollout"),
        cell((e.from_state || "—") + " → " + e.to_state, "nowrap"), cell(e.why, "small wrap"), cell(e.by));
      return tr;
    });
    body.replaceChildren(...rows);
  }
  async function tick() {
    try {
      const response = await fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" });
      if (response.ok) {
        const data = await response.json();
        paint(data);
        if (TERMINAL.includes(data.state) || (data.state === "paused") !== (root.getAttribute("data-state") === "paused")) {
          setTimeout(function () { window.location.reload(); }, 600);
          return;
        }
      }
    } catch (e) { /* the next tick retries */ }
    setTimeout(tick, 2000);
  }
  setTimeout(tick, 2000);
})();
