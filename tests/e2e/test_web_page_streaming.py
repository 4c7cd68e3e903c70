"""The page streams honestly (issue 11), in Chromium against a real server whose scripted model
calls tools natively: waiting is visible and says on what; text the model wrote before a tool
call moves into that tool's step (`narration`); a cut-off answer says so and can be continued;
Stop keeps the half; a reload resumes the run instead of cancelling it, showing every
character once. Reopened chats draw their stored steps as the live answer drew them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from browser_fixture import (
    ROOT,
    PageFactory,
    ask,
    last_answer,
    wait_for_end,
)
from server_fixture import LiveServer, make_app, wait_until
from tokenrelay.backends.base import FinishChunk, ModelChunk, ToolCallChunk
from tokenrelay.messages import Message
from tokenrelay.testing import ScriptedBackend

try:
    from playwright.sync_api import expect
except ImportError:  # pragma: no cover - scripts/browser-deps installs it
    pass

NARRATION = "Let me work that out with the calculator, one careful step at a time."
PAUSE = [""] * 6  # empty pieces: the paced model "thinks" before it writes
CUT = ["日本語の", "回答は", "ここで", "途中で"]
REST = ["切れましたが、", "続きです。"]
CONTINUE_JA = "回答が途中で切れました。繰り返さずに、止まったところからそのまま続けてください。"
HALF = [f"word{i} " for i in range(60)]


def words(text: str) -> list[str]:
    return re.findall(r"\S+\s*", text)


def reply(messages: Sequence[Message]) -> list[str | ModelChunk]:
    question = next(m.content for m in reversed(messages) if m.role == "user")
    if messages[-1].role == "tool":
        return [*PAUSE, "It is ", "**42**", "."]
    if "narrate" in question:
        pause = PAUSE if "wait" in question else []
        return [*pause, *words(NARRATION), ToolCallChunk(0, "c1", "Calculator", '{"expression": "6*7"}')]
    if question == CONTINUE_JA:
        return REST
    if "切" in question:
        return [*CUT, FinishChunk("length")]
    if "cut" in question:
        return ["An English answer ", "that stops ", "right in the", FinishChunk("length")]
    if "half" in question:
        return HALF
    return [f"You said: {question}"]


@pytest.fixture(scope="module")
def backend() -> ScriptedBackend:
    return ScriptedBackend(reply, native_tools=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, backend: ScriptedBackend) -> Iterator[LiveServer]:
    db = tmp_path_factory.mktemp("web-streaming") / "db.sqlite"
    with LiveServer(make_app(db, backend)) as live:
        yield live


@pytest.fixture(autouse=True)
def _pace(backend: ScriptedBackend) -> Iterator[None]:
    yield
    backend.tokens_per_second = None


def session_of(page: Any) -> str:
    found = re.search(r"[?&]chat=([\w-]+)", page.url)
    assert found, page.url
    return found.group(1)


# -- waiting and narration ---------------------------------------------------------------------


def test_waiting_is_visible_and_narration_moves_into_the_tool_step(
    open_page: PageFactory, backend: ScriptedBackend, server: LiveServer, tmp_path: Path
) -> None:
    backend.tokens_per_second = 5
    page = open_page()
    page.evaluate(WATCH_MOVES)
    ask(page, "wait, then narrate 6*7")
    turn = page.get_by_test_id("turn").last
    progress = turn.get_by_test_id("progress")
    answer = last_answer(page)
    # before the first token: the model is working, and the page says so
    expect(progress).to_be_visible()
    expect(progress).to_have_text("Thinking…")
    assert answer.inner_text() == ""
    # the model speaks before it acts: that text streams into the answer area first...
    expect(answer).to_contain_text("Let me work")
    expect(progress).to_be_hidden()
    # ...and moves into the tool step once it turns out to be narration: the nodes on screen
    # move (nothing is drawn twice, nothing flickers)
    narration = turn.get_by_test_id("narration")
    expect(narration).to_have_text(NARRATION)
    assert page.evaluate("window.__narrationNodes") == ["moved"]
    expect(turn.get_by_test_id("tool-step")).to_have_count(1)
    group = turn.get_by_test_id("step-group")
    expect(group).to_have_count(1)
    order = group.evaluate("g => [...g.children].map(c => c.dataset.testid).join(',')")
    assert order == "narration,tool-step"  # narration above the call it led to
    # the tool ran; the model reads its result before answering
    expect(progress).to_have_text("Reading the result of Calculator…")
    assert answer.inner_text() == ""
    wait_for_end(page)
    expect(answer).to_have_text("It is 42.")
    expect(progress).to_be_hidden()
    expect(turn.get_by_test_id("run-status")).to_contain_text("Done in")
    out = ROOT / "docs" if os.environ.get("TOKENRELAY_WRITE_SCREENSHOTS") == "1" else tmp_path
    page.screenshot(path=str(out / "page-narration.png"))

    # the stored turn says the same, and a reopened chat draws it the way the live answer looked
    stored = httpx.get(f"{server.url}/sessions/{session_of(page)}").json()["turns"][-1]
    assert stored["answer"] == "It is **42**."
    assert [step["type"] for step in stored["steps"]] == ["narration", "tool"]
    live_shape = turn.evaluate(SHAPE)
    again = open_page(url=page.url)
    reopened = again.get_by_test_id("turn").last
    expect(reopened.get_by_test_id("narration")).to_have_text(NARRATION)
    assert reopened.evaluate(SHAPE) == live_shape


WATCH_MOVES = """() => {
  const shown = new WeakSet();
  window.__narrationNodes = [];
  new MutationObserver((records) => {
    for (const record of records) for (const node of record.addedNodes) {
      if (!(node instanceof HTMLElement) || !node.classList.contains("md-block")) continue;
      if (record.target.dataset.testid === "answer") shown.add(node);
      if (record.target.dataset.testid === "narration")
        window.__narrationNodes.push(shown.has(node) ? "moved" : "drawn again");
    }
  }).observe(document.getElementById("messages"), { childList: true, subtree: true });
}"""


SHAPE = """turn => [...turn.querySelectorAll('.assistant [data-testid]')]
  .filter(e => e.offsetParent !== null && !e.closest('.turn-footer'))
  .map(e => e.dataset.testid + ':' + (e.dataset.testid === 'tool-step' ? e.dataset.state
    : e.innerText.trim()))"""


FOLD = """async ([events, flush]) => {
  const { createTurn } = await import("/static/turn.js");
  const { createRun, handleEvent } = await import("/static/runs.js");
  const turn = createTurn("unit");
  const run = createRun(turn, "r_unit");
  const seen = [];
  let id = 0;
  for (const [event, data] of events) {
    handleEvent(run, { event, data, id: id++ });
    if (flush) await new Promise(requestAnimationFrame);
    seen.push({
      answer: turn.answer.innerText.trim(),
      narration: [...turn.el.querySelectorAll('[data-testid=narration]')].map(n => n.innerText.trim()),
      progress: turn.progress.hidden ? null : turn.progress.innerText.trim(),
      tools: turn.el.querySelectorAll('[data-testid=tool-step]').length,
    });
  }
  turn.el.remove();
  return seen;
}"""


@pytest.mark.parametrize("flush", [True, False], ids=["painted", "same-frame"])
def test_narration_folding_follows_the_event_contract(open_page: PageFactory, flush: bool) -> None:
    page = open_page()
    events: list[tuple[str, dict[str, Any]]] = [
        ("run_started", {"run_id": "r_unit"}),
        ("answer_delta", {"text": "Kept. "}),  # answer text before the narration's own start
        ("narration", {"text": "no such tail"}),  # not the end of the answer: ignored
        ("answer_delta", {"text": "Checking.\n\n"}),
        ("narration", {"text": "Checking.\n\n"}),
        ("tool_call_started", {"call_id": "c1", "name": "Search", "arguments": {"q": "x"}}),
        ("tool_call_finished", {"call_id": "c1", "name": "Search", "result": "found"}),
        ("answer_delta", {"text": "Done."}),
        ("run_finished", {"answer": "Kept. Done.", "finish_reason": "stop"}),
    ]
    seen = page.evaluate(FOLD, [events, flush])
    assert seen[0]["progress"] == "Thinking…"
    assert seen[2]["narration"] == []  # a narration that does not match is left alone
    # the answer keeps what came before the narration; the run is at work again after it
    assert seen[4] == {"answer": "Kept.", "narration": ["Checking."], "progress": "Thinking…", "tools": 0}
    assert seen[5]["progress"] == "Running the tool Search…"
    assert seen[8] == {"answer": "Kept. Done.", "narration": ["Checking."], "progress": None, "tools": 1}

    # the usual shape: nothing but narration before the call, so the progress line says what runs
    plain: list[tuple[str, dict[str, Any]]] = [
        ("run_started", {"run_id": "r_unit"}),
        ("answer_delta", {"text": "Let me look.\n\n"}),
        ("narration", {"text": "Let me look.\n\n"}),
        ("tool_call_started", {"call_id": "c1", "name": "Search", "arguments": "{}"}),
        ("tool_call_finished", {"call_id": "c1", "name": "Search", "error": "offline"}),
        ("answer_delta", {"text": "Sorry."}),
    ]
    seen = page.evaluate(FOLD, [plain, flush])
    assert [s["progress"] for s in seen] == [
        "Thinking…",
        None if flush else "Thinking…",  # unpainted text does not count as shown yet
        "Thinking…",
        "Running the tool Search…",
        "Reading the result of Search…",
        None if flush else "Reading the result of Search…",
    ]
    assert seen[2]["answer"] == "" and seen[2]["narration"] == ["Let me look."]

    # white space before a call is re-labelled too, but there is nothing to show above it
    blank: list[tuple[str, dict[str, Any]]] = [
        ("run_started", {"run_id": "r_unit"}),
        ("answer_delta", {"text": "\n"}),
        ("narration", {"text": "\n"}),
        ("tool_call_started", {"call_id": "c1", "name": "Search", "arguments": "{}"}),
    ]
    seen = page.evaluate(FOLD, [blank, flush])
    assert seen[-1] == {"answer": "", "narration": [], "progress": "Running the tool Search…", "tools": 1}


# -- cut off, stop, reload -------------------------------------------------------------------------


def test_a_cut_off_answer_says_so_and_continue_works(
    open_page: PageFactory, backend: ScriptedBackend, server: LiveServer
) -> None:
    page = open_page()
    ask(page, "日本語で説明して、切れても")
    wait_for_end(page)
    first = page.get_by_test_id("turn").last
    expect(first.get_by_test_id("answer")).to_have_text("".join(CUT))
    expect(first.get_by_test_id("run-status")).to_have_text("Cut off —")
    button = first.get_by_test_id("continue")
    expect(button).to_have_text("continue")
    button.click()
    wait_for_end(page)
    # the follow-up asks, in the chat's language, to go on exactly where the answer stopped
    assert backend.calls[-1].messages[-1].content == CONTINUE_JA
    assert "".join(CUT) in [m.content for m in backend.calls[-1].messages]  # the cut answer is history
    expect(page.get_by_test_id("turn")).to_have_count(2)
    expect(last_answer(page)).to_have_text("".join(REST))
    expect(page.get_by_test_id("run-status").last).to_contain_text("Done in")
    expect(button).to_be_hidden()
    turns = httpx.get(f"{server.url}/sessions/{session_of(page)}").json()["turns"]
    assert [t["finish_reason"] for t in turns] == ["length", "stop"]

    # reopened, in Japanese: the cut turn still says so; only the last turn offers to continue
    again = open_page(url=page.url, locale="ja-JP")
    cut = again.get_by_test_id("turn").first
    expect(cut.get_by_test_id("run-status")).to_have_text("途中で切れました —")
    expect(cut.get_by_test_id("continue")).to_be_hidden()


def test_the_last_cut_off_turn_offers_continue_after_reopening(open_page: PageFactory) -> None:
    page = open_page(locale="ja-JP")
    ask(page, "cut please")
    wait_for_end(page)
    again = open_page(url=page.url, locale="ja-JP")
    button = again.get_by_test_id("continue")
    expect(button).to_have_text("続ける")
    button.click()
    wait_for_end(again)
    expect(again.locator(".turn .bubble").last).to_have_text(
        "Your answer was cut off. Continue exactly where you stopped, without repeating anything."
    )  # an English chat (the question's language), although the page is in Japanese


def test_stop_after_half_keeps_the_half_and_says_so(
    open_page: PageFactory, backend: ScriptedBackend, server: LiveServer
) -> None:
    backend.tokens_per_second = 20
    page = open_page()
    ask(page, "half, please")
    answer = last_answer(page)
    expect(answer).to_contain_text("word10")
    call = backend.calls[-1]
    page.get_by_test_id("stop-button").click()
    assert wait_until(lambda: call.abandoned, timeout=5), "the model kept generating"
    wait_for_end(page)
    status = page.get_by_test_id("run-status").last
    expect(status).to_have_text("Stopped.")
    expect(status).to_have_attribute("data-state", "interrupted")
    expect(page.get_by_test_id("message-input")).to_be_focused()  # focus back where it is needed
    shown = answer.inner_text()
    assert shown and "".join(HALF).startswith(shown) and len(shown) < len("".join(HALF).strip())
    stored = httpx.get(f"{server.url}/sessions/{session_of(page)}").json()["turns"][-1]
    assert stored["status"] == "interrupted"
    assert stored["answer"].strip() == shown  # the half on screen is the half stored

    again = open_page(url=page.url)
    expect(last_answer(again)).to_have_text(shown)
    expect(again.get_by_test_id("run-status").last).to_have_text("Interrupted")


def test_a_reload_mid_answer_resumes_the_run_and_shows_every_character_once(
    open_page: PageFactory, backend: ScriptedBackend
) -> None:
    backend.tokens_per_second = 3
    page = open_page()
    resumed: list[str | None] = []

    def record(request: Any) -> None:
        if re.search(r"/runs/[^/]+/events$", request.url):
            resumed.append(request.headers.get("last-event-id"))

    page.on("request", record)
    ask(page, "narrate 6*7, then reload")
    expect(page.get_by_test_id("tool-step")).to_have_count(1)  # past the narration
    calls = len(backend.calls)
    call = backend.calls[-1]
    url = page.url
    page.reload()
    expect(page.locator("body[data-ready='1']")).to_have_count(1)
    assert page.url == url  # the chat's URL reopens the chat
    turn = page.get_by_test_id("turn").last
    expect(turn.locator(".bubble")).to_have_text("narrate 6*7, then reload")
    expect(page.get_by_test_id("stop-button")).to_be_visible()  # still running: followed live
    wait_for_end(page)
    expect(page.get_by_test_id("turn")).to_have_count(1)
    expect(turn.get_by_test_id("narration")).to_have_text(NARRATION)
    expect(turn.get_by_test_id("tool-step")).to_have_count(1)
    expect(last_answer(page)).to_have_text("It is 42.")
    assert resumed == [None]  # a fresh page replays the run from its first event
    assert not call.abandoned and call.finished  # the reload did not cancel the model
    assert len(backend.calls) == calls  # nor start it again
