/* Fleet live telemetry: the overview heatmap, a node's per-GPU live charts (last 15 min), its history
 * (1 h / 24 h / 7 d from 1-minute rollups), process table and alert feeds.
 *
 * Own websocket to /ws/live/ with topics telemetry:fleet / telemetry:node:<id> (the server coalesces
 * to at most one message a second, only for those topics) plus fleet / node:<id> for alert messages.
 * A hidden tab unsubscribes from telemetry; when it is shown again it refetches the window and
 * resubscribes. Charts: uPlot (static/vendor/uplot, MIT).
 */
(function () {
  "use strict";

  var heatRoot = document.querySelector("[data-telemetry-heatmap]");
  var nodeRoot = document.querySelector("[data-telemetry-node]");
  var liveFeeds = document.querySelectorAll("[data-alert-feed-live]");
  if ((!heatRoot && !nodeRoot && !liveFeeds.length) || !("WebSocket" in window)) return;

  var WINDOW_S = 15 * 60;
  var F = window.fleetFormat;
  var MIB = F.MIB;
  var COLOURS = ["#4c8dff", "#3fb950", "#e3b341", "#f26b5e", "#b48cf8", "#39c5cf", "#ff9bce", "#d2a8ff"];
  var nodeId = nodeRoot ? Number(nodeRoot.getAttribute("data-telemetry-node")) : null;
  var telemetryTopics = [];
  var alertTopics = [];
  if (heatRoot) { telemetryTopics.push("telemetry:fleet"); alertTopics.push("fleet"); }
  if (nodeRoot) { telemetryTopics.push("telemetry:node:" + nodeId); alertTopics.push("node:" + nodeId); }
  if (!alertTopics.length) alertTopics.push("fleet");

  function fetchJSON(url) {
    return fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } }).then(function (r) {
      if (!r.ok) throw new Error(url + ": HTTP " + r.status);
      return r.json();
    });
  }

  // ---- fleet heatmap ------------------------------------------------------------------------------
  var heatRows = {};
  var heatRefetch = null;

  function utilColour(util) {
    if (util === null || util === undefined) return "";
    var t = Math.max(0, Math.min(100, util)) / 100;
    return "hsl(" + Math.round(215 - 210 * t) + "," + Math.round(45 + 35 * t) + "%," + Math.round(22 + 33 * t) + "%)";
  }

  function buildHeatmap(data) {
    var grid = heatRoot.querySelector("[data-heat-grid]");
    grid.replaceChildren();
    heatRows = {};
    var nodeUrl = heatRoot.getAttribute("data-node-url") || "/nodes/0/";
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
      var entry = { name: node.name, cells: {} };
      node.gpus.forEach(function (index) {
        var cell = document.createElement("span");
        cell.className = "heat-cell";
        cell.setAttribute("data-gpu", String(index));
        cell.setAttribute("data-stale", "1");
        cell.title = node.name + " · GPU " + index + "\nno data yet";
        cells.appendChild(cell);
        entry.cells[index] = cell;
      });
      row.appendChild(name);
      row.appendChild(cells);
      grid.appendChild(row);
      heatRows[node.id] = entry;
      applyHeat(node.id, node.heat || []);
    });
    var empty = heatRoot.querySelector("[data-heat-empty]");
    if (empty) empty.hidden = data.nodes.length > 0;
  }

  function applyHeat(id, cells) {
    var row = heatRows[id];
    if (!row) { scheduleHeatRefetch(); return; }
    cells.forEach(function (c) {
      var index = c[0], util = c[1], mem = c[2], temp = c[3], lost = c[4];
      var cell = row.cells[index];
      if (!cell) { scheduleHeatRefetch(); return; }
      cell.removeAttribute("data-stale");
      cell.setAttribute("data-lost", lost ? "1" : "0");
      cell.setAttribute("data-util", util === null ? "" : String(util));
      cell.style.backgroundColor = lost ? "" : utilColour(util);
      cell.textContent = lost ? "✕" : (util === null ? "?" : String(Math.round(util)));
      cell.title = row.name + " · GPU " + index + (lost ? "\nLOST" : "") + "\nutilization " + F.number(util, 0, "%") +
        "\nmemory " + F.number(mem, 0, "%") + "\ntemperature " + F.number(temp, 0, "°C");
    });
  }

  function scheduleHeatRefetch() {
    if (heatRefetch) return;
    heatRefetch = setTimeout(function () { heatRefetch = null; loadHeatmap(); }, 2000);
  }

  function loadHeatmap() {
    return fetchJSON(heatRoot.getAttribute("data-heat-url")).then(buildHeatmap).catch(function (e) {
      if (window.console) console.warn("fleet telemetry:", e);
    });
  }

  // ---- node page: live charts per GPU --------------------------------------------------------------
  var gpus = {};
  var chartsBox = nodeRoot ? nodeRoot.querySelector("[data-gpu-charts]") : null;

  function chartWidth(el) { return Math.max(280, (el.clientWidth || 400) - 4); }

  function axis(scale, side) {
    return { scale: scale, side: side, stroke: "#8b96a5", grid: { stroke: "#262f3b", show: side !== 1 },
             ticks: { stroke: "#262f3b" } };
  }

  function gpuEntry(index) {
    var gpu = gpus[index];
    if (gpu) return gpu;
    var card = document.createElement("div");
    card.className = "gpu-card";
    card.setAttribute("data-gpu-card", String(index));
    var head = document.createElement("div");
    head.className = "gpu-card-head";
    var title = document.createElement("strong");
    title.textContent = "GPU " + index;
    var name = document.createElement("span");
    name.className = "muted small";
    name.setAttribute("data-gpu-name", "");
    head.appendChild(title);
    head.appendChild(name);
    var readouts = document.createElement("div");
    readouts.className = "readouts";
    [["util", "util"], ["mem", "memory"], ["temp", "temp"], ["power", "power"], ["clock", "SM"]].forEach(function (r) {
      var span = document.createElement("span");
      span.appendChild(document.createTextNode(r[1] + " "));
      var strong = document.createElement("strong");
      strong.setAttribute("data-metric", r[0]);
      strong.textContent = "—";
      span.appendChild(strong);
      readouts.appendChild(span);
    });
    var chartEl = document.createElement("div");
    chartEl.className = "chart";
    chartEl.setAttribute("data-live-chart", String(index));
    card.appendChild(head);
    card.appendChild(readouts);
    card.appendChild(chartEl);
    // keep cards in GPU order
    var after = null;
    Object.keys(gpus).map(Number).sort(function (a, b) { return a - b; }).forEach(function (i) {
      if (i > index && !after) after = gpus[i].card;
    });
    chartsBox.insertBefore(card, after);
    var empty = nodeRoot.querySelector("[data-charts-empty]");
    if (empty) empty.hidden = true;
    gpu = gpus[index] = { card: card, chartEl: chartEl, total: null, data: [[], [], [], [], []], chart: null, lastTs: 0 };
    if (window.uPlot) {
      gpu.chart = new window.uPlot({
        width: chartWidth(chartEl), height: 170,
        // power from 0 W so an idle GPU's noise does not look like a swing
        scales: { x: { time: true }, pct: { range: [0, 100] },
                  w: { range: function (u, min, max) { return [0, Math.max(50, Math.ceil((max || 0) * 1.15))]; } } },
        series: [
          {},
          { label: "util %", stroke: COLOURS[0], width: 1.5, scale: "pct" },
          { label: "memory %", stroke: COLOURS[4], width: 1.5, scale: "pct" },
          { label: "temp °C", stroke: COLOURS[2], width: 1.5, scale: "pct" },
          { label: "power W", stroke: COLOURS[1], width: 1.5, scale: "w" },
        ],
        axes: [axis("x", 2), axis("pct", 3), axis("w", 1)],
      }, gpu.data, chartEl);
    }
    return gpu;
  }

  function addPoints(points) {
    points.forEach(function (point) {
      var ts = point[0];
      point[1].forEach(function (row) {
        var gpu = gpuEntry(row[0]);
        if (ts <= gpu.lastTs) return;
        gpu.lastTs = ts;
        var memPct = row[2] !== null && gpu.total ? Math.round(1000 * row[2] * MIB / gpu.total) / 10 : null;
        gpu.data[0].push(ts);
        gpu.data[1].push(row[1]);
        gpu.data[2].push(memPct);
        gpu.data[3].push(row[3]);
        gpu.data[4].push(row[4]);
      });
    });
    Object.keys(gpus).forEach(function (index) {
      var gpu = gpus[index];
      var cutoff = gpu.lastTs - WINDOW_S;
      var drop = 0;
      while (drop < gpu.data[0].length && gpu.data[0][drop] < cutoff) drop += 1;
      if (drop) gpu.data.forEach(function (series) { series.splice(0, drop); });
      if (gpu.chart) gpu.chart.setData(gpu.data);
      var n = gpu.data[0].length;
      gpu.chartEl.setAttribute("data-points", String(n));
      if (n) {
        gpu.chartEl.setAttribute("data-last-ts", String(gpu.data[0][n - 1]));
        gpu.chartEl.setAttribute("data-last-util", String(gpu.data[1][n - 1]));
      }
    });
  }

  function applyLatest(latest) {
    if (!latest) return;
    var procRows = [];
    latest.gpus.forEach(function (g) {
      var gpu = gpuEntry(g.index);
      if (g.memory_total_bytes) gpu.total = g.memory_total_bytes;
      gpu.card.classList.toggle("gpu-lost", !!g.lost);
      var set = function (metric, text) {
        var el = gpu.card.querySelector('[data-metric="' + metric + '"]');
        if (el && el.textContent !== text) el.textContent = text;
      };
      if (g.lost) {
        set("util", "LOST");
        return;
      }
      set("util", F.number(g.utilization_gpu, 0, "%"));
      set("mem", F.bytes(g.memory_used_bytes) + " / " + F.bytes(g.memory_total_bytes));
      set("temp", F.number(g.temperature_c, 0, "°C"));
      set("power", F.number(g.power_w, 0) + (g.power_limit_w ? " / " + F.number(g.power_limit_w, 0) : "") + " W");
      set("clock", F.number(g.sm_clock_mhz, 0, "MHz"));
      (g.processes || []).forEach(function (p) { procRows.push([g.index, p]); });
    });
    var name = nodeRoot.querySelectorAll("[data-gpu-name]");
    for (var i = 0; i < name.length; i++) {
      var card = name[i].closest("[data-gpu-card]");
      var label = nodeRoot.querySelector('[data-gpu-model="' + card.getAttribute("data-gpu-card") + '"]');
      if (label) name[i].textContent = label.getAttribute("data-name");
    }
    renderProcesses(procRows);
  }

  function renderProcesses(rows) {
    var body = nodeRoot.querySelector("[data-process-table] tbody");
    if (!body) return;
    var fresh = document.createDocumentFragment();
    rows.forEach(function (r) {
      var tr = document.createElement("tr");
      [String(r[0]), String(r[1].pid), r[1].name || "—", r[1].used_memory_bytes ? F.bytes(r[1].used_memory_bytes) : F.EMPTY]
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
    if (empty) empty.hidden = rows.length > 0;
  }

  function loadNodeSnapshot() {
    return fetchJSON(nodeRoot.getAttribute("data-live-url")).then(function (snap) {
      applyLatest(snap.latest);
      addPoints(snap.points || []);
    }).catch(function (e) { if (window.console) console.warn("fleet telemetry:", e); });
  }

  // ---- node page: history from rollups --------------------------------------------------------------
  var history = { chart: null, range: "1h", metric: "util" };
  var HISTORY_SPANS = { "1h": 3600, "24h": 86400, "7d": 7 * 86400 };
  var METRICS = { util: [1, "utilization %"], mem: [2, "memory used GiB"], temp: [3, "temperature °C"], power: [4, "power W"] };

  function loadHistory() {
    var box = nodeRoot && nodeRoot.querySelector("[data-history-chart]");
    if (!box) return;
    fetchJSON(nodeRoot.getAttribute("data-history-url") + "?range=" + encodeURIComponent(history.range))
      .then(function (data) {
        var indexes = Object.keys(data.gpus).map(Number).sort(function (a, b) { return a - b; });
        var times = {};
        indexes.forEach(function (i) { data.gpus[i].forEach(function (p) { times[p[0]] = true; }); });
        var xs = Object.keys(times).map(Number).sort(function (a, b) { return a - b; });
        var slot = METRICS[history.metric][0];
        var series = indexes.map(function (i) {
          var byTime = {};
          data.gpus[i].forEach(function (p) {
            var v = p[slot];
            byTime[p[0]] = v === null ? null : (slot === 2 ? v / F.GIB : v);
          });
          return xs.map(function (t) { return t in byTime ? byTime[t] : null; });
        });
        if (history.chart) history.chart.destroy();
        box.replaceChildren();
        box.setAttribute("data-points", String(xs.length));
        var empty = nodeRoot.querySelector("[data-history-empty]");
        if (empty) empty.hidden = xs.length > 0;
        if (!window.uPlot || !xs.length) { history.chart = null; return; }
        history.chart = new window.uPlot({
          width: chartWidth(box), height: 240,
          // The whole asked-for span, not uPlot's auto range (one bucket of data would span years).
          scales: { x: { time: true, range: function () {
            var now = Date.now() / 1000;
            return [now - HISTORY_SPANS[history.range], now];
          } } },
          series: [{}].concat(indexes.map(function (i, n) {
            return { label: "GPU " + i, stroke: COLOURS[n % COLOURS.length], width: 1.5, spanGaps: false,
                     points: { show: xs.length < 3 } };
          })),
          axes: [axis("x", 2), { stroke: "#8b96a5", grid: { stroke: "#262f3b" }, label: METRICS[history.metric][1] }],
        }, [xs].concat(series), box);
      }).catch(function (e) { if (window.console) console.warn("fleet telemetry:", e); });
  }

  function setupHistory() {
    if (!nodeRoot) return;
    var buttons = nodeRoot.querySelectorAll("[data-history-range]");
    for (var i = 0; i < buttons.length; i++) {
      buttons[i].addEventListener("click", function (event) {
        history.range = event.currentTarget.getAttribute("data-history-range");
        for (var j = 0; j < buttons.length; j++) {
          buttons[j].setAttribute("aria-pressed", String(buttons[j] === event.currentTarget));
        }
        loadHistory();
      });
    }
    var select = nodeRoot.querySelector("[data-history-metric]");
    if (select) select.addEventListener("change", function () { history.metric = select.value; loadHistory(); });
    loadHistory();
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
            }).catch(function () { /* the next alert or reload repairs it */ });
        })(liveFeeds[i]);
      }
    }, 300);
  }

  // ---- socket ----------------------------------------------------------------------------------------
  var socket = null;
  var attempts = 0;
  var retryTimer = null;

  function send(type, topics) {
    if (socket && socket.readyState === 1 && topics.length) socket.send(JSON.stringify({ type: type, topics: topics }));
  }

  function handle(message) {
    if (!message || typeof message !== "object") return;
    if (message.kind === "telemetry") {
      if (message.heat && heatRoot) {
        Object.keys(message.heat).forEach(function (id) { applyHeat(Number(id), message.heat[id]); });
      }
      if (message.nodes && nodeRoot && message.nodes[nodeId]) {
        var entry = message.nodes[nodeId];
        applyLatest(entry.latest);
        addPoints(entry.points || []);
      }
    } else if (message.kind === "alert") {
      refreshFeeds();
    } else if (message.kind === "subscribed") {
      attempts = 0;
    }
  }

  function connect() {
    clearTimeout(retryTimer);
    retryTimer = null;
    var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    try {
      socket = new WebSocket(scheme + window.location.host + "/ws/live/");
    } catch (error) { scheduleReconnect(); return; }
    socket.onopen = function () {
      send("subscribe", document.visibilityState === "hidden" ? alertTopics : alertTopics.concat(telemetryTopics));
    };
    socket.onmessage = function (event) {
      var message;
      try { message = JSON.parse(event.data); } catch (error) { return; }
      handle(message);
    };
    socket.onclose = function () { socket = null; scheduleReconnect(); };
    socket.onerror = function () { /* onclose follows */ };
  }

  function scheduleReconnect() {
    if (retryTimer) return;
    var delay = Math.min(30000, 1000 * Math.pow(2, attempts)) * (0.5 + Math.random() * 0.5);
    attempts += 1;
    retryTimer = setTimeout(function () { resync().then(connect); }, delay);
  }

  function resync() {
    var jobs = [];
    if (heatRoot) jobs.push(loadHeatmap());
    if (nodeRoot) jobs.push(loadNodeSnapshot());
    if (liveFeeds.length) refreshFeeds();
    return Promise.all(jobs);
  }

  // A hidden tab stops its stream; shown again, it fills the gap from the window, then resubscribes.
  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "hidden") {
      send("unsubscribe", telemetryTopics);
    } else {
      resync().then(function () { send("subscribe", telemetryTopics); });
    }
  });
  window.addEventListener("resize", function () {
    Object.keys(gpus).forEach(function (i) {
      if (gpus[i].chart) gpus[i].chart.setSize({ width: chartWidth(gpus[i].chartEl), height: 170 });
    });
  });
  window.addEventListener("pagehide", function () {
    if (socket) { socket.onclose = null; socket.close(); socket = null; }
  });

  setupHistory();
  resync().then(connect);

  window.fleetTelemetry = { utilColour: utilColour, handle: handle };
})();
