/* Playground: the history sidebar — the user's own conversations; open, rename inline, delete. */
(function () {
  "use strict";

  /** `hooks`: { open(id), deleted(id), currentId() }. Returns { refresh() }. */
  function Sidebar(list, api, pageUrl, hooks) {
    this.list = list;
    this.api = api;
    this.pageUrl = pageUrl;
    this.hooks = hooks;
    const self = this;
    list.addEventListener("click", function (event) {
      const item = event.target.closest("[data-conversation-id]");
      if (!item) return;
      const id = Number(item.getAttribute("data-conversation-id"));
      if (event.target.closest("[data-rename]")) { event.preventDefault(); self.rename(item, id); }
      else if (event.target.closest("[data-delete]")) { event.preventDefault(); self.remove(item, id); }
      else if (event.target.closest("[data-open]")) { event.preventDefault(); hooks.open(id); }
    });
  }

  Sidebar.prototype.refresh = function () {
    const self = this;
    return this.api.list().then(function (data) { self.paint(data.conversations); }, function (error) {
      self.list.replaceChildren(self.note("Could not load your conversations: " + error.message));
    });
  };

  Sidebar.prototype.note = function (text) {
    const li = document.createElement("li");
    li.className = "muted pg-empty";
    li.textContent = text;
    return li;
  };

  Sidebar.prototype.paint = function (conversations) {
    const current = this.hooks.currentId();
    const items = conversations.map(function (c) {
      const li = document.createElement("li");
      li.className = "pg-conversation" + (c.id === current ? " active" : "");
      li.setAttribute("data-conversation-id", c.id);
      const open = document.createElement("a");
      open.href = this.pageUrl + "?c=" + c.id;
      open.setAttribute("data-open", "");
      open.className = "pg-conversation-open";
      if (c.id === current) open.setAttribute("aria-current", "true");
      const title = document.createElement("span");
      title.className = "pg-conversation-title";
      title.textContent = c.title || "Untitled";
      const meta = document.createElement("span");
      meta.className = "pg-conversation-meta";
      meta.textContent = (c.mode === "compare" ? "compare \u00b7 " : "") + c.message_count + " msg \u00b7 " +
        window.fleetRender.formatWhen(c.updated_at);
      open.append(title, meta);
      const actions = document.createElement("span");
      actions.className = "pg-conversation-actions";
      actions.append(this.button("Rename", "data-rename", "\u270e"), this.button("Delete", "data-delete", "\u00d7"));
      li.append(open, actions);
      return li;
    }, this);
    this.list.replaceChildren.apply(this.list, items.length ? items : [this.note("No conversations yet.")]);
  };

  Sidebar.prototype.button = function (label, attr, glyph) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "btn btn-ghost btn-sm";
    button.setAttribute(attr, "");
    button.setAttribute("aria-label", label);
    button.title = label;
    button.textContent = glyph;
    return button;
  };

  Sidebar.prototype.rename = function (item, id) {
    const self = this;
    const title = item.querySelector(".pg-conversation-title");
    const input = document.createElement("input");
    input.type = "text";
    input.maxLength = 200;
    input.value = title.textContent;
    input.className = "pg-rename";
    input.setAttribute("aria-label", "New title");
    item.querySelector("[data-open]").replaceWith(input);
    input.focus();
    input.select();
    let done = false;
    function finish(save) {
      if (done) return;
      done = true;
      const value = input.value.trim();
      if (!save || !value || value === title.textContent) { self.refresh(); return; }
      self.api.update(id, { title: value }).then(function () { self.refresh(); }, function (error) {
        self.refresh().then(function () { window.alert("Rename failed: " + error.message); });
      });
    }
    input.addEventListener("keydown", function (event) {
      if (event.key === "Enter") { event.preventDefault(); finish(true); }
      if (event.key === "Escape") finish(false);
    });
    input.addEventListener("blur", function () { finish(true); });
  };

  Sidebar.prototype.remove = function (item, id) {
    const self = this;
    const title = item.querySelector(".pg-conversation-title").textContent;
    const question = "Delete \u201c" + title + "\u201d and all its messages? This cannot be undone.";
    window.fleetConfirm(question, "Delete conversation").then(function (yes) {
      if (!yes) return;
      self.api.remove(id).then(function () {
        self.hooks.deleted(id);
        self.refresh();
      }, function (error) { window.alert("Delete failed: " + error.message); });
    });
  };

  window.fleetSidebar = Sidebar;
})();
