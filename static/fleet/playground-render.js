/* Playground: model output → safe HTML, and the answer cards that show it. Model output is untrusted:
   raw HTML in it is shown as text, images become a text placeholder (nothing remote is fetched), and
   DOMPurify (vendored) strips anything executable as the second line of defence. Links open in a new
   tab without access to this page. */
(function () {
  "use strict";
  if (!window.marked || !window.DOMPurify) return;

  function escapeHtml(text) {
    return String(text).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
    });
  }

  const markdown = new window.marked.Marked({
    gfm: true,
    breaks: true,
    renderer: {
      // Raw HTML in the answer is text to read, never markup to run.
      html: function (token) { return escapeHtml(token.text || token.raw || ""); },
      image: function (token) {
        const label = token.text || token.title || "image";
        return '<span class="md-image" title="Images in answers are not loaded">[image: ' + escapeHtml(label) +
          " \u2014 " + escapeHtml(token.href || "") + "]</span>";
      },
    },
  });

  const purifier = window.DOMPurify;
  const PURIFY = {
    FORBID_TAGS: ["img", "image", "picture", "source", "video", "audio", "track", "iframe", "frame", "object",
      "embed", "svg", "math", "style", "link", "meta", "base", "form", "input", "button", "textarea", "select",
      "dialog", "template"],
    FORBID_ATTR: ["style", "src", "srcset", "background", "poster", "action", "formaction", "xlink:href"],
    ALLOW_DATA_ATTR: false,
    ALLOWED_URI_REGEXP: /^(?:https?:|mailto:|#)/i,
  };
  purifier.addHook("afterSanitizeAttributes", function (node) {
    if (node.tagName === "A") {
      if (node.hasAttribute("href")) {
        node.setAttribute("target", "_blank");
        node.setAttribute("rel", "noopener noreferrer nofollow");
        node.setAttribute("referrerpolicy", "no-referrer");
      }
    }
  });

  let codeCounter = 0;

  /** Markdown text → sanitized DocumentFragment. */
  function renderMarkdown(text) {
    const html = markdown.parse(String(text || ""));
    return purifier.sanitize(html, Object.assign({ RETURN_DOM_FRAGMENT: true }, PURIFY));
  }

  /** Replace the contents of `el` with the rendered answer; code blocks get a copy button when final. */
  function renderInto(el, text, final) {
    el.replaceChildren(renderMarkdown(text));
    if (!final) return;
    el.querySelectorAll("pre > code").forEach(function (code) {
      const pre = code.parentElement;
      pre.id = "pg-code-" + (++codeCounter);
      const button = document.createElement("button");
      button.type = "button";
      button.className = "btn btn-ghost btn-sm code-copy";
      button.setAttribute("data-copy", "#" + pre.id + " > code");
      button.textContent = "Copy";
      pre.appendChild(button);
    });
  }

  function formatMs(ms) {
    if (ms === null || ms === undefined || !isFinite(ms)) return "\u2014";
    return ms >= 1000 ? (ms / 1000).toFixed(2) + " s" : Math.round(ms) + " ms";
  }

  function formatRate(rate) {
    if (rate === null || rate === undefined || !isFinite(rate)) return "\u2014";
    return rate.toFixed(rate >= 100 ? 0 : 1) + " tok/s";
  }

  function formatWhen(iso) {
    const then = new Date(iso);
    const seconds = (Date.now() - then.getTime()) / 1000;
    if (seconds < 60) return "just now";
    if (seconds < 3600) return Math.floor(seconds / 60) + " min ago";
    if (seconds < 86400) return Math.floor(seconds / 3600) + " h ago";
    return then.toLocaleDateString();
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // value → [label, badge colour], from FinishReason (fleet/playground/models.py)
  const root = document.getElementById("playground");
  const FINISH = JSON.parse((root && root.getAttribute("data-finish-reasons")) || "{}");

  /** An answer card: head (who answered), sanitized markdown body, stats (finish, TTFT, tokens/s). */
  function answerCard(message, compare) {
    const card = el("article", "pg-msg pg-answer");
    card.setAttribute("data-lane", message.lane);
    const head = el("div", "pg-msg-head");
    message.headEl = head;
    const body = el("div", "pg-md");
    message.bodyEl = body;
    const foot = el("div", "pg-stats");
    message.footEl = foot;
    card.append(head, body, foot);
    message.el = card;
    paintAnswer(message, true, compare);
    return card;
  }

  /** Repaint an answer in place; the body is re-rendered while streaming or when `full`. */
  function paintAnswer(message, full, compare) {
    if (!message.el) return;
    const who = message.node ? message.node.name : "";
    const version = message.sha ? " @ " + (message.revision || message.sha.slice(0, 10)) : "";
    const model = message.model ? message.model + version : "";
    const role = compare ? "Answer " + message.lane.toUpperCase() : "Answer";
    message.headEl.replaceChildren(el("span", "pg-role", role),
      el("span", "muted small", [who, model].filter(Boolean).join(" \u00b7 ") ||
        (message.streaming ? "routing\u2026" : "")));
    if (full || message.streaming) renderInto(message.bodyEl, message.content, !message.streaming);
    message.el.classList.toggle("streaming", Boolean(message.streaming));
    const stats = [];
    if (message.streaming) stats.push(el("span", "badge badge-purple", "streaming"));
    else if (message.finish_reason) {
      const [label, colour] = FINISH[message.finish_reason] || [message.finish_reason, "grey"];
      stats.push(el("span", "badge badge-" + colour, label));
    }
    stats.push(el("span", "pg-stat", "TTFT " + formatMs(message.ttft_ms)));
    stats.push(el("span", "pg-stat", formatRate(message.tokens_per_s)));
    const tokens = message.usage && message.usage.completion_tokens;
    if (tokens !== null && tokens !== undefined) stats.push(el("span", "pg-stat", tokens + " tokens"));
    if (message.error) stats.push(el("span", "field-error pg-stat-error", message.error));
    if (message.saveError) stats.push(el("span", "note", "not saved: " + message.saveError));
    message.footEl.replaceChildren.apply(message.footEl, stats);
  }

  window.fleetRender = { renderMarkdown: renderMarkdown, renderInto: renderInto, escapeHtml: escapeHtml,
    formatMs: formatMs, formatRate: formatRate, formatWhen: formatWhen, el: el, answerCard: answerCard,
    paintAnswer: paintAnswer };
})();
