/* Playground: the target pickers, filled from GET /playground/targets/ (refreshed so they stay true). */
(function () {
  "use strict";
  const REFRESH_MS = 15000;

  /** A stable key for a target object ({model}, {model, sha}, {node, model?}). */
  function targetKey(target) {
    if (!target) return "";
    return JSON.stringify({ model: target.model || null, node: target.node || null, sha: target.sha || null });
  }

  function describe(target, versions) {
    if (!target) return "\u2014";
    if (target.node) return (target.nodeName || "node " + target.node) + (target.model ? " \u00b7 " + target.model : "");
    if (target.sha) {
      const revision = versions && versions[target.sha];
      return target.model + " @ " + (revision || target.sha.slice(0, 10));
    }
    return target.model;
  }

  function option(target, label, disabled) {
    const el = document.createElement("option");
    el.value = JSON.stringify(target);
    el.textContent = label;
    el.disabled = Boolean(disabled);
    el.setAttribute("data-key", targetKey(target));
    return el;
  }

  function group(label, options) {
    const el = document.createElement("optgroup");
    el.label = label;
    el.append.apply(el, options);
    return el;
  }

  function plural(n, word) { return n + " " + word + (n === 1 ? "" : "s"); }

  /** `selects`: {a: <select>, b: <select>}; `note`: element for load errors; `onChange()`. */
  function TargetPicker(url, selects, note, onChange) {
    this.url = url;
    this.selects = selects;
    this.note = note;
    this.onChange = onChange;
    this.extra = { a: null, b: null };  // a wanted target not (or no longer) offered by the server
    this.versions = {};
    this.data = { models: [], nodes: [] };
    const self = this;
    Object.keys(selects).forEach(function (lane) {
      selects[lane].addEventListener("change", function () {
        if (targetKey(self.get(lane)) !== targetKey(self.extra[lane])) self.extra[lane] = null;
        onChange();
      });
    });
    this.load();
    if (url) setInterval(function () { self.load(); }, REFRESH_MS);
  }

  TargetPicker.prototype.load = function () {
    const self = this;
    if (!this.url) {
      return Promise.resolve().then(function () {
        self.fail("The chat server's target list (/playground/targets/) is not available on this server.");
      });
    }
    return fetch(this.url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (!response.ok) throw new Error("the server answered " + response.status);
        return response.json();
      })
      .then(function (data) { self.data = data; self.note.hidden = true; self.paint(); },
        function (error) { self.fail("Could not load the models the fleet serves: " + error.message + ". Retrying."); });
  };

  TargetPicker.prototype.fail = function (text) {
    this.note.textContent = text;
    this.note.hidden = false;
    this.paint();
  };

  TargetPicker.prototype.options = function (lane) {
    const self = this;
    const models = (this.data.models || []).map(function (m) {
      return option({ model: m.model }, m.model + " \u2014 " + (m.ready_nodes ? "any of " + plural(m.ready_nodes, "ready node") : "no ready node"));
    });
    const versions = [];
    (this.data.models || []).forEach(function (m) {
      (m.versions || []).forEach(function (v) {
        self.versions[v.sha] = v.revision;
        versions.push(option({ model: m.model, sha: v.sha },
          m.model + " @ " + (v.revision || v.sha.slice(0, 10)) + " \u2014 " + plural(v.ready_nodes, "ready node")));
      });
    });
    const nodes = [];
    (this.data.nodes || []).forEach(function (n) {
      const ready = (n.runtimes || []).filter(function (r) { return r.state === "ready"; });
      ready.forEach(function (r) {
        nodes.push(option({ node: n.id, model: r.repo }, n.name + " \u2014 " + r.repo + (r.revision ? " @ " + r.revision : "")));
      });
      if (!ready.length) nodes.push(option({ node: n.id }, n.name + " \u2014 " + (n.status || "") + ", nothing ready", true));
    });
    const groups = [];
    if (models.length) groups.push(group("Any ready node", models));
    if (versions.length) groups.push(group("A specific version", versions));
    if (nodes.length) groups.push(group("One node", nodes));
    const extra = this.extra[lane];
    if (extra && !groups.some(function (g) { return g.querySelector("[data-key='" + targetKey(extra) + "']"); })) {
      groups.unshift(option(extra, describe(extra, this.versions) + " (not offered now)"));
    }
    if (!groups.length) groups.push(option(null, "No model is being served", true));
    return groups;
  };

  TargetPicker.prototype.paint = function () {
    const self = this;
    Object.keys(this.selects).forEach(function (lane) {
      const select = self.selects[lane];
      const wanted = self.extra[lane] || self.get(lane);
      self.extra[lane] = wanted;  // offered again below unless the server no longer lists it
      select.replaceChildren.apply(select, self.options(lane));
      if (wanted) self.set(lane, wanted, true);
      if (lane === "b" && !wanted && select.options.length > 1) select.selectedIndex = 1;
    });
    this.onChange();
  };

  TargetPicker.prototype.get = function (lane) {
    const select = this.selects[lane];
    if (!select || !select.value || select.value === "null") return null;
    try { return JSON.parse(select.value); } catch (error) { return null; }
  };

  /** Select `target` in `lane`; kept as an extra option when the server does not offer it now. */
  TargetPicker.prototype.set = function (lane, target, painting) {
    const select = this.selects[lane];
    const key = targetKey(target);
    const match = Array.prototype.find.call(select.options, function (o) { return o.getAttribute("data-key") === key; });
    if (match) {
      match.disabled = false;
      select.value = match.value;
      if (!painting) this.extra[lane] = null;
      return;
    }
    this.extra[lane] = target;
    if (!painting) this.paint();
  };

  TargetPicker.prototype.describe = function (target) { return describe(target, this.versions); };

  window.fleetTargets = { TargetPicker: TargetPicker, targetKey: targetKey };
})();
