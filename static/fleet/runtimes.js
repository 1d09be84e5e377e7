/* Node page: redraw the runtimes table from a pushed report (live.js dispatches "fleet:runtimes").
 * Payload: {"kind": "runtimes", "node_id": 7, "runtimes": [{repo, sha, runtime, state, state_label,
 * state_colour, reason, port, tokens_served, requests_active, restarts, log_tail, updated_at}]}.
 * Built with DOM calls and textContent only: agent-reported strings are never parsed as HTML.
 */
(function () {
  "use strict";

  var section = document.querySelector("[data-runtimes]");
  var page = document.querySelector("[data-node-page]");
  if (!section || !page) return;
  var body = section.querySelector("[data-runtimes-body]");
  var tableWrap = section.querySelector("[data-runtimes-table]");
  var empty = section.querySelector("[data-runtimes-empty]");
  var updated = section.querySelector("[data-runtimes-updated]");
  var revisions = {}; // sha → hub revision name, as rendered by the server (the push does not carry it)
  var rows = body.querySelectorAll("tr[data-runtime-sha]");
  for (var i = 0; i < rows.length; i++) {
    var revision = rows[i].getAttribute("data-runtime-revision");
    if (revision) revisions[rows[i].getAttribute("data-runtime-sha")] = revision;
  }

  function cell(text, className) {
    var td = document.createElement("td");
    if (className) td.className = className;
    td.textContent = text === null || text === undefined || text === "" ? "—" : String(text);
    return td;
  }

  function mainRow(rt) {
    var tr = document.createElement("tr");
    tr.setAttribute("data-runtime", rt.repo);
    tr.setAttribute("data-runtime-sha", rt.sha);
    tr.appendChild(cell(rt.repo));
    var version = cell(rt.sha.slice(0, 12) + (revisions[rt.sha] ? " · " + revisions[rt.sha] : ""), "mono small");
    version.title = rt.sha;
    tr.appendChild(version);
    tr.appendChild(cell(rt.runtime));
    var state = document.createElement("td");
    var badge = document.createElement("span");
    badge.className = "badge badge-" + String(rt.state_colour).replace(/[^a-z]/g, "");
    badge.textContent = rt.state_label || rt.state;
    state.appendChild(badge);
    tr.appendChild(state);
    tr.appendChild(cell(rt.port, "num mono"));
    tr.appendChild(cell(rt.tokens_served, "num"));
    tr.appendChild(cell(rt.requests_active, "num"));
    tr.appendChild(cell(rt.restarts, "num"));
    return tr;
  }

  function detailRow(rt, openLogs) {
    var lines = Array.isArray(rt.log_tail) ? rt.log_tail : [];
    if (!rt.reason && !lines.length) return null;
    var tr = document.createElement("tr");
    tr.className = "runtime-detail";
    tr.setAttribute("data-runtime-detail", rt.repo);
    var td = document.createElement("td");
    td.colSpan = 8;
    if (rt.reason) {
      var reason = document.createElement("p");
      reason.className = "runtime-reason" + (rt.state === "failed" ? " runtime-failed" : "");
      reason.textContent = (rt.state === "failed" ? "Failed: " : "") + rt.reason;
      td.appendChild(reason);
    }
    if (lines.length) {
      var details = document.createElement("details");
      details.className = "runtime-log";
      details.open = !!openLogs[rt.repo];
      var summary = document.createElement("summary");
      summary.textContent = "Log tail (" + lines.length + " line" + (lines.length === 1 ? "" : "s") + ")";
      var pre = document.createElement("pre");
      pre.textContent = lines.join("\n");
      details.appendChild(summary);
      details.appendChild(pre);
      td.appendChild(details);
    }
    tr.appendChild(td);
    return tr;
  }

  document.addEventListener("fleet:runtimes", function (event) {
    var message = event.detail || {};
    if (String(message.node_id) !== page.getAttribute("data-node-id") || !Array.isArray(message.runtimes)) return;
    var openLogs = {}; // keep the logs a reader opened open across redraws
    var opened = body.querySelectorAll("tr[data-runtime-detail] details[open]");
    for (var j = 0; j < opened.length; j++) {
      openLogs[opened[j].closest("tr").getAttribute("data-runtime-detail")] = true;
    }
    var fragment = document.createDocumentFragment();
    message.runtimes.forEach(function (rt) {
      fragment.appendChild(mainRow(rt));
      var detail = detailRow(rt, openLogs);
      if (detail) fragment.appendChild(detail);
    });
    body.replaceChildren(fragment);
    tableWrap.hidden = !message.runtimes.length;
    empty.hidden = !!message.runtimes.length;
    if (updated && message.runtimes.length && message.runtimes[0].updated_at) {
      updated.setAttribute("datetime", message.runtimes[0].updated_at);
      updated.textContent = "just now";
    }
  });
})();
