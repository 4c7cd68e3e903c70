// Code blocks in answers: a copy button, and syntax highlighting once the block is complete.
//
// highlight.js (vendored, loaded on the first code block) turns the code's text into spans;
// its output still goes through DOMPurify, allowing only <span class>, so the code's text can
// never become markup. A block that is still streaming (`data-closed="0"`) is not
// highlighted: it is re-rendered every frame, and the finished block replaces it.

import { h, setText, t } from "./dom.js";
import { announce } from "./state.js";

const DOMPurify = window.DOMPurify;
const PURIFY_CODE = { ALLOWED_TAGS: ["span"], ALLOWED_ATTR: ["class"], RETURN_DOM_FRAGMENT: true };
const MAX_HIGHLIGHT_CHARS = 100_000;

let hljsReady = null;

function loadHighlighter() {
  if (!hljsReady) {
    hljsReady = import("./vendor/highlight/highlight.min.js").then(({ default: hljs }) => hljs);
    hljsReady.catch(() => {
      hljsReady = null; // plain code this time; try again for the next block
    });
  }
  return hljsReady;
}

/** Wrap a sanitised `<pre data-closed>` with a header (language, copy) and highlight it. */
export function enhanceCode(pre) {
  const code = pre.querySelector("code");
  if (!code || pre.parentElement?.classList.contains("code-block")) return;
  const lang = (/\blanguage-([\w+#.-]+)/.exec(code.className) || [])[1] || "";
  const copy = h("button", {
    type: "button",
    class: "tool-button code-copy",
    "data-testid": "copy-code",
    i18n: "copy",
    i18nAria: "copyCode",
  });
  copy.addEventListener("click", () => copyText(code.textContent.replace(/\n$/, ""), copy));
  const header = h("div", { class: "code-header" }, h("span", { class: "code-lang", text: lang }), copy);
  const wrapper = h("div", { class: "code-block" });
  pre.replaceWith(wrapper);
  wrapper.append(header, pre);
  if (pre.dataset.closed === "1" && lang) highlight(code, lang);
}

async function highlight(code, lang) {
  const text = code.textContent;
  if (text.length > MAX_HIGHLIGHT_CHARS) return;
  let hljs;
  try {
    hljs = await loadHighlighter();
  } catch {
    return;
  }
  if (!hljs.getLanguage(lang) || code.textContent !== text) return;
  const html = hljs.highlight(text, { language: lang, ignoreIllegals: true }).value;
  code.replaceChildren(DOMPurify.sanitize(html, PURIFY_CODE));
  code.classList.add("hljs");
  code.dataset.highlighted = "1";
}

/** Copy text to the clipboard (a hidden textarea where the Clipboard API is refused). */
export async function copyText(text, button) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    const scratch = h("textarea", { class: "visually-hidden" });
    scratch.value = text;
    document.body.append(scratch);
    scratch.select();
    document.execCommand("copy");
    scratch.remove();
  }
  setText(button, "copied");
  announce(t("copied"));
  setTimeout(() => setText(button, "copy"), 1500);
}
