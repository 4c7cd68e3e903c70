"""The web page in a real browser: headless Chromium (Debian's package) driven by Playwright,
against a real uvicorn server with the scripted backend (fixtures: tests/browser_fixture.py).

The first tests check the shipped files and need no browser.

`TOKENRELAY_WRITE_SCREENSHOTS=1` makes the screenshot tests (here and in the other
test_web_page_*.py modules) write their pictures into docs/ (the README's and docs/page.md's);
otherwise they write to a temporary folder.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from browser_fixture import (
    ROOT,
    STATIC,
    TIMEOUT_MS,
    PageFactory,
    ask,
    last_answer,
    wait_for_end,
)
from replies import final
from server_fixture import LiveServer, make_app, wait_until
from tokenrelay.messages import Message
from tokenrelay.presets import DEFAULT_PRESETS
from tokenrelay.testing import ScriptedBackend

try:
    from playwright.sync_api import Browser, expect
except ImportError:  # pragma: no cover - scripts/browser-deps installs it
    pass


# -- the scripted model ----------------------------------------------------------------------


STREAMED = "Streaming works: " + " ".join(f"word{i}" for i in range(40)) + "."
FLOWCHART = "flowchart TD\n    A[Request] --> B[Agent]\n    B --> C[Answer]"
LIVE_DIAGRAM = (
    "Here is the flow:\n\n```mermaid\n" + FLOWCHART + "\n```\n\n" + "The diagram above is drawn. " * 40
)
# the seed's own flowchart label, which Mermaid cannot parse
BAD_DIAGRAM_SOURCE = "flowchart TD A -->|callbacks=[Callback]]| G"
BAD_DIAGRAM = "Before.\n\n```mermaid\n" + BAD_DIAGRAM_SOURCE + "\n```\n\nAfter the diagram."
XSS = (
    'Careful: <img src=x onerror="window.__xss=1"> and <script>window.__xss=2</script> '
    "and [a link](javascript:window.__xss=3) and <b data-testid=retry data-i18n=send>a fake button</b> "
    "stay inert."
)
SEQUENCE = """sequenceDiagram
    participant ユーザー
    participant フロントエンド
    participant バックエンド
    participant LLM
    ユーザー->>フロントエンド: リクエスト送信
    フロントエンド->>バックエンド: リクエスト転送
    activate バックエンド
    バックエンド->>LLM: ストリーミングリクエスト
    activate LLM
    loop トークン生成中
        LLM-->>バックエンド: ストリーミングトークン
        バックエンド-->>フロントエンド: ストリーミングデータ
    end
    フロントエンド->>ユーザー: ストリーミング応答送信
    deactivate LLM
    deactivate バックエンド"""
SEQUENCE_ANSWER = (
    "処理フローをシーケンス図にしました。\n\n```mermaid\n" + SEQUENCE + "\n```\n\n"
    "- **フロントエンド**は `fetch` とストリームリーダーでトークンを受け取り、その場で表示します。\n"
    "- **バックエンド**は LLM の出力をトークンごとに SSE で転送します。"
)
# the seed's request for this diagram, and a stand-in for the tutorial it was asked about
SEED_QUESTION = (
    "処理フローをmermaidでシーケンス図にしてください。"
    "participantは、ユーザー、フロントエンド、バックエンド、LLMとしてください。"
)
SEED_DOCUMENT = (
    "# LLMの応答をストリーミングする\n\n"
    "FastAPIのStreamingResponseとコールバックで、LLMが生成したトークンを逐次ブラウザへ返す。\n"
)
LONG = "This answer is long and slow, so there is time to stop it. " * 8

#: question keyword -> the model's reply
SCRIPT: dict[str, str] = {
    "stream please": final(STREAMED),
    "live diagram": final(LIVE_DIAGRAM),
    "broken diagram": final(BAD_DIAGRAM),
    "inject": final(XSS),
    "シーケンス図": final(SEQUENCE_ANSWER),
    "sequence diagram": final(SEQUENCE_ANSWER),
    "slow": final(LONG),
    "calculate": json.dumps({"action": "Calculator", "action_input": "2+2"}),
}


def reply(messages: Sequence[Message]) -> str:
    last = messages[-1].content
    if last.startswith("TOOL RESPONSE"):
        return final("2 + 2 is **4**.")
    for keyword, answer in SCRIPT.items():
        if keyword in last:
            return answer
    return final(f"You said: {last}")


# -- files shipped with the package (no browser) ------------------------------------------------


def test_page_files_ship_inside_the_package() -> None:
    for name in ("index.html", "app.css", "app.js", "dom.js", "i18n.js", "markdown.js", "sse.js"):
        assert (STATIC / name).is_file(), name
    for module in STATIC.glob("*.js"):  # small modules, one concern each
        assert len(module.read_text(encoding="utf-8").splitlines()) <= 400, module.name
    vendor = STATIC / "vendor"
    for path in (
        "marked/marked.esm.js",
        "marked/LICENSE",
        "dompurify/purify.min.js",
        "dompurify/LICENSE",
        "mermaid/mermaid.esm.min.mjs",
        "mermaid/LICENSE",
        "mermaid/THIRD_PARTY_LICENSES.txt",
        "highlight/highlight.min.js",
        "highlight/github.min.css",
        "highlight/github-dark.min.css",
        "highlight/LICENSE",
    ):
        assert (vendor / path).is_file(), path
    too_big = [p for p in vendor.rglob("*") if p.is_file() and p.stat().st_size >= 5 * 1024 * 1024]
    assert not too_big


def test_page_loads_nothing_from_another_host() -> None:
    html = (STATIC / "index.html").read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    imports = []
    for script in STATIC.glob("*.js"):
        source = script.read_text(encoding="utf-8")
        imports += re.findall(r"""(?:from|import)\s*\(?\s*["']([^"']+)["']""", source)
        source = source.replace('"http://www.w3.org/2000/svg"', "")  # the SVG namespace: a name
        assert "http://" not in source and "https://" not in source
    assert "./vendor/mermaid/mermaid.esm.min.mjs" in imports
    assert all(spec.startswith("./") for spec in imports), imports


# -- the server and the browser ------------------------------------------------------------------


@pytest.fixture(scope="module")
def backend() -> ScriptedBackend:
    return ScriptedBackend(reply)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, backend: ScriptedBackend) -> Iterator[LiveServer]:
    db = tmp_path_factory.mktemp("web") / "db.sqlite"
    with LiveServer(make_app(db, backend)) as live:
        yield live


@pytest.fixture(autouse=True)
def _pace(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "backend" in request.fixturenames:
        request.getfixturevalue("backend").tokens_per_second = None


# -- chat -----------------------------------------------------------------------------------------


def test_answer_grows_in_the_dom_before_the_run_ends(
    open_page: PageFactory, backend: ScriptedBackend
) -> None:
    backend.tokens_per_second = 40
    page = open_page()
    ask(page, "stream please")
    answer = last_answer(page)
    lengths: list[int] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and page.get_by_test_id("stop-button").is_visible():
        lengths.append(len(answer.inner_text()))
        time.sleep(0.05)
    wait_for_end(page)
    expect(answer).to_have_text(STREAMED)
    partial = sorted({n for n in lengths if 0 < n < len(STREAMED)})
    assert len(partial) >= 3, f"the answer did not grow in steps: {lengths}"
    assert lengths == sorted(lengths)


def test_tool_call_is_a_step_and_reasoning_is_hidden(open_page: PageFactory) -> None:
    page = open_page()
    ask(page, "calculate 2+2")
    wait_for_end(page)
    step = page.get_by_test_id("tool-step")
    expect(step).to_have_count(1)
    expect(step).to_contain_text("Calculator")
    step.locator("summary").click()
    expect(step.locator(".tool-input")).to_have_text("2+2")
    expect(step.locator(".tool-result")).to_have_text("4")
    expect(last_answer(page)).to_have_text("2 + 2 is 4.")
    expect(last_answer(page).locator("strong")).to_have_text("4")

    reasoning = page.locator(".reasoning-text").last
    expect(reasoning).to_be_hidden()
    toggle = page.get_by_test_id("reasoning-toggle").last
    expect(toggle).to_have_attribute("aria-expanded", "false")
    toggle.click()
    expect(reasoning).to_be_visible()
    expect(reasoning).to_contain_text('"action": "Calculator"')
    expect(toggle).to_have_attribute("aria-expanded", "true")


def test_mermaid_block_becomes_a_diagram_once_it_closes(
    open_page: PageFactory, backend: ScriptedBackend
) -> None:
    backend.tokens_per_second = 30  # the text after the block takes ~10 s: we stop it earlier
    page = open_page()
    ask(page, "live diagram")
    answer = last_answer(page)
    svg = answer.locator(".diagram-viewport > svg")
    expect(svg).to_have_count(1)
    assert page.get_by_test_id("stop-button").is_visible(), "drawn only after the run ended"
    expect(svg.get_by_text("Agent").first).to_be_visible()
    node = svg.element_handle()
    text = answer.inner_text()
    expect(answer).not_to_have_text(text)  # the answer goes on streaming below the diagram
    page.get_by_test_id("stop-button").click()
    wait_for_end(page)
    # the drawn diagram was not re-created by the later renders of the streaming answer
    assert node.evaluate("n => n.isConnected")
    expect(svg).to_have_count(1)
    expect(answer).to_contain_text("The diagram above is drawn.")


RENDER_STEPS = """async (texts) => {
  const { markdownView, renderMarkdown } = await import("/static/markdown.js");
  const el = document.createElement("div");
  const view = markdownView(el);
  const [openCode, openDiagram, closedDiagram, shrunk] = texts;
  const out = {};
  renderMarkdown(view, openCode, false);
  const intro = el.firstChild;
  out.openCode = el.querySelector("pre code")?.textContent;
  renderMarkdown(view, openDiagram, false);
  out.introKept = el.firstChild === intro;
  out.openDiagram = el.querySelector(".mermaid-block")?.dataset.closed;
  out.openSource = el.querySelector(".mermaid-source")?.textContent;
  renderMarkdown(view, closedDiagram, false);
  out.closedDiagram = el.querySelector(".mermaid-block")?.dataset.closed;
  renderMarkdown(view, shrunk, true);
  out.blocksAfterShrink = el.children.length;
  out.introStill = el.firstChild === intro;
  return out;
}"""


def test_streaming_markdown_renders_unfinished_blocks_and_keeps_finished_ones(open_page: PageFactory) -> None:
    intro = "Intro paragraph.\n\n"
    code = "```python\nprint(1)"
    diagram = "```mermaid\nflowchart TD\n  A-->B"
    texts = [
        intro + code,
        intro + code + "\n```\n\n" + diagram,
        intro + code + "\n```\n\n" + diagram + "\n```",
        intro,
    ]
    out = open_page().evaluate(RENDER_STEPS, texts)
    assert out == {
        "openCode": "print(1)\n",  # an unfinished fence is already a code block
        "introKept": True,  # a finished block keeps its DOM node: no flicker
        "openDiagram": "0",  # an unfinished mermaid block is shown as source, not drawn
        "openSource": "flowchart TD\n  A-->B",
        "closedDiagram": "1",
        "blocksAfterShrink": 1,
        "introStill": True,
    }


def test_invalid_mermaid_shows_the_error_and_the_source(open_page: PageFactory) -> None:
    page = open_page()
    ask(page, "broken diagram")
    wait_for_end(page)
    answer = last_answer(page)
    box = answer.get_by_test_id("error-box")
    expect(box).to_have_count(1)
    expect(box).to_contain_text("Mermaid could not draw this diagram")
    expect(box.locator(".error-message")).not_to_be_empty()
    expect(box.locator(".mermaid-source")).to_have_text(BAD_DIAGRAM_SOURCE)
    expect(answer).to_contain_text("After the diagram.")
    expect(answer.locator("svg")).to_have_count(0)


@pytest.mark.parametrize("csp", [True, False], ids=["with-csp", "sanitizer-alone"])
def test_html_in_an_answer_stays_inert(open_page: PageFactory, csp: bool) -> None:
    page = open_page(bypass_csp=not csp)
    ask(page, "inject")
    wait_for_end(page)
    answer = last_answer(page)
    expect(answer).to_contain_text("stay inert.")
    time.sleep(0.3)  # give a broken image's onerror time to fire, were it there
    assert page.evaluate("window.__xss") is None
    assert answer.locator("script").count() == 0
    assert answer.locator("[onerror]").count() == 0
    assert answer.locator("a[href^='javascript']").count() == 0
    assert answer.locator("[data-testid], [data-i18n]").count() == 0  # the page's hooks stay its own
    assert page.evaluate("[...document.scripts].every(s => !s.textContent.includes('__xss'))")


def test_stop_cancels_the_run_on_the_server(
    open_page: PageFactory, backend: ScriptedBackend, server: LiveServer
) -> None:
    backend.tokens_per_second = 5
    page = open_page()
    ask(page, "slow")
    expect(last_answer(page)).not_to_be_empty()  # the answer has started
    call = backend.calls[-1]
    page.get_by_test_id("stop-button").click()
    assert wait_until(lambda: call.abandoned, timeout=5), "the model kept generating"
    assert not call.finished
    wait_for_end(page)
    expect(page.get_by_test_id("run-status").last).to_have_text("Stopped.")
    current = page.locator("[data-testid=session-item][aria-current=page]")
    session_id = current.get_attribute("data-session-id")
    detail = httpx.get(f"{server.url}/sessions/{session_id}").json()
    assert detail["turns"][-1]["status"] == "interrupted"
    assert detail["active_run_id"] is None
    assert LONG.startswith(detail["turns"][-1]["answer"])


def test_closing_the_page_leaves_the_run_going_and_the_chat_shows_it(
    open_page: PageFactory, backend: ScriptedBackend, server: LiveServer
) -> None:
    # runs are started resumable: a page cannot tell a reload (which must resume) from a
    # closed tab at `pagehide`, so neither cancels; the answer is there when the chat reopens
    backend.tokens_per_second = 40
    page = open_page()
    ask(page, "stream please, then close")
    expect(last_answer(page)).not_to_be_empty()
    call = backend.calls[-1]
    url = page.url
    assert "?chat=s_" in url
    page.close(run_before_unload=True)
    assert wait_until(lambda: call.finished, timeout=10), "the run stopped with the page"
    assert not call.abandoned
    again = open_page(url=url)
    expect(last_answer(again)).to_have_text(STREAMED)
    expect(again.get_by_test_id("turn")).to_have_count(1)


def test_reopening_a_chat_follows_its_running_answer(
    open_page: PageFactory, backend: ScriptedBackend
) -> None:
    backend.tokens_per_second = 10
    first = open_page()
    ask(first, "slow, in another window")
    expect(last_answer(first)).not_to_be_empty()
    call = backend.calls[-1]
    second = open_page()
    second.get_by_test_id("session-item").filter(has_text="slow, in another window").first.click()
    answer = last_answer(second)
    expect(answer).to_contain_text("This answer is long")  # replayed from the run's first event
    before = len(answer.inner_text())
    expect(answer).not_to_have_text(answer.inner_text())  # and still growing
    assert len(answer.inner_text()) > before
    second.get_by_test_id("stop-button").click()
    assert wait_until(lambda: call.abandoned, timeout=5)
    wait_for_end(second)
    wait_for_end(first)
    expect(first.get_by_test_id("error-box")).to_contain_text("stopped before it was complete")
    expect(first.get_by_test_id("retry")).to_be_visible()


def test_an_attached_notebook_is_the_context(open_page: PageFactory, backend: ScriptedBackend) -> None:
    notebook = {
        "cells": [
            {"cell_type": "markdown", "source": ["# Token streaming\n"]},
            {"cell_type": "code", "source": ["async for token in agent.run(q):\n", "    print(token)"]},
        ],
        "metadata": {},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    page = open_page()
    page.get_by_test_id("attach-input").set_input_files(
        {"name": "demo.ipynb", "mimeType": "application/json", "buffer": json.dumps(notebook).encode()}
    )
    expect(page.get_by_test_id("document-name")).to_contain_text("Document: demo.ipynb")
    ask(page, "what does the notebook do")
    wait_for_end(page)
    system = backend.calls[-1].messages[0].content
    assert "# Token streaming" in system
    assert "async for token in agent.run(q):" in system


def test_sessions_reopen_with_their_history(open_page: PageFactory) -> None:
    page = open_page()
    ask(page, "remember the apples")
    wait_for_end(page)
    expect(last_answer(page)).to_have_text("You said: remember the apples")
    page.get_by_test_id("new-chat").click()
    expect(page.get_by_test_id("answer")).to_have_count(0)
    item = page.get_by_test_id("session-item").filter(has_text="remember the apples").first
    item.click()
    expect(page.get_by_test_id("answer")).to_have_count(1)
    expect(last_answer(page)).to_have_text("You said: remember the apples")
    expect(item).to_have_attribute("aria-current", "page")
    # a follow-up continues the reopened session
    ask(page, "and the pears")
    wait_for_end(page)
    expect(page.get_by_test_id("answer")).to_have_count(2)


def test_copy_answer(open_page: PageFactory) -> None:
    page = open_page(permissions=["clipboard-read", "clipboard-write"])
    ask(page, "copy me")
    wait_for_end(page)
    page.get_by_test_id("copy-answer").last.click()
    expect(page.get_by_test_id("copy-answer").last).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == "You said: copy me"


def test_a_broken_stream_resumes_without_duplicated_text(open_page: PageFactory) -> None:
    page = open_page()
    cut_after: list[int] = []

    def truncate(route: Any) -> None:
        # the real run, but the connection "breaks" after its first answer_delta frame
        response = route.fetch()
        frames = response.body().decode().split("\n\n")
        first = next(i for i, frame in enumerate(frames) if "event: answer_delta" in frame)
        cut_after.append(int(re.search(r"^id: (\d+)", frames[first], re.M).group(1)))  # type: ignore[union-attr]
        headers = {k: v for k, v in response.headers.items() if k.lower().startswith(("content-type", "x-"))}
        route.fulfill(status=200, headers=headers, body="\n\n".join(frames[: first + 1]) + "\n\n")

    resumed: list[str | None] = []

    def record(request: Any) -> None:
        if "/runs/" in request.url and request.url.endswith("/events"):
            resumed.append(request.headers.get("last-event-id"))

    page.on("request", record)
    page.route("**/chat/events", truncate, times=1)
    ask(page, "stream please")
    wait_for_end(page)
    expect(last_answer(page)).to_have_text(STREAMED)
    assert resumed == [str(cut_after[0])]
    expect(page.get_by_test_id("error-box")).to_have_count(0)


def test_retry_after_a_failed_connection(open_page: PageFactory) -> None:
    page = open_page()
    page.route("**/chat/events", lambda route: route.abort("connectionreset"), times=1)
    ask(page, "are you there")
    expect(page.get_by_test_id("error-box")).to_have_count(1)
    retry = page.get_by_test_id("retry").last
    expect(retry).to_be_visible()
    retry.click()
    wait_for_end(page)
    expect(last_answer(page)).to_have_text("You said: are you there")


# -- documents, presets, language ----------------------------------------------------------------


def test_preset_on_an_attached_document_sends_its_question(
    open_page: PageFactory, backend: ScriptedBackend
) -> None:
    page = open_page(locale="ja-JP")
    expect(page.get_by_test_id("language-switch")).to_have_value("ja")
    expect(page.get_by_test_id("preset-button")).to_have_count(0)  # nothing to ask about yet
    document = "# 設計メモ\n\nトークンはSSEでブラウザに届く。\n"
    page.get_by_test_id("attach-input").set_input_files(
        {"name": "notes.md", "mimeType": "text/markdown", "buffer": document.encode()}
    )
    expect(page.get_by_test_id("document-name")).to_contain_text("notes.md")
    expect(page.get_by_test_id("document-notice")).to_be_hidden()
    summary = page.get_by_test_id("preset-button").filter(has_text="要約")
    expect(summary).to_have_count(1)
    summary.click()
    wait_for_end(page)
    question = DEFAULT_PRESETS[0]["question"]["ja"]
    messages = backend.calls[-1].messages
    assert messages[-1].content == question
    assert "トークンはSSEでブラウザに届く。" in messages[0].content  # the document is the context
    expect(page.locator(".turn .bubble").last).to_have_text(question)


def test_a_document_that_does_not_fit_says_what_was_left_out(open_page: PageFactory) -> None:
    page = open_page()
    big = "".join(f"Paragraph {i}: " + "lorem ipsum dolor sit amet " * 8 + "\n\n" for i in range(300))
    page.get_by_test_id("attach-input").set_input_files(
        {"name": "big.txt", "mimeType": "text/plain", "buffer": big.encode()}
    )
    notice = page.get_by_test_id("document-notice")
    expect(notice).to_be_visible()
    expect(notice).to_contain_text("Only part of big.txt fits")
    expect(notice).to_contain_text(f"of {len(big):,} characters")
    expect(notice).to_contain_text("left out")  # the server's own words, too


def test_japanese_ui_and_the_language_switch(open_page: PageFactory) -> None:
    page = open_page(locale="ja-JP")
    expect(page.locator("html")).to_have_attribute("lang", "ja")
    expect(page.get_by_test_id("send-button")).to_have_text("送信")
    expect(page.get_by_test_id("new-chat")).to_have_text("新しいチャット")
    expect(page.get_by_test_id("message-input")).to_have_attribute("placeholder", re.compile("質問を入力"))
    expect(page.get_by_text("ドキュメントを添付")).to_be_visible()
    page.get_by_test_id("language-switch").select_option("en")
    expect(page.get_by_test_id("send-button")).to_have_text("Send")
    expect(page.locator("html")).to_have_attribute("lang", "en")
    page.reload()  # the choice is remembered
    expect(page.get_by_test_id("send-button")).to_have_text("Send")


def test_english_browser_gets_the_english_ui(open_page: PageFactory) -> None:
    page = open_page(locale="en-GB")
    expect(page.get_by_test_id("send-button")).to_have_text("Send")
    expect(page.get_by_test_id("language-switch")).to_have_value("en")


def test_api_key_is_asked_for_and_used(browser: Browser, tmp_path: Path) -> None:
    backend = ScriptedBackend(reply)
    with LiveServer(make_app(tmp_path / "db.sqlite", backend, api_keys=frozenset({"sekret"}))) as live:
        context = browser.new_context(locale="en-US")
        context.set_default_timeout(TIMEOUT_MS)
        try:
            page = context.new_page()
            page.goto(live.url)
            form = page.get_by_test_id("api-key-form")
            expect(form).to_be_visible()
            page.get_by_test_id("api-key-input").fill("sekret")
            form.get_by_role("button", name="Save").click()
            expect(form).to_be_hidden()
            ask(page, "hello with a key")
            wait_for_end(page)
            expect(last_answer(page)).to_have_text("You said: hello with a key")
            assert page.evaluate("localStorage.getItem('tokenrelay.apiKey')") == "sekret"
        finally:
            context.close()


# -- the README's picture --------------------------------------------------------------------------


def test_screenshot_of_an_answer_with_a_sequence_diagram(
    open_page: PageFactory, backend: ScriptedBackend, tmp_path: Path
) -> None:
    backend.tokens_per_second = 400
    write_docs = os.environ.get("TOKENRELAY_WRITE_SCREENSHOTS") == "1"
    out = ROOT / "docs" if write_docs else tmp_path
    out.mkdir(exist_ok=True)
    page = open_page(locale="en-US")
    page.set_viewport_size({"width": 1280, "height": 1040})
    page.get_by_test_id("attach-input").set_input_files(
        {"name": "streaming-tutorial.md", "mimeType": "text/markdown", "buffer": SEED_DOCUMENT.encode()}
    )
    expect(page.get_by_test_id("preset-button")).to_have_count(len(DEFAULT_PRESETS))
    ask(page, SEED_QUESTION)
    wait_for_end(page)
    svg = last_answer(page).locator(".diagram-viewport > svg")
    expect(svg).to_have_count(1)
    for name in ("ユーザー", "フロントエンド", "バックエンド", "LLM"):
        expect(svg.get_by_text(name, exact=True).first).to_be_visible()
    page.locator(".turn").last.evaluate("turn => turn.scrollIntoView({block: 'start'})")
    page.screenshot(path=str(out / "screenshot.png"))
    page.get_by_test_id("language-switch").select_option("ja")
    expect(page.get_by_test_id("send-button")).to_have_text("送信")
    page.screenshot(path=str(out / "screenshot-ja.png"))
    assert (out / "screenshot.png").stat().st_size > 20_000
