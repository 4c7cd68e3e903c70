"""The page people would choose (issue 16), in Chromium against a real server: chats with URLs,
titles from the document or the topic, a cut document that stays cut, a drawer on phones,
diagrams you can zoom, pan, open full screen and download, highlighted code with a copy
button, collapsed Mermaid errors, and keyboard use (skip link, focus, one Tab stop per chat).

`TOKENRELAY_WRITE_SCREENSHOTS=1` writes the screenshots into docs/ (see docs/page.md).
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest

from browser_fixture import (
    ROOT,
    PageFactory,
    ask,
    last_answer,
    wait_for_end,
)
from replies import final
from server_fixture import LiveServer, make_app
from tokenrelay.messages import Message
from tokenrelay.presets import DEFAULT_PRESETS
from tokenrelay.testing import ScriptedBackend

try:
    from playwright.sync_api import Page, expect
except ImportError:  # pragma: no cover - scripts/browser-deps installs it
    pass

PHONE = {"width": 390, "height": 844}


FLOWCHART = "flowchart LR\n    A[Request] --> B[Agent] --> C[Tools] --> D[Answer]"
SEQUENCE = """sequenceDiagram
    participant ユーザー
    participant フロントエンド
    participant バックエンド
    participant LLM
    ユーザー->>フロントエンド: リクエスト送信
    フロントエンド->>バックエンド: リクエスト転送
    バックエンド->>LLM: ストリーミングリクエスト
    loop トークン生成中
        LLM-->>バックエンド: ストリーミングトークン
        バックエンド-->>フロントエンド: ストリーミングデータ
    end
    フロントエンド->>ユーザー: ストリーミング応答送信"""
CODE = 'def add(a: int, b: int) -> int:\n    """Add two numbers."""\n    return a + b  # {"not": "json"}'
BAD_DIAGRAM_SOURCE = "flowchart TD A -->|callbacks=[Callback]]| G"
SEED_DOCUMENT = (
    "# LLMの応答をストリーミングする\n\n"
    "FastAPIのStreamingResponseとコールバックで、LLMが生成したトークンを逐次ブラウザへ返す。\n"
)

SCRIPT: dict[str, str] = {
    "flowchart": final("The flow:\n\n```mermaid\n" + FLOWCHART + "\n```\n\nThat is all."),
    "sequence": final("シーケンス図です。\n\n```mermaid\n" + SEQUENCE + "\n```\n\n以上です。"),
    "code": final("Here it is:\n\n```python\n" + CODE + "\n```\n\nAnd inline `code` too."),
    "broken": final("Before.\n\n```mermaid\n" + BAD_DIAGRAM_SOURCE + "\n```\n\nAfter the diagram."),
}


def reply(messages: Sequence[Message]) -> str:
    last = messages[-1].content
    for keyword, answer in SCRIPT.items():
        if keyword in last:
            return answer
    return final(f"You said: {last}")


@pytest.fixture(scope="module")
def backend() -> ScriptedBackend:
    return ScriptedBackend(reply)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, backend: ScriptedBackend) -> Iterator[LiveServer]:
    db = tmp_path_factory.mktemp("web-chats") / "db.sqlite"
    with LiveServer(make_app(db, backend)) as live:
        yield live


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    """Where screenshots go: docs/ when asked for, else a temporary folder."""
    return ROOT / "docs" if os.environ.get("TOKENRELAY_WRITE_SCREENSHOTS") == "1" else tmp_path


def chat_id(page: Page) -> str | None:
    found = re.search(r"[?&]chat=([\w-]+)", page.url)
    return found.group(1) if found else None


def attach(page: Page, name: str, text: str) -> None:
    page.get_by_test_id("attach-input").set_input_files(
        {"name": name, "mimeType": "text/markdown", "buffer": text.encode()}
    )
    expect(page.get_by_test_id("document-name")).to_contain_text(name)
    expect(page.get_by_test_id("document-name")).not_to_contain_text("…")  # attached, not attaching


def titles(server: LiveServer) -> dict[str, str]:
    return {s["id"]: s["title"] for s in httpx.get(f"{server.url}/sessions?limit=1000").json()}


# -- chats: URLs, titles, documents --------------------------------------------------------------


def test_every_chat_has_a_url_that_reopens_it(open_page: PageFactory) -> None:
    page = open_page()
    assert chat_id(page) is None
    ask(page, "remember the plums")
    wait_for_end(page)
    first = chat_id(page)
    assert first and first.startswith("s_")
    page.reload()
    expect(last_answer(page)).to_have_text("You said: remember the plums")
    expect(page.locator("[data-testid=session-item][aria-current=page]")).to_have_attribute(
        "data-session-id", first
    )
    page.get_by_test_id("new-chat").click()
    assert chat_id(page) is None
    expect(page.get_by_test_id("answer")).to_have_count(0)
    page.go_back()  # the browser's history knows the chats too
    expect(last_answer(page)).to_have_text("You said: remember the plums")
    assert chat_id(page) == first

    gone = open_page(url=page.url.replace(first, "s_doesNotExist"))
    expect(gone.get_by_test_id("chat-gone")).to_have_text("That chat does not exist any more.")
    assert chat_id(gone) is None


def test_a_document_alone_makes_no_untitled_chat_and_titles_the_chat(
    open_page: PageFactory, server: LiveServer, backend: ScriptedBackend
) -> None:
    page = open_page(locale="ja-JP")
    before = titles(server)
    listed = page.get_by_test_id("session-item").count()
    attach(page, "streaming-tutorial.md", SEED_DOCUMENT)
    session = chat_id(page)
    assert session and session not in before  # the chat exists (and has a URL)...
    expect(page.get_by_test_id("session-item")).to_have_count(listed)  # ...but is not listed yet
    expect(page.get_by_test_id("session-list")).not_to_contain_text("無題")
    page.reload()  # the document is still there
    expect(page.get_by_test_id("document-name")).to_contain_text("streaming-tutorial.md")
    summary = page.get_by_test_id("preset-button").filter(has_text="要約")
    summary.click()
    expect(page.get_by_test_id("message-input")).to_be_focused()  # ready for the follow-up
    wait_for_end(page)
    assert backend.calls[-1].messages[-1].content == DEFAULT_PRESETS[0]["question"]["ja"]
    # titled after the document, not after the preset question every such chat shares
    assert titles(server)[session] == "LLMの応答をストリーミングする"
    item = page.get_by_test_id("session-item").filter(has_text="LLMの応答をストリーミングする")
    expect(item).to_have_count(1)
    expect(item).to_have_attribute("aria-current", "page")

    # a chat without a document is titled after its topic: the first question
    page.get_by_test_id("new-chat").click()
    ask(page, "How do SSE keep-alives work?")
    wait_for_end(page)
    assert titles(server)[chat_id(page) or ""] == "How do SSE keep-alives work?"


def test_the_cut_document_notice_survives_reopening_the_chat(
    open_page: PageFactory, backend: ScriptedBackend, shots: Path
) -> None:
    page = open_page()
    big = "".join(f"Paragraph {i}: " + "lorem ipsum dolor sit amet " * 8 + "\n\n" for i in range(300))
    attach(page, "big.txt", big)
    notice = page.get_by_test_id("document-notice")
    expect(notice).to_contain_text("Only part of big.txt fits")
    said = notice.inner_text()
    page.reload()
    expect(notice).to_be_visible()
    assert notice.inner_text() == said
    ask(page, "what is in the last paragraph?")
    wait_for_end(page)
    assert "the document was cut here" in backend.calls[-1].messages[0].content  # the model is told
    again = open_page(url=page.url)  # reopened later, from its URL
    expect(again.get_by_test_id("document-notice")).to_have_text(said)
    again.screenshot(path=str(shots / "page-document-cut.png"))


def test_server_notice_is_shown_until_dismissed(open_page: PageFactory) -> None:
    notice = "Answers come from a small local model: check anything important."
    info = {"model": "scripted", "version": "0", "notice": notice, "context_window": 8192}
    page = open_page()
    page.context.route("**/info", lambda route: route.fulfill(json=info))
    page.reload()
    box = page.get_by_test_id("info-notice")
    expect(box).to_have_text(re.compile(re.escape(notice)))
    box.get_by_test_id("info-dismiss").click()
    expect(box).to_be_hidden()
    page.reload()
    expect(page.locator("body[data-ready='1']")).to_have_count(1)
    page.wait_for_load_state("networkidle")
    expect(box).to_be_hidden()  # remembered
    info["notice"] = "A new notice."
    page.reload()
    expect(box).to_have_text(re.compile("A new notice."))  # a different notice shows again
    page.context.route("**/info", lambda route: route.fulfill(json={**info, "notice": None}))
    page.reload()
    page.wait_for_load_state("networkidle")
    expect(box).to_be_hidden()


# -- phones ---------------------------------------------------------------------------------------


def test_on_a_phone_the_sidebar_is_a_drawer(open_page: PageFactory, shots: Path) -> None:
    page = open_page(viewport=PHONE, locale="ja-JP", reduced_motion="reduce")  # no slide: still pictures
    ask(page, "sequence diagram, on a phone")
    wait_for_end(page)
    sidebar = page.get_by_test_id("sidebar")
    menu = page.get_by_test_id("menu-button")
    expect(menu).to_be_visible()
    expect(sidebar).not_to_be_in_viewport()
    messages = page.locator("#messages").bounding_box()
    assert messages and messages["width"] >= 0.95 * PHONE["width"]  # the conversation has the screen
    assert sidebar.evaluate("s => s.inert")  # a closed drawer has no Tab stops
    svg = last_answer(page).locator(".diagram-viewport > svg")
    expect(svg).to_have_count(1)
    # labels stay legible at phone width: the diagram scrolls sideways instead of shrinking
    label = svg.get_by_text("フロントエンド", exact=True).first.bounding_box()
    assert label and label["height"] >= 10, label
    page.screenshot(path=str(shots / "page-mobile.png"))

    menu.click()
    expect(sidebar).to_be_in_viewport()
    expect(menu).to_have_attribute("aria-expanded", "true")
    current = page.locator("[data-testid=session-item][aria-current=page]")
    expect(current).to_be_focused()
    page.screenshot(path=str(shots / "page-mobile-drawer.png"))
    page.keyboard.press("Escape")
    expect(sidebar).not_to_be_in_viewport()
    expect(menu).to_be_focused()

    menu.click()
    page.get_by_test_id("new-chat").click()  # choosing closes the drawer
    expect(sidebar).not_to_be_in_viewport()
    expect(page.get_by_test_id("answer")).to_have_count(0)
    menu.click()
    page.get_by_test_id("drawer-backdrop").click(position={"x": 370, "y": 400})
    expect(sidebar).not_to_be_in_viewport()


# -- diagrams ------------------------------------------------------------------------------------


def svg_width(page: Page, root: str = ".answer") -> float:
    svg = page.locator(f"{root} .diagram-viewport > svg").last
    return float(svg.evaluate("s => s.getBoundingClientRect().width"))


def test_diagrams_zoom_pan_full_screen_and_download(open_page: PageFactory, shots: Path) -> None:
    page = open_page()
    ask(page, "flowchart please")
    wait_for_end(page)
    diagram = last_answer(page).get_by_test_id("diagram")
    expect(diagram.locator(".diagram-viewport > svg")).to_have_count(1)
    viewport = diagram.get_by_test_id("diagram-viewport")
    fitted = svg_width(page)
    diagram.get_by_test_id("diagram-zoom-in").click()
    diagram.get_by_test_id("diagram-zoom-in").click()
    assert svg_width(page) == pytest.approx(fitted * 1.25 * 1.25, rel=0.02)
    diagram.get_by_test_id("diagram-zoom-in").click()
    diagram.get_by_test_id("diagram-zoom-in").click()
    # pan: drag with the mouse
    box = viewport.bounding_box()
    assert box
    before = viewport.evaluate("v => v.scrollLeft")
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2 - 120, box["y"] + box["height"] / 2, steps=5)
    page.mouse.up()
    assert viewport.evaluate("v => v.scrollLeft") > before
    diagram.get_by_test_id("diagram-zoom-out").click()
    diagram.get_by_test_id("diagram-fit").click()
    assert svg_width(page) == pytest.approx(fitted, rel=0.02)
    # keyboard: the viewport takes + and -
    viewport.focus()
    page.keyboard.press("+")
    assert svg_width(page) > fitted * 1.2

    # downloads: a standalone SVG and a PNG drawn from it
    with page.expect_download() as svg_download:
        diagram.get_by_test_id("diagram-svg").click()
    svg_file = Path(svg_download.value.path())
    svg_text = svg_file.read_text(encoding="utf-8")
    assert svg_download.value.suggested_filename.endswith(".svg")
    assert svg_text.startswith("<svg") and 'xmlns="http://www.w3.org/2000/svg"' in svg_text
    assert "Agent" in svg_text
    with page.expect_download() as png_download:
        diagram.get_by_test_id("diagram-png").click()
    png = Path(png_download.value.path()).read_bytes()
    assert png_download.value.suggested_filename.endswith(".png")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert width > 200 and height > 20

    # full screen: a modal dialog with its own zoom; Escape closes it and focus comes back
    opener = diagram.get_by_test_id("diagram-fullscreen")
    opener.click()
    dialog = page.get_by_test_id("diagram-dialog")
    expect(dialog).to_be_visible()
    expect(dialog.locator(".diagram-viewport > svg")).to_have_count(1)
    big = dialog.locator(".diagram-viewport > svg").evaluate("s => s.getBoundingClientRect().width")
    assert big > fitted * 1.3  # it fills the screen
    page.screenshot(path=str(shots / "page-diagram-fullscreen.png"))
    dialog.get_by_test_id("diagram-zoom-in").click()
    assert dialog.locator(".diagram-viewport > svg").evaluate("s => s.getBoundingClientRect().width") > big
    page.keyboard.press("Escape")
    expect(dialog).to_have_count(0)
    expect(opener).to_be_focused()


def test_a_mermaid_error_collapses_behind_show_the_error(open_page: PageFactory) -> None:
    page = open_page()
    ask(page, "broken diagram")
    wait_for_end(page)
    box = last_answer(page).get_by_test_id("error-box")
    expect(box).to_have_count(1)
    expect(box).to_contain_text("Mermaid could not draw this diagram.")
    message = box.locator(".error-message")
    expect(message).to_be_hidden()  # no parser dump in the reader's face
    expect(last_answer(page)).to_contain_text("After the diagram.")
    box.get_by_test_id("show-error").click()
    expect(message).to_be_visible()
    expect(message).not_to_be_empty()
    expect(box.locator(".mermaid-source")).to_have_text(BAD_DIAGRAM_SOURCE)


# -- code ----------------------------------------------------------------------------------------


def test_code_blocks_are_highlighted_and_copied(open_page: PageFactory, shots: Path) -> None:
    page = open_page(permissions=["clipboard-read", "clipboard-write"])
    ask(page, "code please")
    wait_for_end(page)
    block = last_answer(page).locator(".code-block")
    expect(block).to_have_count(1)
    expect(block.locator(".code-lang")).to_have_text("python")
    code = block.locator("code")
    expect(code).to_have_attribute("data-highlighted", "1")
    expect(code.locator(".hljs-keyword").first).to_have_text("def")
    expect(code.locator(".hljs-string").first).to_contain_text("Add two numbers")
    assert code.inner_text().rstrip("\n") == CODE  # highlighting never changes the text
    block.get_by_test_id("copy-code").click()
    expect(block.get_by_test_id("copy-code")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == CODE
    expect(last_answer(page).locator(":not(pre) > code")).to_have_text("code")  # inline code stays plain
    last_answer(page).screenshot(path=str(shots / "page-code.png"))


# -- keyboard and focus ----------------------------------------------------------------------------


def test_skip_link_and_one_tab_stop_per_chat(open_page: PageFactory, server: LiveServer) -> None:
    for question in ("first tab chat", "second tab chat"):
        httpx.post(f"{server.url}/chat", json={"text": question, "stream": False}, timeout=30)
    page = open_page()
    chats = page.get_by_test_id("session-item")
    expect(chats.first).to_be_visible()
    count = chats.count()
    assert count >= 2

    page.keyboard.press("Tab")  # the first Tab stop is the skip link, shown when focused
    skip = page.get_by_test_id("skip-link")
    expect(skip).to_be_focused()
    expect(skip).to_be_in_viewport()
    page.keyboard.press("Enter")
    expect(page.get_by_test_id("message-input")).to_be_focused()
    assert "#" not in page.url

    page.get_by_test_id("new-chat").focus()
    stops = []
    for _ in range(count + 1):
        page.keyboard.press("Tab")
        stops.append(page.evaluate("document.activeElement.dataset.testid"))
    assert stops == ["session-item"] * count + ["language-switch"]  # no delete buttons in between

    # arrows move between chats; the Delete key deletes the focused one
    chats.first.focus()
    page.keyboard.press("ArrowDown")
    expect(chats.nth(1)).to_be_focused()
    doomed = chats.nth(1).get_attribute("data-session-id")
    page.once("dialog", lambda dialog: dialog.accept())
    page.keyboard.press("Delete")
    expect(page.locator(f"[data-session-id='{doomed}']")).to_have_count(0)
    expect(chats).to_have_count(count - 1)
    assert doomed not in titles(server)
    assert page.evaluate("document.activeElement.dataset.testid") == "session-item"


def test_no_copy_button_without_an_answer(open_page: PageFactory) -> None:
    page = open_page()
    page.route("**/chat/events", lambda route: route.abort("connectionreset"), times=1)
    ask(page, "this never gets an answer")
    expect(page.get_by_test_id("error-box")).to_have_count(1)
    expect(page.get_by_test_id("copy-answer")).to_be_hidden()
    page.get_by_test_id("retry").click()
    wait_for_end(page)
    expect(page.get_by_test_id("copy-answer").last).to_be_visible()


def test_the_page_code_needs_no_inline_script_or_style() -> None:
    static = ROOT / "src" / "tokenrelay" / "server" / "static"
    html = re.sub(r"<!--.*?-->", "", (static / "index.html").read_text(encoding="utf-8"), flags=re.S)
    assert not re.search(r"<script(?![^>]*\bsrc=)", html), "an inline script"
    assert not re.search(r"<style|\sstyle=|\son\w+=", html), "inline style or handler"
    for module in static.glob("*.js"):
        source = module.read_text(encoding="utf-8")
        for forbidden in ("innerHTML", "outerHTML", "insertAdjacentHTML", "eval(", "new Function",
                          'setAttribute("style"', "cssText", "document.write"):  # fmt: skip
            assert forbidden not in source, f"{module.name}: {forbidden}"
