/* A node's live telemetry page: one chart per metric across all the node's GPUs (last 15 min), current
 * values, process table; and the alert feeds. History (1 h / 24 h / 7 d of rollups): telemetry-history.js.
 *
 * Streams over the page's one /ws/live/ socket (window.fleetLive, live.js): topic telemetry:node:<id>.
 * A hidden tab unsubscribes; shown again, it refetches the window and resubscribes. A node that is offline,
 * revoked or silent for longer than the server's stale_after shows "no data since HH:MM:SS": greyed, no
 * current values, no processes, and its chart lines end (and break when data comes back).
 * Charts: uPlot (static/vendor/uplot, MIT); formats and colours: chart-kit.js.
 */
(function () {
  "use strict";

  var nodeRoot = document.querySelector("[data-telemetry-node]");
  var liveFeeds = document.querySelectorAll("[data-alert-feed-live]");
  var live = window.fleetLive;
  var F = window.fleetFormat;
  var C = window.fleetCharts;
  var WINDOW_S = 15 * 60;
  var HEIGHT = 190;
  // slot in a window point's GPU row, title, unit, digits, fixed range, scale from raw
  var METRICS = [
    { key: "util", slot: 1, title: "Utilization", unit: "%", digits: 0, range: [0, 100] },
    { key: "mem", slot: 2, title: "Memory used", unit: "GiB", digits: 1, scale: 1 / 1024 },
    { key: "temp", slot: 3, title: "Temperature", unit: "°C", digits: 0 },
    { key: "power", slot: 4, title: "Power", unit: "W", digits: 0 },
    { key: "clock", slot: 5, title: "SM clock", unit: "MHz", digits: 0 },
  ];

  function fetchJSON(url) {
    return fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } }).then(function (r) {
      if (!r.ok) throw new Error(url + ": HTTP " + r.status);
      return r.json();
    });
  }

  function warn(e) { if (window.console) console.warn("fleet telemetry:", e); }

  // ---- node page state ------------------------------------------------------------------------------
  var nodeId = nodeRoot ? Number(nodeRoot.getAttribute("data-telemetry-node")) : null;
  var topic = "telemetry:node:" + nodeId;
  var page = document.querySelector("[data-node-page]");
  var state = { status: page ? page.getAttribute("data-node-status-value") : "online", since: null,
                staleAfter: 30, offlineAfter: 15, stale: false, latest: null };
  var times = []; // window timestamps (server clock), with null-gaps already in place
  var rowsByGpu = {}; // GPU index → [metric slot arrays aligned with times]
  var gpuOrder = [];
  var charts = [];
  var models = {};

  function gpuList() {
    var marks = nodeRoot.querySelectorAll("[data-gpu-model]");
    for (var i = 0; i < marks.length; i++) {
      var index = Number(marks[i].getAttribute("data-gpu-model"));
      models[index] = marks[i].getAttribute("data-name");
      if (gpuOrder.indexOf(index) < 0) gpuOrder.push(index);
    }
    gpuOrder.sort(function (a, b) { return a - b; });
  }

  function ensureGpu(index) {
    if (rowsByGpu[index]) return false;
    rowsByGpu[index] = METRICS.map(function () { return times.map(function () { return null; }); });
    if (gpuOrder.indexOf(index) < 0) { gpuOrder.push(index); gpuOrder.sort(function (a, b) { return a - b; }); return true; }
    return false;
  }

  // Points: [[ts, [[index, util, MiB, °C, W, MHz], ...]], ...]; older points than the newest are merged in order.
  function addPoints(points) {
    var rebuilt = false;
    points.forEach(function (point) {
      var ts = point[0];
      var at = times.length;
      while (at > 0 && (times[at - 1] === null || times[at - 1] >= ts)) {
        if (times[at - 1] === ts) return; // already held
        at -= 1;
      }
      var prev = at > 0 ? times[at - 1] : null;
      // Longer without a point than it takes the server to call the node offline: the line breaks there.
      var step = at > 1 ? prev - times[at - 2] : 0;
      var gap = prev !== null && ts - prev > Math.max(state.offlineAfter, 3 * step);
      var insert = gap ? [prev + 0.001, ts] : [ts];
      point[1].forEach(function (row) { if (ensureGpu(row[0])) rebuilt = true; });
      times.splice.apply(times, [at, 0].concat(insert));
      Object.keys(rowsByGpu).forEach(function (index) {
        var row = null;
        for (var r = 0; r < point[1].length; r++) if (point[1][r][0] === Number(index)) row = point[1][r];
        rowsByGpu[index].forEach(function (series, m) {
          var raw = row ? row[METRICS[m].slot] : null;
          var v = raw === null || raw === undefined ? null : (METRICS[m].scale ? raw * METRICS[m].scale : raw);
          series.splice.apply(series, gap ? [at, 0, null, v] : [at, 0, v]);
        });
      });
    });
    var cutoff = (newestTs() || 0) - WINDOW_S;
    var drop = 0;
    while (drop < times.length && (times[drop] === null || times[drop] < cutoff)) drop += 1;
    if (drop) {
      times.splice(0, drop);
      Object.keys(rowsByGpu).forEach(function (i) { rowsByGpu[i].forEach(function (s) { s.splice(0, drop); }); });
    }
    if (rebuilt || !charts.length) buildCharts(); else redraw();
  }

  function newestTs() { return times.length ? times[times.length - 1] : null; }

  function chartData(m) {
    return [times].concat(gpuOrder.map(function (i) { return rowsByGpu[i] ? rowsByGpu[i][m] : times.map(function () { return null; }); }));
  }

  function chartWidth(el) { return Math.max(280, (el.clientWidth || 400) - 4); }

  // The last 15 minutes, or from the first point (at least 2 minutes) when there are only minutes of data:
  // a line over what exists, not a sliver at the right edge. Runs on to now, so a silent node's line ends.
  function xRange() {
    var now = C.serverNow();
    var first = times.length ? times[0] : now;
    return [Math.max(now - WINDOW_S, Math.min(first - 5, now - 120)), now];
  }

  function buildCharts() {
    var box = nodeRoot.querySelector("[data-gpu-charts]");
    charts.forEach(function (c) { if (c.plot) c.plot.destroy(); });
    charts = [];
    box.replaceChildren();
    var empty = nodeRoot.querySelector("[data-charts-empty]");
    if (empty) empty.hidden = gpuOrder.length > 0;
    if (!gpuOrder.length) return;
    METRICS.forEach(function (metric, m) {
      var panel = document.createElement("div");
      panel.className = "metric-panel";
      panel.setAttribute("data-metric-panel", metric.key);
      var head = document.createElement("h3");
      head.textContent = metric.title + " (" + metric.unit + ")";
      var el = document.createElement("div");
      el.className = "chart";
      el.setAttribute("data-live-chart", metric.key);
      panel.appendChild(head);
      panel.appendChild(el);
      box.appendChild(panel);
      var plot = null;
      if (window.uPlot) {
        plot = new window.uPlot({
          width: chartWidth(el), height: HEIGHT,
          scales: { x: { time: true, range: function () { return xRange(); } },
                    y: metric.range ? { range: metric.range } : { range: function (u, min, max) {
                      return [0, Math.max(1, Math.ceil((max || 0) * 1.15))]; } } },
          series: [{ value: C.legendTime(notStale) }].concat(gpuOrder.map(function (index, n) {
            return { label: "GPU " + index, stroke: C.colour(n), dash: C.dash(n), width: 1.5, spanGaps: false,
                     points: { show: false }, value: C.legendValue(metric.unit, metric.digits, notStale) };
          })),
          axes: [C.timeAxis(), C.valueAxis(metric.unit, metric.digits)],
        }, chartData(m), el);
      }
      charts.push({ metric: metric, m: m, el: el, plot: plot });
    });
    redraw();
  }

  function redraw() {
    charts.forEach(function (c) {
      if (c.plot) c.plot.setData(chartData(c.m));
      c.el.setAttribute("data-points", String(times.filter(function (t) { return t !== null; }).length));
      var last = newestTs();
      if (last !== null) c.el.setAttribute("data-last-ts", String(last));
    });
  }

  // ---- current values, processes, "no data since" ------------------------------------------------------
  function notStale() { return !state.stale; }

  function isStale() {
    if (state.status !== "online" || !state.latest) return true;
    return C.serverNow() - state.latest.ts > state.staleAfter;
  }

  function refreshStale() {
    var stale = isStale();
    var since = state.latest ? state.latest.ts : state.since;
    nodeRoot.toggleAttribute("data-nodata", stale);
    var banner = nodeRoot.querySelector("[data-nodata-banner]");
    if (banner) {
      banner.hidden = !stale || !(since || gpuOrder.length);
      banner.textContent = C.noDataText(since) + (state.status !== "online" ? " — the node is " + state.status.replace("_", " ") : "");
      banner.title = C.noDataTitle(since);
    }
    if (stale !== state.stale) {
      state.stale = stale;
      renderCurrent();
      charts.forEach(function (c) { if (c.plot && c.plot.setLegend) c.plot.setLegend({ idx: null }); });
    }
    charts.forEach(function (c) { if (c.plot) c.plot.setScale("x", { min: xRange()[0], max: xRange()[1] }); });
  }

  function renderCurrent() {
    var table = nodeRoot.querySelector("[data-current-table] tbody");
    var g = {};
    if (!state.stale && state.latest) state.latest.gpus.forEach(function (gpu) { g[gpu.index] = gpu; });
    var wrap = nodeRoot.querySelector("[data-current-wrap]");
    if (wrap) wrap.hidden = !gpuOrder.length;
    if (table) {
      var fresh = document.createDocumentFragment();
      gpuOrder.forEach(function (index, n) {
        var gpu = g[index];
        var tr = document.createElement("tr");
        tr.setAttribute("data-gpu-current", String(index));
        var cells = [["GPU " + index, ""], [models[index] || F.EMPTY, ""]];
        if (!gpu) cells.push([state.stale ? C.noDataText(state.latest ? state.latest.ts : state.since) : F.EMPTY, "muted", 5]);
        else if (gpu.lost) cells.push(["LOST", "lost-note", 5]);
        else {
          cells.push([F.number(gpu.utilization_gpu, 0, "%"), "num"]);
          cells.push([F.bytes(gpu.memory_used_bytes) + " / " + F.bytes(gpu.memory_total_bytes), "num"]);
          cells.push([F.number(gpu.temperature_c, 0, "°C"), "num"]);
          cells.push([F.number(gpu.power_w, 0) + (gpu.power_limit_w ? " / " + F.number(gpu.power_limit_w, 0) : "") + " W", "num"]);
          cells.push([F.number(gpu.sm_clock_mhz, 0, "MHz"), "num"]);
        }
        cells.forEach(function (c, i) {
          var td = document.createElement("td");
          td.textContent = c[0];
          if (c[1]) td.className = c[1];
          if (c[2]) td.colSpan = c[2];
          if (i === 0) {
            var swatch = document.createElement("span");
            swatch.className = "swatch";
            swatch.style.backgroundColor = C.colour(n);
            td.insertBefore(swatch, td.firstChild);
          }
          tr.appendChild(td);
        });
        fresh.appendChild(tr);
      });
      table.replaceChildren(fresh);
    }
    var procs = [];
    Object.keys(g).forEach(function (index) {
      (g[index].processes || []).forEach(function (p) { procs.push([Number(index), p]); });
    });
    renderProcesses(procs);
  }

  function renderProcesses(rows) {
    var body = nodeRoot.querySelector("[data-process-table] tbody");
    if (!body) return;
    var fresh = document.createDocumentFragment();
    rows.forEach(function (r) {
      var tr = document.createElement("tr");
      [String(r[0]), String(r[1].pid), r[1].name || F.EMPTY, r[1].used_memory_bytes ? F.bytes(r[1].used_memory_bytes) : F.EMPTY]
        .forEach(function (text, i) {
          var td = document.createElement("td");
          td.textContent = text;
          if (i !== 2) td.className = "num";
          tr.appendChild(td);
        });
      fresh.appendChild(tr);
    });
    body.replaceChildren(fresh);
    var empty = nodeRoot.querySelector("[data-process-empty]");
    if (empty) {
      empty.hidden = rows.length > 0;
      var since = state.latest ? state.latest.ts : state.since;
      empty.textContent = !state.stale ? "No compute processes reported."
        : (since ? "No process data: " + C.noDataText(since) + "." : "No process data yet.");
    }
  }

  function applyLatest(latest) {
    if (!latest) return;
    if (state.latest && latest.ts <= state.latest.ts) return;
    state.latest = latest;
    latest.gpus.forEach(function (g) { if (ensureGpu(g.index)) buildCharts(); });
    var stale = isStale();
    state.stale = stale;
    renderCurrent();
    refreshStale();
  }

  function loadSnapshot() {
    return fetchJSON(nodeRoot.getAttribute("data-live-url")).then(function (snap) {
      C.setServerNow(snap.now);
      state.staleAfter = snap.stale_after || state.staleAfter;
      state.offlineAfter = snap.offline_after || state.offlineAfter;
      state.status = snap.status || state.status;
      state.since = snap.since;
      if (!snap.live) state.latest = null;
      addPoints(snap.points || []);
      if (snap.latest) applyLatest(snap.latest); else { state.stale = true; renderCurrent(); refreshStale(); }
    }).catch(warn);
  }

  function onTelemetry(message) {
    if (message.sent) C.setServerNow(message.sent);
    var entry = message.nodes && message.nodes[nodeId];
    if (!entry) return;
    addPoints(entry.points || []);
    if (state.status === "online") applyLatest(entry.latest);
  }

  function onNode(message) {
    if (!message.node || Number(message.node.id) !== nodeId) return;
    state.status = message.node.status;
    refreshStale();
  }

  // ---- alert feeds -----------------------------------------------------------------------------------
  var feedTimer = null;

  function refreshFeeds() {
    clearTimeout(feedTimer);
    feedTimer = setTimeout(function () {
      for (var i = 0; i < liveFeeds.length; i++) {
        (function (feed) {
          fetch(feed.getAttribute("data-feed-url"), { credentials: "same-origin" })
            .then(function (r) { return r.ok ? r.text() : null; })
            .then(function (html) {
              if (html === null) return;
              var box = feed.querySelector("[data-feed-body]") || feed;
              box.innerHTML = html; // a server-rendered, autoescaped template fragment
              window.fleetFormat.localTimes(box);
              window.fleetFormat.tickTimes();
            }).catch(function () { /* the next alert or reload repairs it */ });
        })(liveFeeds[i]);
      }
    }, 300);
  }

  // ---- wiring --------------------------------------------------------------------------------------
  if (liveFeeds.length && live) {
    live.on("alert", refreshFeeds);
    live.on("connected", function (info) { if (info.reconnect) refreshFeeds(); });
  }
  if (!nodeRoot) return;
  gpuList();
  buildCharts();
  setInterval(refreshStale, 1000);
  window.addEventListener("resize", function () {
    charts.forEach(function (c) { if (c.plot) c.plot.setSize({ width: chartWidth(c.el), height: c.plot.height }); });
  });
  loadSnapshot().then(function () {
    if (!live) return;
    live.on("telemetry", onTelemetry);
    live.on("node", onNode);
    live.on("connected", function (info) { if (info.reconnect) loadSnapshot(); });
    live.subscribe([topic]);
    document.addEventListener("visibilitychange", function () {
      if (document.visibilityState === "hidden") live.unsubscribe([topic]);
      else loadSnapshot().then(function () { live.subscribe([topic]); });
    });
  });

  window.fleetTelemetry = {
    charts: function () {
      var history = window.fleetHistory && window.fleetHistory.chart();
      return charts.map(function (c) { return c.plot; }).concat(history ? [history] : []);
    },
    state: state,
  };
})();
