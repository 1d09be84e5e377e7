/* Playground: the conversation-history JSON API and the `/ws/chat/` socket (docs: CHAT_PROTOCOL). */
(function () {
  "use strict";

  /** JSON calls to the history API; rejects with an Error whose message names the field. */
  function HistoryApi(baseUrl, csrfToken) {
    this.base = baseUrl;
    this.csrf = csrfToken;
  }

  HistoryApi.prototype.call = function (method, path, body, options) {
    const init = {
      method: method,
      credentials: "same-origin",
      headers: { "Accept": "application/json", "X-CSRFToken": this.csrf },
      keepalive: Boolean(options && options.keepalive),
    };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    return fetch(this.base + path, init).then(function (response) {
      if (response.status === 204) return null;
      return response.json().catch(function () { return {}; }).then(function (data) {
        if (response.ok) return data;
        const errors = data.errors || {};
        const text = Object.keys(errors).map(function (k) { return k + ": " + errors[k]; }).join("; ");
        const error = new Error(text || "the server answered " + response.status);
        error.status = response.status;
        throw error;
      });
    });
  };

  HistoryApi.prototype.list = function () { return this.call("GET", ""); };
  HistoryApi.prototype.get = function (id) { return this.call("GET", id + "/"); };
  HistoryApi.prototype.create = function (data) { return this.call("POST", "", data); };
  HistoryApi.prototype.update = function (id, data) { return this.call("PATCH", id + "/", data); };
  HistoryApi.prototype.remove = function (id) { return this.call("DELETE", id + "/"); };
  HistoryApi.prototype.addMessage = function (id, data, options) {
    return this.call("POST", id + "/messages/", data, options);
  };
  HistoryApi.prototype.truncate = function (id, after) { return this.call("POST", id + "/truncate/", { after: after }); };

  /** One socket, many concurrent requests; reconnects with backoff. `handlers[request_id]` get frames. */
  function ChatSocket(path, onStatus) {
    this.url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + path;
    this.onStatus = onStatus;
    this.handlers = {};
    this.backoff = 500;
    this.counter = 0;
    this.connect();
  }

  ChatSocket.prototype.connect = function () {
    const self = this;
    self.onStatus("connecting");
    const ws = new WebSocket(self.url);
    self.ws = ws;
    ws.onopen = function () { self.backoff = 500; self.onStatus("live"); };
    ws.onmessage = function (event) {
      let frame;
      try { frame = JSON.parse(event.data); } catch (error) { return; }
      const handler = frame.request_id && self.handlers[frame.request_id];
      if (handler) handler(frame);
      else if (frame.type === "error") self.onStatus("error", frame.detail);
    };
    ws.onclose = function (event) {
      // Requests in flight are lost with the socket: tell their owners, then reconnect.
      Object.keys(self.handlers).forEach(function (id) {
        self.handlers[id]({ type: "chat.error", request_id: id, lost: true,
          error: "The connection to the server dropped mid-answer; what arrived is kept. Send again to retry." });
      });
      self.handlers = {};
      if (event.code === 4403) { self.onStatus("forbidden"); return; }
      self.onStatus("reconnecting");
      setTimeout(function () { self.connect(); }, self.backoff);
      self.backoff = Math.min(self.backoff * 2, 10000);
    };
  };

  ChatSocket.prototype.isOpen = function () { return this.ws && this.ws.readyState === WebSocket.OPEN; };

  /** Start a chat; returns its request_id. `handler(frame)` sees started/delta/done/error frames. */
  ChatSocket.prototype.start = function (target, messages, params, handler) {
    const id = "r" + Date.now().toString(36) + "-" + (++this.counter);
    const self = this;
    if (!this.isOpen()) {
      setTimeout(function () {
        handler({ type: "chat.error", request_id: id, error: "Not connected to the server yet; try again in a moment." });
      }, 0);
      return id;
    }
    this.handlers[id] = function (frame) {
      if (frame.type === "chat.done" || frame.type === "chat.error") delete self.handlers[id];
      handler(frame);
    };
    this.ws.send(JSON.stringify({ type: "chat.start", request_id: id, target: target, messages: messages, params: params }));
    return id;
  };

  ChatSocket.prototype.cancel = function (id) {
    if (this.isOpen() && this.handlers[id]) this.ws.send(JSON.stringify({ type: "chat.cancel", request_id: id }));
  };

  /** Stop listening for a request (its answer was settled here, e.g. a cancel the server never confirmed). */
  ChatSocket.prototype.forget = function (id) { delete this.handlers[id]; };

  window.fleetPlaygroundApi = { HistoryApi: HistoryApi, ChatSocket: ChatSocket };
})();
