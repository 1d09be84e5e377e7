/* Fleet live updates: the page's one websocket to /ws/live/, no libraries.
 *
 * Subscribes to the topics in <body data-live-topics="fleet"> (or "node:7") and applies:
 *   {"kind": "node", "node": {...}, "summary": {...}}  → row/badge of that node + summary numbers
 *   {"kind": "summary", "summary": {...}}              → summary numbers ([data-summary="a.b"])
 *   {"kind": "runtimes", "node_id", "runtimes": [...]} → "fleet:runtimes" DOM event (runtimes.js)
 *   {"kind": "facts"}                                  → reload the node page (its facts changed);
 *                                                        so does its node coming online (a new hello)
 *   {"kind": "subscribed"}                             → catch up on node states missed while away
 * and reconnects with exponential backoff, showing "live" / "reconnecting" in the nav.
 *
 * Other scripts share the socket (one per tab) through window.fleetLive:
 *   fleetLive.subscribe(["telemetry:fleet"]) / .unsubscribe([...])  topics, counted per caller
 *   fleetLive.on(kind, fn)  fn(message) for every message of that kind ("telemetry", "alert", "node", ...);
 *                           kind "connected" gets {reconnect: bool} each time the socket opens.
 */
(function () {
  "use strict";

  var body = document.body;
  var topics = (body.getAttribute("data-live-topics") || "").split(/[\s,]+/).filter(Boolean);
  var wanted = {}; // topic → how many callers want it
  var listeners = {}; // message kind → [fn]
  var opened = 0;
  var caughtUp = false; // node states fetched since this socket opened (later subscribe replies need not)

  var STATUS_CLASSES = ["badge-green", "badge-red", "badge-grey", "badge-purple"];
  var MAX_BACKOFF_MS = 30000;
  var RECENT_LIMIT = 8;
  var indicator = document.getElementById("live-indicator");
  var statesUrl = body.getAttribute("data-states-url");
  var socket = null;
  var attempts = 0;
  var retryTimer = null;
  var reloadTimer = null;

  var formatBytes = window.fleetFormat.bytes;
  var formatRelative = window.fleetFormat.relative;

  function timeElement(iso) {
    if (!iso) {
      var never = document.createElement("span");
      never.className = "muted";
      never.textContent = "never";
      return never;
    }
    var time = document.createElement("time");
    time.setAttribute("datetime", iso);
    time.setAttribute("data-relative", "");
    time.title = iso;
    time.textContent = formatRelative(new Date(iso));
    return time;
  }

  function flash(el) {
    el.classList.remove("flash");
    void el.offsetWidth; // restart the animation
    el.classList.add("flash");
  }

  function setText(el, text) {
    text = String(text);
    if (el.textContent !== text) {
      el.textContent = text;
      flash(el);
    }
  }

  // ---- applying messages -----------------------------------------------------------------------
  function lookup(object, path) {
    var parts = path.split(".");
    for (var i = 0; i < parts.length; i++) {
      if (object === null || typeof object !== "object" || !(parts[i] in object)) return undefined;
      object = object[parts[i]];
    }
    return object;
  }

  function applySummary(summary) {
    if (!summary || typeof summary !== "object") return;
    var elements = document.querySelectorAll("[data-summary]");
    for (var i = 0; i < elements.length; i++) {
      var key = elements[i].getAttribute("data-summary");
      var value = lookup(summary, key);
      if (value === undefined) continue;
      setText(elements[i], /memory_bytes$/.test(key) ? formatBytes(value) : value);
    }
  }

  function updateBadge(badge, node) {
    STATUS_CLASSES.forEach(function (name) { badge.classList.remove(name); });
    badge.classList.add("badge-" + node.status_colour);
    setText(badge, node.status_label);
  }

  function updateNodeElement(root, node) {
    var each = function (selector, fn) {
      var found = root.querySelectorAll(selector);
      for (var i = 0; i < found.length; i++) fn(found[i]);
    };
    each("[data-node-status]", function (badge) { updateBadge(badge, node); });
    each("[data-node-status-label]", function (el) { setText(el, node.status_label); });
    each("[data-node-last-seen]", function (cell) {
      cell.replaceChildren(timeElement(node.last_seen));
    });
    if (node.gpu_count !== undefined && node.gpu_count !== null) {
      each("[data-node-gpu-count]", function (cell) { setText(cell, node.gpu_count); });
    }
    if (node.gpu_memory_bytes !== undefined) { // sent once node_payload carries it
      each("[data-node-gpu-memory]", function (cell) { setText(cell, formatBytes(node.gpu_memory_bytes)); });
    }
    if (node.agent_version !== undefined) {
      each("[data-node-agent-version]", function (cell) { setText(cell, node.agent_version || "—"); });
    }
  }

  function applyNode(node, changed) {
    if (!node || node.id === undefined) return;
    var roots = document.querySelectorAll('[data-node-id="' + Number(node.id) + '"]');
    for (var i = 0; i < roots.length; i++) {
      var root = roots[i];
      // A node page whose node comes online again has just sent its hello: new facts and GPUs.
      if (root.hasAttribute("data-node-page")) {
        var was = root.getAttribute("data-node-status-value");
        root.setAttribute("data-node-status-value", node.status);
        if (node.status === "online" && was && was !== "online") scheduleReload();
      }
      updateNodeElement(root, node);
    }
    if (changed) bumpRecent(node);
  }

  function scheduleReload() {
    clearTimeout(reloadTimer);
    reloadTimer = setTimeout(function () { window.location.reload(); }, 300);
  }

  // The overview lists recently changed nodes: a pushed node message is such a change.
  function bumpRecent(node) {
    var table = document.querySelector("table[data-recent-nodes]");
    if (!table) return;
    var tbody = table.tBodies[0];
    var row = tbody.querySelector('tr[data-node-id="' + Number(node.id) + '"]');
    if (!row) {
      row = document.createElement("tr");
      row.setAttribute("data-node-id", String(Number(node.id)));
      var link = document.createElement("a");
      link.href = (table.getAttribute("data-node-url") || "/nodes/0/").replace(/\/0\/$/, "/" + Number(node.id) + "/");
      link.textContent = node.name || "node " + node.id;
      var badge = document.createElement("span");
      badge.className = "badge";
      badge.setAttribute("data-node-status", "");
      var cells = [link, badge, document.createTextNode(node.kind_label || ""), null, null, null];
      var attrs = [null, null, null, "data-node-gpu-count", "data-node-changed", "data-node-last-seen"];
      cells.forEach(function (content, index) {
        var td = document.createElement("td");
        if (content) td.appendChild(content);
        if (attrs[index]) td.setAttribute(attrs[index], "");
        if (index === 3) td.className = "num";
        row.appendChild(td);
      });
      updateNodeElement(row, node);
    }
    var changedCell = row.querySelector("[data-node-changed]");
    if (changedCell) changedCell.replaceChildren(timeElement(new Date().toISOString()));
    tbody.insertBefore(row, tbody.firstChild);
    var wrap = table.closest("[data-recent-wrap]");
    if (wrap) wrap.hidden = false;
    var empty = document.querySelector("[data-recent-empty]");
    if (empty) empty.hidden = true;
    while (tbody.rows.length > RECENT_LIMIT) tbody.deleteRow(tbody.rows.length - 1);
    flash(row);
  }

  // After (re)subscribing, fetch the current state of the nodes on this page: covers changes made
  // between rendering and subscribing, and any pushed while the socket was down.
  function catchUp() {
    if (!statesUrl || !window.fetch) return;
    var seen = {};
    var ids = [];
    var roots = document.querySelectorAll("[data-node-id]");
    for (var i = 0; i < roots.length && ids.length < 200; i++) {
      var id = roots[i].getAttribute("data-node-id");
      if (/^\d+$/.test(id) && !seen[id]) { seen[id] = true; ids.push(id); }
    }
    if (!ids.length) return;
    fetch(statesUrl + "?ids=" + ids.join(","), { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        var type = response.headers.get("Content-Type") || "";
        return response.ok && type.indexOf("application/json") === 0 ? response.json() : null;
      })
      .then(function (data) {
        if (data && Array.isArray(data.nodes)) data.nodes.forEach(function (node) { applyNode(node, false); });
      })
      .catch(function () { /* the next push or reconnect repairs it */ });
  }

  function handle(message) {
    if (!message || typeof message !== "object") return;
    switch (message.kind) {
      case "node":
        applyNode(message.node, true);
        if (message.node) document.dispatchEvent(new CustomEvent("fleet:node", { detail: message.node }));
        applySummary(message.summary);
        break;
      case "summary":
        applySummary(message.summary);
        break;
      case "facts":
        if (document.querySelector("[data-node-page]")) scheduleReload();
        break;
      case "runtimes": // redrawn in place by runtimes.js (node page)
        document.dispatchEvent(new CustomEvent("fleet:runtimes", { detail: message }));
        break;
      case "subscribed":
        attempts = 0;
        setState("live");
        if (!caughtUp) { caughtUp = true; catchUp(); }
        break;
      case "error":
        if (window.console) console.warn("fleet live:", message.detail);
        break;
      default:
        break;
    }
    emit(message.kind, message);
  }

  function emit(kind, message) {
    (listeners[kind] || []).slice().forEach(function (fn) {
      try { fn(message); } catch (error) { if (window.console) console.error("fleet live listener:", error); }
    });
  }

  // ---- subscriptions ---------------------------------------------------------------------------
  function send(type, list) {
    if (socket && socket.readyState === 1 && list.length) socket.send(JSON.stringify({ type: type, topics: list }));
  }

  function subscribe(list) {
    var fresh = list.filter(function (topic) { wanted[topic] = (wanted[topic] || 0) + 1; return wanted[topic] === 1; });
    if (!socket && !retryTimer) { connect(); return; }
    send("subscribe", fresh);
  }

  function unsubscribe(list) {
    var gone = list.filter(function (topic) {
      if (!wanted[topic]) return false;
      wanted[topic] -= 1;
      if (wanted[topic]) return false;
      delete wanted[topic];
      return true;
    });
    send("unsubscribe", gone);
  }

  function on(kind, fn) {
    (listeners[kind] = listeners[kind] || []).push(fn);
  }

  // ---- connection ------------------------------------------------------------------------------
  function setState(state) {
    if (!indicator) return;
    indicator.setAttribute("data-state", state);
    indicator.textContent = state;
    indicator.title = state === "live" ? "Live updates on" : "Live updates paused; reconnecting…";
  }

  function connect() {
    clearTimeout(retryTimer);
    retryTimer = null;
    if (!Object.keys(wanted).length || !("WebSocket" in window)) return;
    var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    try {
      socket = new WebSocket(scheme + window.location.host + "/ws/live/");
    } catch (error) {
      scheduleReconnect();
      return;
    }
    socket.onopen = function () {
      send("subscribe", Object.keys(wanted));
      opened += 1;
      caughtUp = false;
      emit("connected", { reconnect: opened > 1 });
    };
    socket.onmessage = function (event) {
      var message;
      try { message = JSON.parse(event.data); } catch (error) { return; }
      handle(message);
    };
    socket.onclose = function () {
      socket = null;
      scheduleReconnect();
    };
    socket.onerror = function () { /* onclose follows and schedules the retry */ };
  }

  function scheduleReconnect() {
    if (retryTimer) return;
    setState("reconnecting");
    var delay = Math.min(MAX_BACKOFF_MS, 1000 * Math.pow(2, attempts));
    delay = delay * (0.5 + Math.random() * 0.5); // jitter: browsers do not reconnect in lockstep
    attempts += 1;
    retryTimer = setTimeout(connect, delay);
  }

  window.addEventListener("online", function () {
    if (!socket) { attempts = 0; connect(); }
  });
  window.addEventListener("pagehide", function () {
    if (socket) { socket.onclose = null; socket.close(); socket = null; }
  });
  window.addEventListener("pageshow", function (event) {
    if (event.persisted && !socket) connect(); // restored from the back/forward cache
  });

  // (relative times tick in ui.js, every second, from their datetime attribute)
  window.fleetLive = { handle: handle, subscribe: subscribe, unsubscribe: unsubscribe, on: on };
  if (!("WebSocket" in window)) return;
  setState("connecting");
  if (topics.length) subscribe(topics);
})();
