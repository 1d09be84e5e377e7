/* A node page's history chart: 1 h / 24 h / 7 d of 1-minute rollups, one metric at a time across the node's
 * GPUs. With only minutes of data the x axis spans what exists, so the line is drawn over it instead of a
 * few dots at the right edge of an empty hour. Formats and colours: chart-kit.js.
 */
(function () {
  "use strict";

  var nodeRoot = document.querySelector("[data-telemetry-node]");
  if (!nodeRoot || !nodeRoot.querySelector("[data-history-chart]")) return;
  var F = window.fleetFormat;
  var C = window.fleetCharts;

  function fetchJSON(url) {
    return fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } }).then(function (r) {
      if (!r.ok) throw new Error(url + ": HTTP " + r.status);
      return r.json();
    });
  }

  function warn(e) { if (window.console) console.warn("fleet telemetry:", e); }

  function chartWidth(el) { return Math.max(280, (el.clientWidth || 400) - 4); }

  var history = { chart: null, range: "1h", metric: "util" };
  var HISTORY_SPANS = { "1h": 3600, "24h": 86400, "7d": 7 * 86400 };
  var HISTORY = { util: [1, "%", 0], mem: [2, "GiB", 1], temp: [3, "°C", 0], power: [4, "W", 0] };

  function loadHistory() {
    var box = nodeRoot.querySelector("[data-history-chart]");
    if (!box) return;
    fetchJSON(nodeRoot.getAttribute("data-history-url") + "?range=" + encodeURIComponent(history.range))
      .then(function (data) {
        var indexes = Object.keys(data.gpus).map(Number).sort(function (a, b) { return a - b; });
        var seen = {};
        indexes.forEach(function (i) { data.gpus[i].forEach(function (p) { seen[p[0]] = true; }); });
        var xs = Object.keys(seen).map(Number).sort(function (a, b) { return a - b; });
        var spec = HISTORY[history.metric];
        var series = indexes.map(function (i) {
          var byTime = {};
          data.gpus[i].forEach(function (p) {
            var v = p[spec[0]];
            byTime[p[0]] = v === null ? null : (spec[0] === 2 ? v / F.GIB : v);
          });
          return xs.map(function (t) { return t in byTime ? byTime[t] : null; });
        });
        if (history.chart) history.chart.destroy();
        box.replaceChildren();
        box.setAttribute("data-points", String(xs.length));
        var empty = nodeRoot.querySelector("[data-history-empty]");
        if (empty) empty.hidden = xs.length > 0;
        if (!window.uPlot || !xs.length) { history.chart = null; return; }
        var now = C.serverNow();
        // Over what exists: from the first rollup (less a minute) when that is inside the asked-for span.
        var from = Math.max(now - HISTORY_SPANS[history.range], xs[0] - 60);
        history.chart = new window.uPlot({
          width: chartWidth(box), height: 240,
          scales: { x: { time: true, range: function () { return [from, now]; } } },
          series: [{ value: C.legendTime() }].concat(indexes.map(function (i, n) {
            return { label: "GPU " + i, stroke: C.colour(n), dash: C.dash(n), width: 1.5, spanGaps: false,
                     points: { show: xs.length < 3 }, value: C.legendValue(spec[1], spec[2]) };
          })),
          axes: [C.timeAxis(), C.valueAxis(spec[1], spec[2])],
        }, [xs].concat(series), box);
      }).catch(warn);
  }

  function setupHistory() {
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

  setupHistory();
  window.addEventListener("resize", function () {
    var box = nodeRoot.querySelector("[data-history-chart]");
    if (history.chart) history.chart.setSize({ width: chartWidth(box), height: history.chart.height });
  });
  window.fleetHistory = { chart: function () { return history.chart; } };
})();
