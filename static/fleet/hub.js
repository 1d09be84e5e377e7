// Model pages: refresh progress bars (version sync, node commands) every 2 s while anything is moving;
// on a version page, redraw its "Nodes" box ([data-version-nodes]) when a command beside it changes state,
// and every 5 s (commands started elsewhere, nodes going offline).
(function () {
  "use strict";
  const root = document.querySelector("[data-hub-progress-url]");
  if (!root) return;
  const url = root.getAttribute("data-hub-progress-url");
  const F = window.fleetFormat;
  let reloading = false;
  function reloadSoon() {
    if (reloading) return;
    reloading = true;
    setTimeout(function () { window.location.reload(); }, 800);
  }
  function ids(attr) {
    return Array.from(document.querySelectorAll("[" + attr + "]"))
      .filter((el) => el.getAttribute("data-final") !== "1")
      .map((el) => el.getAttribute(attr));
  }
  const NODES_MS = 5000;
  let nodesTimer = null;
  function redrawNodes() {
    nodesTimer = null;
    const box = document.querySelector("[data-version-nodes]");
    if (!box) return;
    fetch(box.getAttribute("data-version-nodes"), { headers: { Accept: "text/html" }, credentials: "same-origin" })
      .then((response) => (response.ok ? response.text() : null))
      .then((html) => {
        if (!html) return;
        const holder = document.createElement("div");
        holder.innerHTML = html.trim();
        const fresh = holder.querySelector("[data-version-nodes]");
        const current = document.querySelector("[data-version-nodes]");
        if (fresh && current && fresh.innerHTML !== current.innerHTML) {
          current.replaceWith(fresh);
          window.fleetFormat.localTimes(fresh);
          window.fleetFormat.tickTimes();
        }
      })
      .catch(() => { /* the next redraw repairs it */ });
  }
  function redrawNodesSoon(delay) {
    if (!nodesTimer) nodesTimer = setTimeout(redrawNodes, delay);
  }
  if (document.querySelector("[data-version-nodes]")) {
    setInterval(() => { if (!document.hidden) redrawNodesSoon(0); }, NODES_MS);
  }
  // A node page's model actions follow its node's status (live.js announces pushed nodes as "fleet:node");
  // the words match fleet/hub/reach.py. Coming back online reloads the node page (live.js).
  function unreachable(node) {
    if (node.status === "revoked") return node.name + " is revoked: it can no longer receive commands";
    if (node.status === "offline") return node.name + " is offline: its agent must reconnect first";
    return "";
  }
  document.addEventListener("fleet:node", (event) => {
    const node = event.detail || {};
    const reason = unreachable(node);
    document.querySelectorAll('[data-needs-node="' + Number(node.id) + '"]').forEach((button) => {
      button.disabled = Boolean(reason);
      if (reason) button.title = reason; else button.removeAttribute("title");
    });
    document.querySelectorAll('[data-unreachable="' + Number(node.id) + '"]').forEach((el) => { el.textContent = reason; });
    if (document.querySelector("[data-version-nodes]")) redrawNodesSoon(100);
  });
  function paint(el, item) {
    const was = el.getAttribute("data-state");
    el.setAttribute("data-state", item.state);
    if (was !== item.state && el.hasAttribute("data-command-progress")) redrawNodesSoon(100);
    const pct = F.percent(item.done, item.total, 100);
    const bar = el.querySelector(".progress");
    if (bar) {
      bar.querySelector("span").style.width = pct + "%";
      bar.classList.toggle("done", item.state === "synced" || item.state === "staged" || item.state === "active");
      bar.classList.toggle("failed", item.state === "failed");
      bar.setAttribute("aria-valuenow", String(pct));
    }
    const text = el.querySelector(".progress-text");
    if (text) text.textContent = F.bytes(item.done) + " / " + F.bytes(item.total) + " (" + F.formatPercent(pct) + ")";
    const rate = el.querySelector("[data-rate]");  // the node's pull rate (commands only)
    if (rate) rate.textContent = item.rate ? F.bytes(item.rate) + "/s" : "";
    const badge = el.querySelector(".badge");
    if (badge) { badge.className = "badge badge-" + item.colour; badge.textContent = item.label; }
    const error = el.querySelector(".error-text");
    if (error) error.textContent = item.error || "";
    if (["synced", "failed", "staged", "active", "removed", "succeeded"].includes(item.state)) {
      el.setAttribute("data-final", "1");
      // A command finished on a node page: its installed versions changed, so redraw the page once.
      if (el.hasAttribute("data-command-progress") && document.querySelector("[data-node-models]")) reloadSoon();
    }
  }
  async function tick() {
    const versions = ids("data-version-progress");
    const commands = ids("data-command-progress");
    if (!versions.length && !commands.length) return;
    try {
      const q = "?versions=" + versions.join(",") + "&commands=" + commands.join(",");
      const response = await fetch(url + q, { headers: { Accept: "application/json" }, credentials: "same-origin" });
      if (response.ok) {
        const data = await response.json();
        for (const [id, item] of Object.entries(data.versions || {}))
          document.querySelectorAll('[data-version-progress="' + id + '"]').forEach((el) => paint(el, item));
        for (const [id, item] of Object.entries(data.commands || {}))
          document.querySelectorAll('[data-command-progress="' + id + '"]').forEach((el) => paint(el, item));
      }
    } catch (e) { /* the next tick retries */ }
    setTimeout(tick, 2000);
  }
  setTimeout(tick, 2000);
})();
