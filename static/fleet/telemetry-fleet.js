/* The overview's fleet telemetry: the GPU utilization heatmap and the sortable GPU table beside it.
 * First paint from /telemetry/heatmap/, then "telemetry" messages (topic telemetry:fleet) on the page's one
 * live socket (live.js). A node that goes offline or is revoked turns to "no data since HH:MM:SS" at once
 * ("node" messages on the fleet topic); its values are never shown as current.
 */
(function () {
  "use strict";

  var root = document.querySelector("[data-telemetry-heatmap]");
  var table = document.querySelector("[data-gpu-table]");
  if (!root) return;

  var F = window.fleetFormat;
  var C = window.fleetCharts;
  var live = window.fleetLive;
  var nodes = {}; // id → {name, status, live, since, models, row, cells: {index: el}, values: {index: cell array}}
  var refetch = null;
  var sort = { key: "node", dir: 1 };
  var COLUMNS = ["node", "gpu", "model", "util", "used", "temp", "power"];

  function fetchJSON(url) {
    return fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } }).then(function (r) {
      if (!r.ok) throw new Error(url + ": HTTP " + r.status);
      return r.json();
    });
  }

  function utilColour(util) {
    if (util === null || util === undefined) return "";
    var t = Math.max(0, Math.min(100, util)) / 100;
    return "hsl(" + Math.round(215 - 210 * t) + "," + Math.round(45 + 35 * t) + "%," + Math.round(22 + 33 * t) + "%)";
  }

  // ---- heatmap ------------------------------------------------------------------------------------------
  function build(data) {
    C.setServerNow(data.now);
    var grid = root.querySelector("[data-heat-grid]");
    grid.replaceChildren();
    nodes = {};
    var nodeUrl = root.getAttribute("data-node-url") || "/nodes/0/";
    data.nodes.forEach(function (node) {
      var row = document.createElement("div");
      row.className = "heat-row";
      row.setAttribute("data-heat-node", String(node.id));
      var name = document.createElement("a");
      name.className = "heat-name";
      name.href = nodeUrl.replace(/\/0\/$/, "/" + node.id + "/");
      name.textContent = node.name;
      var cells = document.createElement("div");
      cells.className = "heat-cells";
      var note = document.createElement("span");
      note.className = "heat-note muted small";
      note.setAttribute("data-heat-nodata", "");
      var entry = { id: node.id, name: node.name, status: node.status, live: node.live, since: node.since,
                    models: node.models || {}, row: row, note: note, cells: {}, values: {} };
      node.gpus.forEach(function (index) {
        var cell = document.createElement("span");
        cell.className = "heat-cell";
        cell.setAttribute("data-gpu", String(index));
        cells.appendChild(cell);
        entry.cells[index] = cell;
      });
      cells.appendChild(note);
      row.appendChild(name);
      row.appendChild(cells);
      grid.appendChild(row);
      nodes[node.id] = entry;
      (node.heat || []).forEach(function (c) { entry.values[c[0]] = c; });
      paint(entry);
    });
    var empty = root.querySelector("[data-heat-empty]");
    if (empty) empty.hidden = data.nodes.length > 0;
    renderTable();
  }

  function paint(entry) {
    var stale = !entry.live;
    entry.row.toggleAttribute("data-nodata", stale);
    entry.note.textContent = stale ? C.noDataText(entry.since) : "";
    entry.note.title = stale ? C.noDataTitle(entry.since) : "";
    Object.keys(entry.cells).forEach(function (index) {
      var cell = entry.cells[index];
      var c = entry.values[index];
      if (stale || !c) {
        cell.setAttribute("data-stale", "1");
        cell.removeAttribute("data-lost");
        cell.setAttribute("data-util", "");
        cell.style.backgroundColor = "";
        cell.textContent = "";
        cell.title = entry.name + " · GPU " + index + "\n" + C.noDataText(stale ? entry.since : null);
        return;
      }
      var util = c[1], mem = c[2], temp = c[3], lost = c[4];
      cell.removeAttribute("data-stale");
      cell.setAttribute("data-lost", lost ? "1" : "0");
      cell.setAttribute("data-util", util === null ? "" : String(util));
      cell.style.backgroundColor = lost ? "" : utilColour(util);
      cell.textContent = lost ? "✕" : (util === null ? "?" : String(Math.round(util)));
      cell.title = entry.name + " · GPU " + index + (lost ? "\nLOST" : "") + "\nutilization " + F.number(util, 0, "%") +
        "\nmemory " + F.number(mem, 0, "%") + "\ntemperature " + F.number(temp, 0, "°C") +
        "\npower " + F.number(c[5], 0, "W");
    });
  }

  function applyHeat(id, cells) {
    var entry = nodes[id];
    if (!entry) { scheduleRefetch(2000); return; }
    if (entry.status !== "online") return; // a late frame of a node already offline or revoked
    entry.live = true;
    cells.forEach(function (c) {
      if (!entry.cells[c[0]]) { scheduleRefetch(2000); return; }
      entry.values[c[0]] = c;
    });
    paint(entry);
  }

  function applyNode(message) {
    var node = message.node;
    if (!node) return;
    var entry = nodes[node.id];
    if (!entry) { if (node.gpu_count) scheduleRefetch(500); return; }
    var was = entry.status;
    entry.status = node.status;
    if (node.status !== "online" && entry.live) {
      entry.live = false;
      entry.values = {};
      if (node.last_seen) entry.since = Date.parse(node.last_seen) / 1000;
      paint(entry);
      renderTable();
      scheduleRefetch(300); // the exact time of the newest frame
    } else if (node.status === "online" && was !== "online") {
      scheduleRefetch(500);
    }
  }

  function scheduleRefetch(delay) {
    if (refetch) return;
    refetch = setTimeout(function () { refetch = null; load(); }, delay);
  }

  function load() {
    return fetchJSON(root.getAttribute("data-heat-url")).then(build).catch(function (e) {
      if (window.console) console.warn("fleet telemetry:", e);
    });
  }

  // ---- GPU table ------------------------------------------------------------------------------------
  function rows() {
    var list = [];
    Object.keys(nodes).forEach(function (id) {
      var entry = nodes[id];
      Object.keys(entry.cells).map(Number).forEach(function (index) {
        var c = entry.live ? entry.values[index] : null;
        list.push({ id: entry.id, node: entry.name, gpu: index, model: entry.models[index] || "", live: !!c,
                    since: entry.since, lost: c ? !!c[4] : false, util: c ? c[1] : null, mem: c ? c[2] : null,
                    used: c ? c[6] : null, total: c ? c[7] : null, temp: c ? c[3] : null, power: c ? c[5] : null });
      });
    });
    var key = sort.key, dir = sort.dir;
    list.sort(function (a, b) {
      var x = a[key], y = b[key];
      if (x === null && y !== null) return 1; // no data sorts last, either way
      if (y === null && x !== null) return -1;
      var d = typeof x === "string" ? x.localeCompare(y) : (x || 0) - (y || 0);
      return d ? d * dir : (a.node.localeCompare(b.node) || a.gpu - b.gpu);
    });
    return list;
  }

  function td(text, cls) {
    var cell = document.createElement("td");
    cell.textContent = text;
    if (cls) cell.className = cls;
    return cell;
  }

  function renderTable() {
    if (!table) return;
    var body = table.tBodies[0];
    var fresh = document.createDocumentFragment();
    rows().forEach(function (r) {
      var tr = document.createElement("tr");
      tr.setAttribute("data-gpu-row", r.id + ":" + r.gpu);
      var name = document.createElement("td");
      var link = document.createElement("a");
      link.href = (root.getAttribute("data-node-url") || "/nodes/0/").replace(/\/0\/$/, "/" + r.id + "/");
      link.textContent = r.node;
      name.appendChild(link);
      tr.appendChild(name);
      tr.appendChild(td(String(r.gpu), "num"));
      tr.appendChild(td(r.model || F.EMPTY));
      if (!r.live) {
        tr.setAttribute("data-nodata", "");
        var note = td(C.noDataText(r.since), "muted");
        note.colSpan = 4;
        note.title = C.noDataTitle(r.since);
        tr.appendChild(note);
      } else if (r.lost) {
        var lost = td("lost", "lost-note");
        lost.colSpan = 4;
        tr.appendChild(lost);
      } else {
        tr.appendChild(td(F.number(r.util, 0, "%"), "num"));
        var memory = r.used !== null && r.total ? F.number(r.used / 1024, 1) + " / " + F.number(r.total / 1024, 0, "GiB")
          : F.number(r.mem, 0, "%");
        tr.appendChild(td(memory, "num"));
        tr.appendChild(td(F.number(r.temp, 0, "°C"), "num"));
        tr.appendChild(td(F.number(r.power, 0, "W"), "num"));
      }
      fresh.appendChild(tr);
    });
    body.replaceChildren(fresh);
    var heads = table.querySelectorAll("th[data-sort]");
    for (var i = 0; i < heads.length; i++) {
      var key = heads[i].getAttribute("data-sort");
      heads[i].setAttribute("aria-sort", key === sort.key ? (sort.dir > 0 ? "ascending" : "descending") : "none");
    }
  }

  function setupTable() {
    if (!table) return;
    var buttons = table.querySelectorAll("th[data-sort] button");
    for (var i = 0; i < buttons.length; i++) {
      buttons[i].addEventListener("click", function (event) {
        var key = event.currentTarget.closest("th").getAttribute("data-sort");
        if (COLUMNS.indexOf(key) < 0) return;
        sort = { key: key, dir: sort.key === key ? -sort.dir : (key === "node" || key === "model" || key === "gpu" ? 1 : -1) };
        renderTable();
      });
    }
  }

  var tableTimer = null;
  function onTelemetry(message) {
    if (message.sent) C.setServerNow(message.sent);
    if (!message.heat) return;
    Object.keys(message.heat).forEach(function (id) { applyHeat(Number(id), message.heat[id]); });
    if (!tableTimer) tableTimer = setTimeout(function () { tableTimer = null; renderTable(); }, 250);
  }

  setupTable();
  load().then(function () {
    if (!live) return;
    live.on("telemetry", onTelemetry);
    live.on("node", applyNode);
    live.on("connected", function (info) { if (info.reconnect) load(); });
    live.subscribe(["telemetry:fleet"]);
    document.addEventListener("visibilitychange", function () {
      if (document.visibilityState === "hidden") live.unsubscribe(["telemetry:fleet"]);
      else load().then(function () { live.subscribe(["telemetry:fleet"]); });
    });
  });

  window.fleetHeatmap = { utilColour: utilColour, nodes: function () { return nodes; } };
})();
