"""The playground page in Debian Chromium against a real Daphne: tokens stream in, Stop sends chat.cancel,
a reload finds the conversation; edit and regenerate; compare streams two answers side by side; untrusted
markup in an answer stays inert. Screenshots go to /tmp/play-*.png."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.request

import pytest

from tests.browser import launch, needs_chromium
from tests.integration.harness import Stack, wait_until
from tests.playground.fake_chat import REPO, SHA_V1, SHA_V2, FakeAgent

PASSWORD = "playground-test-password-1"
WAIT = 20000  # ms: generous limits for a shared 2-core machine

pytestmark = [pytest.mark.browser, pytest.mark.integration, needs_chromium]


def _enroll(base: str, token: str, name: str) -> dict:
    body = json.dumps({"token": token, "hostname": f"{name}.lab", "name": name}).encode()
    request = urllib.request.Request(f"{base}/api/agents/enroll", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


@pytest.fixture(scope="module")
def base_url(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("playground")
    stack = Stack(tmp, offline_after=5)  # the real server; its nodes are fakes on the real agent protocol
    stack.start()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    agents: list[FakeAgent] = []
    try:
        stack.manage("createoperator", "olivia", "--role", "operator", "--password", PASSWORD)
        for name, sha in (("fake-gpu-1", SHA_V1), ("fake-gpu-2", SHA_V2)):  # one node per version
            enrolled = _enroll(stack.url(), stack.manage("createenrollmenttoken", "--expires", "10m"), name)
            agent = FakeAgent(stack.url(), enrolled["secret"], f"{name}.lab", [(REPO, sha)])
            agents.append(asyncio.run_coroutine_threadsafe(agent.start(), loop).result(15))
        yield stack.url()
    finally:
        for agent in agents:
            asyncio.run_coroutine_threadsafe(agent.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        stack.stop()


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        chromium = launch(p)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def session(browser, base_url) -> dict:
    """Log in once through the real form; each test's browser context starts from these cookies."""
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{base_url}/accounts/login/?next=/playground/")
    page.fill("input[name=username]", "olivia")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("#playground", timeout=WAIT)
    state = context.storage_state()
    context.close()
    return state


@pytest.fixture
def page(browser, base_url, session):
    """An operator on the playground; records page errors, dialogs, sent chat frames, requests."""
    context = browser.new_context(viewport={"width": 1400, "height": 900}, storage_state=session)
    page = context.new_page()
    page.errors, page.dialogs, page.sent, page.requests = [], [], [], []
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    page.on("dialog", lambda dialog: (page.dialogs.append(dialog.message),
                                      dialog.accept() if dialog.type == "confirm" else dialog.dismiss()))
    page.on("websocket", lambda ws: ws.on("framesent", lambda payload: page.sent.append(payload)))
    page.on("request", lambda request: page.requests.append(request.url))
    page.goto(f"{base_url}/playground/")
    _ready(page)
    yield page
    context.close()
    assert not page.errors, page.errors


def _ready(page) -> None:
    page.wait_for_selector("#pg-socket[data-state=live]", timeout=WAIT)
    _until(page, "document.querySelector('#pg-target-a').value.includes('model')", timeout=WAIT)


def _send(page, text: str) -> None:
    page.fill("#pg-prompt", text)
    page.press("#pg-prompt", "Enter")


def _until(page, expression: str, timeout: float) -> None:
    """Wait for a JS expression; as a function, since the page's CSP forbids evaluating strings."""
    page.wait_for_function(f"() => ({expression})", timeout=timeout)


def _wait_finished(page, answers: int) -> None:
    _until(page,
        f"document.querySelectorAll('.pg-answer').length === {answers} && "
        "!document.querySelector('.pg-answer.streaming') && "
        "Array.from(document.querySelectorAll('.pg-answer')).every(a => a.querySelector('.pg-stats .badge'))",
        timeout=WAIT)


def _saved(page) -> dict:
    """The open conversation as the history API has it."""
    return page.evaluate("""() => fetch('/playground/api/conversations/' + fleetPlayground.state.conv.id + '/')
        .then(r => r.json())""")


def _saved_with(page, count: int) -> dict:
    """Wait until the open conversation has ``count`` saved messages (answers save when they finish)."""
    def complete() -> dict | None:
        conversation = _saved(page)
        return conversation if len(conversation["messages"]) == count else None

    return wait_until(complete, WAIT / 1000, f"{count} saved messages")


