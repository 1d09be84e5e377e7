/* Shared pieces of the telemetry pages (window.fleetCharts): one time format (24-hour, the browser's time
 * zone, UTC on hover), a palette that tells 16 GPUs apart, uPlot axes that carry their unit, legend values
 * that show the hovered point or else the newest one (never "--"), and the server clock for "no data since".
 */
(function () {
  "use strict";

  var F = window.fleetFormat;
  // Distinguishable on the dark theme (Tableau 10 and its light companions, reordered for contrast).
  var PALETTE = ["#4c8dff", "#f28e2b", "#3fb950", "#e15759", "#b48cf8", "#edc948", "#39c5cf", "#ff9da7",
                 "#c49c7a", "#a0cbe8", "#8cd17d", "#d37295", "#ffbe7d", "#bab0ac", "#76b7b2", "#f1ce63"];
  var offset = 0; // server clock minus browser clock, seconds

  function pad(n) { return (n < 10 ? "0" : "") + n; }

  function clock(ts, seconds) {
    var d = new Date(ts * 1000);
    return pad(d.getHours()) + ":" + pad(d.getMinutes()) + (seconds === false ? "" : ":" + pad(d.getSeconds()));
  }

  function day(ts) {
    var d = new Date(ts * 1000);
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate());
  }

  function utc(ts) {
    return new Date(ts * 1000).toISOString().slice(0, 19).replace("T", " ") + " UTC";
  }

  function zone() {
    try { return Intl.DateTimeFormat().resolvedOptions().timeZone || "local time"; } catch (e) { return "local time"; }
  }

  function colour(n) { return PALETTE[n % PALETTE.length]; }

  // Series n beyond the palette is dashed, so 17+ GPUs still differ.
  function dash(n) { return n < PALETTE.length ? undefined : [6, 3]; }

  function timeTicks(u, splits, axisIdx, space, incr) {
    var span = u.scales.x.max - u.scales.x.min;
    return splits.map(function (ts) {
      if (incr >= 86400) return day(ts).slice(5);
      if (span > 86400) return day(ts).slice(5) + " " + clock(ts, false);
      return clock(ts, incr < 60);
    });
  }

  var AXIS_STYLE = { stroke: "#8b96a5", grid: { stroke: "#262f3b" }, ticks: { stroke: "#262f3b" } };

  function timeAxis() {
    return Object.assign({}, AXIS_STYLE, { scale: "x", label: "time (" + zone() + ")", labelSize: 18,
                                           values: timeTicks, space: 60 });
  }

  function valueAxis(unit, digits) {
    return Object.assign({}, AXIS_STYLE, { label: unit, labelSize: 18, size: 52,
      values: function (u, splits) { return splits.map(function (v) { return v.toFixed(digits || 0); }); } });
  }

  function newest(values) {
    for (var i = values.length - 1; i >= 0; i--) if (values[i] !== null && values[i] !== undefined) return values[i];
    return null;
  }

  // Legend text of a value series: at the cursor; when not hovering, the newest value while the data is
  // live (``live()``), else nothing (a stale value must not read as a current one).
  function legendValue(unit, digits, live) {
    return function (u, value, sidx, idx) {
      if (idx === null || idx === undefined) {
        if (live && !live()) return "";
        value = newest(u.data[sidx] || []);
      }
      return F.number(value, digits || 0, unit);
    };
  }

  // Legend text of the time: the hovered point's time (local, 24-hour) with UTC; when not hovering, the
  // newest point's time, or "no data since …" when the data is not live.
  function legendTime(live) {
    return function (u, value, sidx, idx) {
      var xs = u.data[0] || [];
      var hovering = idx !== null && idx !== undefined;
      var ts = hovering ? value : xs[xs.length - 1];
      if (ts === undefined || ts === null) return hovering ? F.EMPTY : noDataText(null);
      if (hovering) return clock(ts) + " · " + utc(ts).slice(11);
      return live && !live() ? noDataText(ts) : clock(ts) + " (newest)";
    };
  }

  function setServerNow(serverSeconds) {
    if (typeof serverSeconds === "number" && isFinite(serverSeconds)) offset = serverSeconds - Date.now() / 1000;
  }

  function serverNow() { return Date.now() / 1000 + offset; }

  function noDataText(since) {
    return since ? "no data since " + clock(since) : "no data yet";
  }

  function noDataTitle(since) {
    return since ? "newest values from " + day(since) + " " + clock(since) + " (" + utc(since) + ")" : "";
  }

  window.fleetCharts = {
    PALETTE: PALETTE, colour: colour, dash: dash, clock: clock, day: day, utc: utc, zone: zone,
    timeAxis: timeAxis, valueAxis: valueAxis, legendValue: legendValue, legendTime: legendTime,
    setServerNow: setServerNow, serverNow: serverNow, noDataText: noDataText, noDataTitle: noDataTitle,
  };
})();
