/* Playground page: chat (or compare two targets) over /ws/chat/, every turn saved to the user's history. */
(function () {
  "use strict";
  const root = document.getElementById("playground");
  if (!root || !window.fleetRender || !window.fleetPlaygroundApi) return;
  const R = window.fleetRender;
  const $ = function (id) { return document.getElementById(id); };
  const STOP_GRACE_MS = 5000;

  const api = new window.fleetPlaygroundApi.HistoryApi(root.getAttribute("data-api-url"), root.getAttribute("data-csrf"));
  const pageUrl = root.getAttribute("data-page-url");
  const S = { mode: root.getAttribute("data-mode"), conv: null, messages: [], runs: {}, saved: "" };
  const transcript = $("pg-transcript");
  const placeholder = $("pg-placeholder");
  const prompt = $("pg-prompt");
  const settingsPanel = document.querySelector(".pg-settings");

  const socketBadge = $("pg-socket");
  const SOCKET_LABEL = { connecting: ["connecting", "grey"], live: ["connected", "green"],
    reconnecting: ["reconnecting", "grey"], forbidden: ["not allowed", "red"], error: ["protocol error", "red"] };
  const socket = new window.fleetPlaygroundApi.ChatSocket(root.getAttribute("data-ws-path"), function (state, detail) {
    const label = SOCKET_LABEL[state] || [state, "grey"];
    socketBadge.textContent = label[0];
    socketBadge.className = "badge badge-" + label[1];
    socketBadge.setAttribute("data-state", state);
    if (detail) showError("Server: " + detail);
  });

  const picker = new window.fleetTargets.TargetPicker(root.getAttribute("data-targets-url"),
    { a: $("pg-target-a"), b: $("pg-target-b") }, $("pg-targets-note"), summarize);
  const sidebar = new window.fleetSidebar($("pg-conversations"), api, pageUrl, {
    open: function (id) { openConversation(id); },
    deleted: function (id) { if (S.conv && S.conv.id === id) newConversation(); },
    currentId: function () { return S.conv ? S.conv.id : null; },
  });

  // ---- settings ------------------------------------------------------------------------------------
  function readParams() {
    const fields = [["temperature", "pg-temperature", 0, 2, false], ["top_p", "pg-top-p", 0.01, 1, false],
      ["max_tokens", "pg-max-tokens", 1, 32768, true]];
    const params = {};
    fields.forEach(function (f) {
      const raw = $(f[1]).value.trim();
      if (raw === "") return;
      const value = Number(raw);
      if (!isFinite(value) || value < f[2] || value > f[3] || (f[4] && !Number.isInteger(value))) {
        throw new Error(f[0] + ": give " + (f[4] ? "a whole number" : "a number") + " from " + f[2] + " to " + f[3]);
      }
      params[f[0]] = value;
    });
    return params;
  }

  function setParams(params) {
    $("pg-temperature").value = params.temperature !== undefined ? params.temperature : "";
    $("pg-top-p").value = params.top_p !== undefined ? params.top_p : "";
    $("pg-max-tokens").value = params.max_tokens !== undefined ? params.max_tokens : "";
  }

  function lanes() { return S.mode === "compare" ? ["a", "b"] : ["a"]; }

  function summarize() {
    const parts = lanes().map(function (lane) { return picker.describe(picker.get(lane)); });
    let params = {};
    try { params = readParams(); } catch (error) { /* shown on send */ }
    if (params.temperature !== undefined) parts.push("temp " + params.temperature);
    if (params.max_tokens !== undefined) parts.push(params.max_tokens + " tokens max");
    $("pg-settings-summary").textContent = parts.join(" \u00b7 ");
  }
  ["pg-temperature", "pg-top-p", "pg-max-tokens"].forEach(function (id) { $(id).addEventListener("input", summarize); });

  function showError(text, settings) {
    const el = settings ? $("pg-settings-error") : $("pg-error");
    el.textContent = text;
    el.hidden = !text;
    if (text && settings) settingsPanel.open = true;
  }

  function setMode(mode) {
    S.mode = mode;
    root.setAttribute("data-mode", mode);
    $("pg-new").textContent = mode === "compare" ? "New compare" : "New chat";
    document.querySelectorAll("[data-mode-button]").forEach(function (b) {
      b.setAttribute("aria-pressed", String(b.getAttribute("data-mode-button") === mode));
      b.classList.toggle("btn-primary", b.getAttribute("data-mode-button") === mode);
    });
    document.querySelector("[data-lane-label=a]").textContent = mode === "compare" ? "Model A" : "Model";
    summarize();
  }

  // ---- transcript ----------------------------------------------------------------------------------
  const el = R.el;

  function busy() { return Object.keys(S.runs).length > 0; }

  function userBubble(message) {
    const box = el("div", "pg-msg pg-user");
    box.setAttribute("data-message-id", message.id);
    const head = el("div", "pg-msg-head");
    head.append(el("span", "pg-role", "You"));
    if (!busy()) {
      const edit = el("button", "btn btn-ghost btn-sm", "Edit");
      edit.type = "button";
      edit.addEventListener("click", function () { editMessage(box, message); });
      head.append(edit);
    }
    box.append(head, el("div", "pg-text", message.content));
    return box;
  }

  function answerCard(message) { return R.answerCard(message, S.mode === "compare"); }
  function paintAnswer(message, full) { R.paintAnswer(message, full, S.mode === "compare"); }

  function renderTranscript() {
    const parts = [];
    let answers = null;
    S.messages.forEach(function (message) {
      if (message.role === "user") {
        parts.push(userBubble(message));
        answers = el("div", "pg-answers" + (S.mode === "compare" ? " pg-answers-2" : ""));
        parts.push(answers);
      } else if (answers) {
        answers.append(answerCard(message));
      }
    });
    if (!parts.length) parts.push(placeholder);
    transcript.replaceChildren.apply(transcript, parts);
    updateButtons();
  }

  function updateButtons() {
    const running = busy();
    $("pg-stop").hidden = !running;
    $("pg-send").disabled = running;
    const last = S.messages[S.messages.length - 1];
    $("pg-regenerate").hidden = running || !last;
  }

  function scrollDown() { transcript.scrollTop = transcript.scrollHeight; }

  // ---- conversations -------------------------------------------------------------------------------
  function settingsSnapshot() {
    return JSON.stringify([picker.get("a"), S.mode === "compare" ? picker.get("b") : null, $("pg-system").value, readParams()]);
  }

  function ensureConversation(targetA, targetB, params) {
    const body = { target: targetA, system_prompt: $("pg-system").value, params: params };
    if (S.mode === "compare") body.target_b = targetB;
    const snapshot = settingsSnapshot();
    if (!S.conv) {
      body.mode = S.mode;
      return api.create(body).then(function (conv) {
        S.conv = conv;
        S.saved = snapshot;
        history.replaceState(null, "", pageUrl + "?c=" + conv.id);
      });
    }
    if (snapshot === S.saved) return Promise.resolve();
    return api.update(S.conv.id, body).then(function () { S.saved = snapshot; });
  }

  function openConversation(id) {
    stopAll();
    return api.get(id).then(function (conv) {
      S.conv = conv;
      setMode(conv.mode);
      picker.set("a", conv.target);
      if (conv.target_b) picker.set("b", conv.target_b);
      $("pg-system").value = conv.system_prompt;
      setParams(conv.params || {});
      S.messages = conv.messages;
      settingsPanel.open = !conv.messages.length;
      S.saved = settingsSnapshot();
      history.replaceState(null, "", pageUrl + "?c=" + conv.id);
      showError("");
      renderTranscript();
      scrollDown();
      summarize();
      sidebar.refresh();
    }, function (error) { showError("Could not open conversation " + id + ": " + error.message); });
  }

  function newConversation() {
    stopAll();
    S.conv = null;
    S.messages = [];
    settingsPanel.open = true;
    history.replaceState(null, "", pageUrl + (S.mode === "compare" ? "?compare=1" : ""));
    renderTranscript();
    sidebar.refresh();
    prompt.focus();
  }

  // ---- sending and streaming -----------------------------------------------------------------------
  function laneMessages(lane) {
    const out = [];
    const system = $("pg-system").value;
    if (system.trim()) out.push({ role: "system", content: system });
    S.messages.forEach(function (m) {
      if (m.role === "user") out.push({ role: "user", content: m.content });
      else if (m.lane === lane && !m.streaming && m.content && m.finish_reason !== "error") {
        out.push({ role: "assistant", content: m.content });
      }
    });
    return out;
  }

  function send(content, replaces) {
    showError("");
    showError("", true);
    let params;
    try { params = readParams(); } catch (error) { showError(error.message, true); return Promise.resolve(); }
    const targetA = picker.get("a");
    const targetB = S.mode === "compare" ? picker.get("b") : null;
    if (!targetA || (S.mode === "compare" && !targetB)) {
      showError("target: pick " + (S.mode === "compare" ? "two models to compare" : "a model or a node") + " first", true);
      return Promise.resolve();
    }
    $("pg-send").disabled = true;
    return ensureConversation(targetA, targetB, params).then(function () {
      const body = { role: "user", content: content };
      if (replaces) body.replaces = replaces;
      return api.addMessage(S.conv.id, body);
    }).then(function (saved) {
      if (replaces) S.messages = S.messages.slice(0, S.messages.findIndex(function (m) { return m.id === replaces; }));
      if (!S.messages.length) settingsPanel.open = false;  // the summary line still shows them
      S.messages.push(saved.message);
      S.conv.title = saved.title;
      prompt.value = "";
      startLanes(saved.message, { a: targetA, b: targetB }, params);
      sidebar.refresh();
    }).catch(function (error) {
      showError("Not sent: " + error.message);
      updateButtons();
    });
  }

  function startLanes(userMessage, targets, params) {
    const convId = S.conv.id;
    lanes().forEach(function (lane) {
      const message = { role: "assistant", lane: lane, content: "", streaming: true, node: null, model: "", sha: "",
        revision: null, finish_reason: "", error: "", ttft_ms: null, tokens_per_s: null, usage: {} };
      const context = laneMessages(lane);
      S.messages.push(message);
      const run = { lane: lane, message: message, convId: convId, replyTo: userMessage.id, startedAt: performance.now(),
        firstAt: null, deltas: 0, finished: false, stopTimer: null };
      S.runs[lane] = run;
      run.requestId = socket.start(targets[lane], context, params, function (frame) { onFrame(run, frame); });
    });
    renderTranscript();
    scrollDown();
  }

  function onFrame(run, frame) {
    const message = run.message;
    if (run.finished) return;
    if (frame.type === "chat.started") {
      message.node = frame.node || null;
      message.model = frame.model || "";
      message.sha = frame.sha || "";
      message.revision = frame.revision || null;
      paintAnswer(message, false);
    } else if (frame.type === "chat.delta") {
      if (run.firstAt === null) {
        run.firstAt = performance.now();
        message.ttft_ms = run.firstAt - run.startedAt;
      }
      run.deltas += 1;
      message.content += frame.text || "";
      const seconds = (performance.now() - run.firstAt) / 1000;
      if (seconds > 0.2) message.tokens_per_s = run.deltas / seconds;
      if (!run.painting) {
        run.painting = true;
        requestAnimationFrame(function () { run.painting = false; if (!run.finished) { paintAnswer(message, false); scrollDown(); } });
      }
    } else if (frame.type === "chat.done") {
      finish(run, { finish_reason: frame.finish_reason || "stop", usage: frame.usage || {},
        ttft_ms: frame.ttft_ms, tokens_per_s: frame.tokens_per_s });
    } else if (frame.type === "chat.error") {
      finish(run, { finish_reason: "error", error: frame.error || "the chat failed" });
    }
  }

  function answerBody(run) {
    const m = run.message;
    return { role: "assistant", reply_to: run.replyTo, lane: run.lane, content: m.content, node: m.node,
      model: m.model, sha: m.sha, revision: m.revision, finish_reason: m.finish_reason, error: (m.error || "").slice(0, 512),
      ttft_ms: m.ttft_ms, tokens_per_s: m.tokens_per_s, usage: m.usage || {} };
  }

  function finish(run, result) {
    if (run.finished) return;
    run.finished = true;
    clearTimeout(run.stopTimer);
    socket.forget(run.requestId);
    const message = run.message;
    message.streaming = false;
    message.finish_reason = result.finish_reason;
    message.error = result.error || "";
    message.usage = result.usage || {};
    // The server's measurements when it sends them; else what this browser saw.
    if (result.ttft_ms !== null && result.ttft_ms !== undefined) message.ttft_ms = result.ttft_ms;
    if (result.tokens_per_s !== null && result.tokens_per_s !== undefined) message.tokens_per_s = result.tokens_per_s;
    if (S.runs[run.lane] === run) delete S.runs[run.lane];
    paintAnswer(message, true);
    updateButtons();
    if (!busy()) renderTranscript();
    api.addMessage(run.convId, answerBody(run)).then(function (saved) {
      message.id = saved.message.id;
      sidebar.refresh();
    }, function (error) {
      message.saveError = error.message;
      paintAnswer(message, false);
    });
  }

  function stopAll() {
    Object.keys(S.runs).forEach(function (lane) {
      const run = S.runs[lane];
      socket.cancel(run.requestId);
      // The server answers a cancel with chat.done (cancelled); if it never does, stop waiting.
      run.stopTimer = setTimeout(function () { finish(run, { finish_reason: "cancelled" }); }, STOP_GRACE_MS);
    });
  }

  function regenerate() {
    let index = S.messages.length - 1;
    while (index >= 0 && S.messages[index].role !== "user") index -= 1;
    if (index < 0 || busy()) return;
    const userMessage = S.messages[index];
    let params;
    try { params = readParams(); } catch (error) { showError(error.message, true); return; }
    const targets = { a: picker.get("a"), b: picker.get("b") };
    api.truncate(S.conv.id, userMessage.id).then(function () {
      S.messages = S.messages.slice(0, index + 1);
      startLanes(userMessage, targets, params);
    }, function (error) { showError("Could not regenerate: " + error.message); });
  }

  function editMessage(box, message) {
    const area = el("textarea", "pg-edit");
    area.value = message.content;
    area.rows = Math.min(10, message.content.split("\n").length + 1);
    const save = el("button", "btn btn-primary btn-sm", "Send edited");
    save.type = "button";
    const cancel = el("button", "btn btn-ghost btn-sm", "Cancel");
    cancel.type = "button";
    const actions = el("div", "pg-edit-actions");
    actions.append(el("span", "help", "Everything after this message is replaced by the new answer."), cancel, save);
    box.querySelector(".pg-text").replaceWith(area);
    box.append(actions);
    area.focus();
    cancel.addEventListener("click", renderTranscript);
    save.addEventListener("click", function () {
      if (area.value.trim()) send(area.value, message.id);
    });
  }

  // Leaving mid-answer: keep what arrived (fetch keepalive outlives the page).
  window.addEventListener("pagehide", function () {
    Object.keys(S.runs).forEach(function (lane) {
      const run = S.runs[lane];
      run.message.finish_reason = "cancelled";
      api.addMessage(run.convId, answerBody(run), { keepalive: true }).catch(function () {});
    });
  });

  // ---- wiring --------------------------------------------------------------------------------------
  $("pg-composer").addEventListener("submit", function (event) {
    event.preventDefault();
    if (!busy() && prompt.value.trim()) send(prompt.value);
  });
  prompt.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("pg-composer").requestSubmit();
    }
  });
  $("pg-stop").addEventListener("click", stopAll);
  $("pg-regenerate").addEventListener("click", regenerate);
  $("pg-new").addEventListener("click", newConversation);
  document.querySelectorAll("[data-mode-button]").forEach(function (button) {
    button.addEventListener("click", function () {
      const mode = button.getAttribute("data-mode-button");
      if (mode === S.mode) return;
      setMode(mode);
      newConversation();
    });
  });

  const linked = JSON.parse($("pg-compare-targets").textContent || "{}");
  if (linked.a) picker.set("a", linked.a);
  if (linked.b) picker.set("b", linked.b);
  setMode(S.mode);
  renderTranscript();
  const openId = root.getAttribute("data-open");
  if (openId) openConversation(Number(openId)); else sidebar.refresh();
  window.fleetPlayground = { state: S, picker: picker };
})();