def test_stream_stop_reload_finds_the_conversation(page, base_url) -> None:
    inline = page.evaluate("Array.from(document.scripts).filter(s => !s.src && s.type !== 'application/json').length")
    assert inline == 0  # a Content-Security-Policy without 'unsafe-inline' must not break the page
    _send(page, "Tell me a slow story")
    _until(page, "(document.querySelector('.pg-answer.streaming .pg-md') || {})"
                           ".textContent?.includes('word5')", timeout=WAIT)
    stats = page.text_content(".pg-answer .pg-stats")
    assert "streaming" in stats and "TTFT" in stats and "TTFT \u2014" not in stats and "tok/s" in stats
    page.screenshot(path="/tmp/play-streaming.png")

    page.click("#pg-stop")
    page.wait_for_selector(".pg-answer:not(.streaming) .pg-stats .badge-grey", timeout=WAIT)
    cancels = [json.loads(f) for f in page.sent if '"chat.cancel"' in f]
    starts = [json.loads(f) for f in page.sent if '"chat.start"' in f]
    assert len(starts) == 1 and [c["request_id"] for c in cancels] == [starts[0]["request_id"]]
    assert starts[0]["target"]["model"] == REPO and starts[0]["params"]["max_tokens"] == 512
    partial = page.text_content(".pg-answer .pg-md")
    assert "word0" in partial and "word399" not in partial
    assert page.text_content(".pg-answer .pg-stats .badge") == "stopped"

    _until(page, "document.querySelector('.pg-conversation.active .pg-conversation-meta')"
                           "?.textContent.startsWith('2 msg')", timeout=WAIT)
    saved = _saved_with(page, 2)
    assert [m["role"] for m in saved["messages"]] == ["user", "assistant"]
    assert saved["messages"][1]["finish_reason"] == "cancelled" and "word0" in saved["messages"][1]["content"]
    assert saved["messages"][1]["node"]["name"] == "fake-gpu-1"

    page.reload()
    _ready(page)
    page.wait_for_selector(".pg-answer .pg-stats .badge-grey", timeout=WAIT)
    assert page.text_content(".pg-user .pg-text") == "Tell me a slow story"
    assert page.text_content(".pg-answer .pg-md").strip() == saved["messages"][1]["content"].strip()
    assert page.text_content(".pg-conversation.active .pg-conversation-title") == "Tell me a slow story"
    page.screenshot(path="/tmp/play-history.png")


def test_reload_mid_answer_keeps_the_conversation(page) -> None:
    _send(page, "a slow answer, then reload")
    _until(page, "(document.querySelector('.pg-answer.streaming .pg-md') || {})"
                           ".textContent?.includes('word3')", timeout=WAIT)
    conversation_id = page.evaluate("fleetPlayground.state.conv.id")
    page.reload()
    _ready(page)
    page.wait_for_selector(".pg-user", timeout=WAIT)
    assert page.evaluate("fleetPlayground.state.conv.id") == conversation_id
    assert page.text_content(".pg-user .pg-text") == "a slow answer, then reload"
    saved = _saved_with(page, 2)  # what had streamed is kept: saved as stopped as the page went away
    assert saved["messages"][1]["finish_reason"] == "cancelled" and "word3" in saved["messages"][1]["content"]


def test_markdown_edit_and_regenerate(page) -> None:
    page.fill("#pg-system", "Be brief.")
    _send(page, "hello")
    _wait_finished(page, 1)
    assert page.text_content(".pg-answer .pg-md strong") == "hello"
    assert page.locator(".pg-answer .pg-md li").count() == 2
    assert page.text_content(".pg-answer .pg-md pre code").strip() == "print('hello')"
    assert "(turn 1, system: Be brief.)" in page.text_content(".pg-answer .pg-md")
    assert page.text_content(".pg-answer .pg-stats .badge") == "finished"
    page.screenshot(path="/tmp/play-normal.png")

    page.click(".pg-user .pg-msg-head button")  # Edit
    page.fill(".pg-edit", "hello again")
    page.click("text=Send edited")
    _until(page, "document.querySelector('.pg-answer .pg-md strong')?.textContent === 'hello again'",
                           timeout=WAIT)
    _wait_finished(page, 1)
    assert page.locator(".pg-user").count() == 1

    _send(page, "and more")
    _wait_finished(page, 2)
    assert "(turn 2" in page.locator(".pg-answer").nth(1).text_content()
    first_answer_id = _saved_with(page, 4)["messages"][3]["id"]

    page.evaluate("document.querySelectorAll('.pg-answer').forEach(a => a.setAttribute('data-old', ''))")
    page.click("#pg-regenerate")
    _until(page, "!document.querySelector('.pg-answer[data-old]')", timeout=WAIT)
    _wait_finished(page, 2)
    wait_until(lambda: _saved_with(page, 4)["messages"][3]["id"] != first_answer_id, WAIT / 1000, "a new answer")
    contents = [(m["role"], m["content"][:24]) for m in _saved(page)["messages"]]
    assert contents == [("user", "hello again"), ("assistant", "You said: **hello again*"),
                        ("user", "and more"), ("assistant", "You said: **and more** (")]

    # Rename inline, then delete (confirmed) from the history list.
    conversation_id = page.evaluate("fleetPlayground.state.conv.id")
    item = f".pg-conversation[data-conversation-id='{conversation_id}']"
    page.click(f"{item} [data-rename]")
    page.fill(".pg-rename", "Greetings")
    page.press(".pg-rename", "Enter")
    _until(page, f"document.querySelector(\"{item} .pg-conversation-title\")?.textContent === 'Greetings'",
                           timeout=WAIT)
    assert _saved(page)["title"] == "Greetings"
    page.click(f"{item} [data-delete]")
    # The styled <dialog> asks (never the browser's confirm()), naming the conversation.
    page.wait_for_selector("dialog.confirm-dialog[open]", timeout=WAIT)
    assert "Greetings" in page.text_content("dialog.confirm-dialog .confirm-text")
    page.click("dialog.confirm-dialog [data-confirm-ok]")
    page.wait_for_selector(item, state="detached", timeout=WAIT)
    assert not page.dialogs
    assert page.evaluate("fleetPlayground.state.conv") is None and not page.locator(".pg-answer").count()
    status = page.evaluate(f"fetch('/playground/api/conversations/{conversation_id}/').then(r => r.status)")
    assert status == 404


