/* Small page helpers, loaded first (in <head>, deferred) so every page script may use them:
 * - window.fleetFormat: the one way pages write sizes, durations, percentages and numbers (the same
 *   strings as fleet/lib/units.py);
 * - relative times that tick: every <time datetime="ISO" data-relative> reads "12 s ago" and is
 *   rewritten from its absolute timestamp each second (UTC on hover);
 * - a styled confirmation <dialog> for form[data-confirm="question"] (data-confirm-action names the
 *   button), and window.fleetConfirm(question, action) → Promise<boolean> for scripts;
 * - copy buttons ([data-copy="#input-id"]) and filter forms that apply on change (form[data-autosubmit]). */
(function () {
  "use strict";

  // ---- formatting (mirrors fleet/lib/units.py) -----------------------------------------------------
  var EMPTY = "\u2014";
  var BYTE_UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];

  function finite(value) {
    if (value === null || value === undefined || value === "" || typeof value === "boolean") return null;
    var number = Number(value);
    return isFinite(number) ? number : null;
  }

  function bytes(value) {
    var size = finite(value);
    if (size === null) return EMPTY;
    if (Math.abs(size) < 1024) return Math.trunc(size) + " B";
    var unit = 0;
    while (Math.abs(size) >= 1024 && unit < BYTE_UNITS.length - 1) { size /= 1024; unit += 1; }
    return size.toFixed(1) + " " + BYTE_UNITS[unit];
  }

  function duration(seconds) {
    var value = finite(seconds);
    if (value === null) return EMPTY;
    value = Math.abs(value);
    if (value < 60) return Math.floor(value) + " s";
    if (value < 3600) return Math.floor(value / 60) + " min";
    if (value < 86400) return Math.floor(value / 3600) + " h";
    return Math.floor(value / 86400) + " d";
  }

  function relative(date, now) {
    if (!date || isNaN(date.getTime())) return "never";
    var delta = ((now === undefined ? Date.now() : now) - date.getTime()) / 1000;
    if (Math.abs(delta) < 5) return "just now";
    return delta < 0 ? "in " + duration(delta) : duration(delta) + " ago";
  }

  function percent(part, whole, empty) {
    if (!whole) return empty || 0;
    return Math.max(0, Math.min(100, Math.trunc((100 * part) / whole)));
  }

  // A number with fixed digits and a unit after a space ("42 %", "60 °C"); unknown → "—".
  function number(value, digits, unit) {
    var n = finite(value);
    if (n === null) return EMPTY;
    return n.toFixed(digits || 0) + (unit ? " " + unit : "");
  }

  window.fleetFormat = {
    EMPTY: EMPTY, GIB: Math.pow(1024, 3), MIB: Math.pow(1024, 2),
    bytes: bytes, duration: duration, relative: relative, percent: percent, number: number,
    formatPercent: function (value, digits) { return number(value, digits, "%"); },
  };

  function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) return navigator.clipboard.writeText(text);
    return new Promise(function (resolve, reject) {
      var area = document.createElement("textarea");
      area.value = text;
      area.setAttribute("readonly", "");
      area.style.position = "fixed";
      area.style.opacity = "0";
      document.body.appendChild(area);
      area.select();
      var ok = false;
      try { ok = document.execCommand("copy"); } catch (error) { ok = false; }
      document.body.removeChild(area);
      if (ok) resolve(); else reject(new Error("copy refused"));
    });
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-copy]");
    if (!button) return;
    var source = document.querySelector(button.getAttribute("data-copy"));
    if (!source) return;
    var label = button.getAttribute("data-label") || button.textContent;
    button.setAttribute("data-label", label);
    copyText(source.value || source.textContent).then(function () {
      button.textContent = "Copied";
      button.classList.add("copied");
    }, function () {
      source.focus();
      if (source.select) source.select();
      button.textContent = "Press Ctrl+C";
    }).then(function () {
      setTimeout(function () { button.textContent = label; button.classList.remove("copied"); }, 2000);
    });
  });

  // ---- relative times ---------------------------------------------------------------------------
  function pad(n) { return (n < 10 ? "0" : "") + n; }
  function utcText(date) {
    return date.getUTCFullYear() + "-" + pad(date.getUTCMonth() + 1) + "-" + pad(date.getUTCDate()) + " " +
      pad(date.getUTCHours()) + ":" + pad(date.getUTCMinutes()) + ":" + pad(date.getUTCSeconds()) + " UTC";
  }

  function tickTimes() {
    var now = Date.now();
    var times = document.querySelectorAll("time[data-relative]");
    for (var i = 0; i < times.length; i++) {
      var date = new Date(times[i].getAttribute("datetime"));
      var text = relative(date, now);
      if (times[i].textContent !== text) times[i].textContent = text;
      if (!isNaN(date.getTime()) && times[i].title !== utcText(date)) times[i].title = utcText(date);
    }
  }
  window.fleetFormat.tickTimes = tickTimes;
  window.fleetFormat.utc = utcText;
  document.addEventListener("DOMContentLoaded", tickTimes);

  // ---- absolute times: the browser's time zone, 24-hour, UTC on hover -------------------------------
  // The server writes <time datetime="ISO" data-local="datetime|seconds|time">… UTC</time> (the
  // `when` template filter); this rewrites them, and scripts format new ones with fleetFormat.local.
  function local(date, style) {
    if (!date || isNaN(date.getTime())) return EMPTY;
    var clock = pad(date.getHours()) + ":" + pad(date.getMinutes());
    if (style !== "datetime") clock += ":" + pad(date.getSeconds());
    if (style === "time") return clock;
    return date.getFullYear() + "-" + pad(date.getMonth() + 1) + "-" + pad(date.getDate()) + " " + clock;
  }
  function localTimes(root) {
    var times = (root || document).querySelectorAll("time[data-local]");
    for (var i = 0; i < times.length; i++) {
      var date = new Date(times[i].getAttribute("datetime"));
      if (isNaN(date.getTime())) continue;
      times[i].textContent = local(date, times[i].getAttribute("data-local"));
      times[i].title = utcText(date);
    }
  }
  window.fleetFormat.local = local;
  window.fleetFormat.localTimes = localTimes;
  document.addEventListener("DOMContentLoaded", function () { localTimes(); });
  setInterval(function () { if (!document.hidden) tickTimes(); }, 1000);

  // ---- confirmation dialog --------------------------------------------------------------------------
  var dialog = null;

  function buildDialog() {
    dialog = document.createElement("dialog");
    dialog.className = "confirm-dialog";
    dialog.setAttribute("aria-labelledby", "confirm-dialog-text");
    var text = document.createElement("p");
    text.id = "confirm-dialog-text";
    text.className = "confirm-text";
    var actions = document.createElement("form");
    actions.method = "dialog";
    actions.className = "confirm-actions";
    var cancel = document.createElement("button");
    cancel.value = "cancel";
    cancel.className = "btn btn-ghost";
    cancel.textContent = "Cancel";
    var ok = document.createElement("button");
    ok.value = "ok";
    ok.className = "btn btn-danger";
    ok.setAttribute("data-confirm-ok", "");
    actions.append(cancel, ok);
    dialog.append(text, actions);
    document.body.appendChild(dialog);
    return dialog;
  }

  function fleetConfirm(question, action) {
    var box = dialog || buildDialog();
    box.querySelector(".confirm-text").textContent = question;
    box.querySelector("[data-confirm-ok]").textContent = action || "Confirm";
    box.returnValue = "";
    return new Promise(function (resolve) {
      box.addEventListener("close", function () { resolve(box.returnValue === "ok"); }, { once: true });
      box.showModal();
      box.querySelector("button[value=cancel]").focus(); // Enter does not confirm by accident
    });
  }
  window.fleetConfirm = fleetConfirm;

  document.addEventListener("submit", function (event) {
    var form = event.target;
    var question = form.getAttribute && form.getAttribute("data-confirm");
    if (!question) return;
    if (form.hasAttribute("data-confirmed")) { form.removeAttribute("data-confirmed"); return; }
    event.preventDefault();
    var submitter = event.submitter || null;
    var action = form.getAttribute("data-confirm-action") || (submitter && submitter.textContent.trim());
    fleetConfirm(question, action).then(function (yes) {
      if (!yes) return;
      form.setAttribute("data-confirmed", "");
      if (form.requestSubmit) form.requestSubmit(submitter); else form.submit();
    });
  });

  // ---- filters that apply on change (a search field on Enter or leaving it) ------------------------
  document.addEventListener("change", function (event) {
    var form = event.target.form;
    if (!form || !form.hasAttribute("data-autosubmit")) return;
    if (form.requestSubmit) form.requestSubmit(); else form.submit();
  });

  // Selecting a read-only secret field selects all of it, ready to copy by hand.
  document.addEventListener("focusin", function (event) {
    if (event.target.matches && event.target.matches("input.copy-source")) event.target.select();
  });
})();
