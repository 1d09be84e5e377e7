/* The node list stays current without a reload: a pushed node the table does not show yet (just
 * enrolled) or a status change redraws the table body from the server (?partial=rows, same filters,
 * sort and page); so does a refresh every 10 s for the load and temperature columns. live.js announces
 * pushed nodes as "fleet:node" DOM events. */
(function () {
  "use strict";
  var table = document.querySelector("table[data-node-table]");
  if (!table || !window.fetch) return;
  var REFRESH_MS = 10000;
  var url = new URL(table.getAttribute("data-rows-url") || window.location.href, window.location.href);
  url.searchParams.set("partial", "rows");
  var pending = null;
  var inFlight = false;

  function redraw() {
    pending = null;
    if (inFlight) { schedule(500); return; }
    inFlight = true;
    fetch(url.toString(), { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (html) {
        if (!html) return;
        var holder = document.createElement("table");
        holder.innerHTML = html.trim();
        var fresh = holder.querySelector("tbody[data-node-rows]");
        var old = table.querySelector("tbody[data-node-rows]");
        if (!fresh || !old || fresh.innerHTML === old.innerHTML) return;
        var known = {};
        old.querySelectorAll("tr[data-node-id]").forEach(function (row) { known[row.getAttribute("data-node-id")] = true; });
        table.replaceChild(fresh, old);
        window.fleetFormat.localTimes(fresh);
        window.fleetFormat.tickTimes();
        fresh.querySelectorAll("tr[data-node-id]").forEach(function (row) {
          if (!known[row.getAttribute("data-node-id")]) row.classList.add("flash");
        });
        document.querySelectorAll("[data-node-total]").forEach(function (el) {
          el.textContent = fresh.getAttribute("data-count");
        });
        if (window.fleetFormat.tickTimes) window.fleetFormat.tickTimes();
      })
      .catch(function () { /* the next push or refresh repairs it */ })
      .then(function () { inFlight = false; });
  }

  function schedule(delay) {
    if (pending) return;
    pending = setTimeout(redraw, delay);
  }

  document.addEventListener("fleet:node", function (event) {
    var node = event.detail || {};
    var row = table.querySelector('tr[data-node-id="' + Number(node.id) + '"]');
    var badge = row && row.querySelector("[data-node-status]");
    // A node not on the page (enrolled just now), or one whose status changed (its load columns change).
    if (!row || !badge || badge.getAttribute("data-status") !== node.status) schedule(300);
  });

  setInterval(function () { if (!document.hidden) schedule(0); }, REFRESH_MS);
  window.fleetNodeList = { redraw: redraw };
})();