def test_compare_streams_two_versions_side_by_side(page, base_url) -> None:
    page.goto(f"{base_url}/playground/?compare=1&a={REPO}@{SHA_V1}&b={REPO}@{SHA_V2}")
    _ready(page)
    assert json.loads(page.input_value("#pg-target-a")) == {"model": REPO, "sha": SHA_V1}
    assert json.loads(page.input_value("#pg-target-b")) == {"model": REPO, "sha": SHA_V2}

    _send(page, "a slow comparison")
    _until(page, "['a', 'b'].every(l => (document.querySelector("
                           "`.pg-answer.streaming[data-lane=${l}] .pg-md`) || {}).textContent?.includes('word3'))",
                           timeout=WAIT)
    boxes = [page.locator(f".pg-answer[data-lane={lane}]").bounding_box() for lane in "ab"]
    assert boxes[0]["x"] + boxes[0]["width"] <= boxes[1]["x"] and abs(boxes[0]["y"] - boxes[1]["y"]) < 2
    page.click("#pg-stop")
    _wait_finished(page, 2)

    _send(page, "Which version are you?")
    _wait_finished(page, 4)
    heads = [page.locator(f".pg-answer[data-lane={lane}] .pg-msg-head").last.text_content() for lane in "ab"]
    assert "fake-gpu-1" in heads[0] and "fake-gpu-2" in heads[1]  # the node serving each pinned version
    page.screenshot(path="/tmp/play-compare.png")
    saved = _saved_with(page, 6)
    assert saved["mode"] == "compare" and saved["target_b"] == {"model": REPO, "sha": SHA_V2}
    assert [m["role"] for m in saved["messages"]] == ["user", "assistant", "assistant"] * 2
    answered = sorted((m["lane"], m["sha"], m["node"]["name"]) for m in saved["messages"] if m["role"] == "assistant")
    assert answered == [("a", SHA_V1, "fake-gpu-1")] * 2 + [("b", SHA_V2, "fake-gpu-2")] * 2


def test_untrusted_markup_in_an_answer_stays_inert(page, base_url) -> None:
    _send(page, "show me xss")
    _wait_finished(page, 1)
    for check in (lambda: None, lambda: (page.reload(), _ready(page), _wait_finished(page, 1))):
        check()  # as streamed, then as re-rendered from the saved history
        inert = page.evaluate("""() => {
            const t = document.getElementById('pg-transcript');
            return {
              scripts: t.querySelectorAll('script').length,
              images: t.querySelectorAll('img, svg, iframe, object, embed').length,
              handlers: Array.from(t.querySelectorAll('*')).filter(
                  e => Array.from(e.attributes).some(a => a.name.startsWith('on'))).length,
              links: Array.from(t.querySelectorAll('.pg-md a')).map(a => [a.textContent, a.getAttribute('href'),
                  a.getAttribute('target'), a.getAttribute('rel')]),
              text: t.querySelector('.pg-answer .pg-md').textContent,
            };
        }""")
        assert inert["scripts"] == 0 and inert["images"] == 0 and inert["handlers"] == 0, inert
        assert "<img src=x onerror=alert(1)>" in inert["text"] and "<script>alert(1)</script>" in inert["text"]
        assert "[image: x \u2014 http://example.com/x.png]" in inert["text"]
        links = {text: rest for text, *rest in inert["links"]}
        assert links["safe link"] == ["http://example.com/page", "_blank", "noopener noreferrer nofollow"]
        assert links.get("bad link", [None])[0] is None  # javascript: URL dropped
        assert "raw anchor" not in links  # raw HTML is shown as text, never as markup
    assert not page.dialogs, page.dialogs
    assert not [url for url in page.requests if not url.startswith(base_url)], page.requests


def test_a_failed_answer_says_why_and_is_kept(page) -> None:
    page.evaluate("fleetPlayground.picker.set('a', {model: 'org/missing'})")
    assert "not offered now" in page.text_content("#pg-target-a option:checked")
    _send(page, "anyone there?")
    page.wait_for_selector(".pg-answer .pg-stats .badge-red", timeout=WAIT)
    assert page.text_content(".pg-answer .pg-stats .badge") == "failed"
    assert "org/missing" in page.text_content(".pg-answer .pg-stat-error")
    saved = _saved_with(page, 2)
    assert saved["target"] == {"model": "org/missing"}
    assert saved["messages"][1]["finish_reason"] == "error" and "org/missing" in saved["messages"][1]["error"]
