// Markdown for untrusted model output, rendered incrementally.
//
// Invariants:
// * every piece of HTML made from model output goes through DOMPurify before it reaches the
//   page; what the page adds afterwards (copy buttons, diagram tools) is built as DOM, and
//   text from the answer is only ever set as text;
// * `renderMarkdown` works block by block (marked's top-level tokens): a block whose HTML did
//   not change keeps its DOM node, so finished paragraphs, code and diagrams do not flicker
//   while the rest of the answer streams, and the cost per frame is one lex of the text;
// * while an answer streams, an unfinished fence at its end renders as a code block (marked
//   `data-closed="0"`: not highlighted yet); a ```mermaid block is drawn once its closing
//   fence has arrived (or the answer has ended) — see diagrams.js.

import { Marked } from "./vendor/marked/marked.esm.js";
import { enhanceCode } from "./code.js";
import { escapeHtml } from "./dom.js";
import { diagramPlaceholder, showDiagram } from "./diagrams.js";

const DOMPurify = window.DOMPurify;

const render = { lastOpen: false }; // true while the streaming answer's last block renders

const md = new Marked({
  gfm: true,
  breaks: false,
  renderer: {
    code(token) {
      const lang = (token.lang || "").trim().split(/\s+/)[0].toLowerCase();
      const closed = !render.lastOpen || fenceClosed(token.raw);
      if (lang === "mermaid") return diagramPlaceholder(token.text, closed);
      const safeLang = lang.replace(/[^\w+#.-]/g, "");
      const cls = safeLang ? ` class="language-${safeLang}"` : "";
      return `<pre data-closed="${closed ? 1 : 0}"><code${cls}>${escapeHtml(token.text)}\n</code></pre>\n`;
    },
  },
});

/** Whether a fenced code block's raw text ends with its closing fence. */
export function fenceClosed(raw) {
  const open = /^ {0,3}(`{3,}|~{3,})/.exec(raw);
  if (!open) return true; // an indented code block: nothing to wait for
  const lines = raw.replace(/\n+$/, "").split("\n");
  if (lines.length < 2) return false;
  const fence = open[1][0] === "`" ? "`" : "~";
  return new RegExp(`^ {0,3}\\${fence}{${open[1].length},}[ \\t]*$`).test(lines[lines.length - 1]);
}

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A" && node.hasAttribute("href")) {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer nofollow");
  }
});

const PURIFY_MARKDOWN = {
  // no restyling of the page, and no controls that could pass for the page's own
  FORBID_TAGS: ["style", "form", "button", "textarea", "select", "dialog"],
  FORBID_ATTR: ["style"],
  // no data-* from an answer (the page's own hooks: data-i18n, data-testid...), except the
  // two that diagram placeholders and code blocks use
  ALLOW_DATA_ATTR: false,
  ADD_ATTR: ["data-diagram", "data-closed"],
  SANITIZE_NAMED_PROPS: true, // ids and names from an answer cannot clobber page globals
  RETURN_DOM_FRAGMENT: true,
};

/** The render state of one answer element. */
export function markdownView(el) {
  return { el, blocks: [] };
}

/**
 * Render `text` into `view.el`, reusing the DOM of every block whose HTML is unchanged.
 * `final` is false while the answer still streams.
 */
export function renderMarkdown(view, text, final) {
  const tokens = md.lexer(text);
  let last = tokens.length - 1;
  while (last >= 0 && tokens[last].type === "space") last--;
  const htmls = [];
  for (let i = 0; i <= last; i++) {
    if (tokens[i].type === "space") continue;
    render.lastOpen = !final && i === last;
    let html;
    try {
      html = md.parser([tokens[i]]);
    } finally {
      render.lastOpen = false;
    }
    if (html) htmls.push(html);
  }
  const blocks = view.blocks;
  let i = 0;
  for (; i < htmls.length; i++) {
    if (blocks[i] && blocks[i].html === htmls[i]) continue;
    const node = makeBlock(htmls[i]);
    if (blocks[i]) blocks[i].node.replaceWith(node);
    else view.el.append(node);
    blocks[i] = { html: htmls[i], node };
  }
  for (let j = blocks.length - 1; j >= i; j--) blocks[j].node.remove();
  blocks.length = htmls.length;
}

/**
 * Move what `from` shows into the empty element `to`, keeping its DOM (drawn diagrams,
 * highlighted code) and rendering `text` there as finished; `from` is left empty.
 */
export function moveView(from, to, text) {
  to.el.append(...from.el.childNodes);
  to.blocks = from.blocks;
  from.blocks = [];
  renderMarkdown(to, text, true);
}

function makeBlock(html) {
  const node = document.createElement("div");
  node.className = "md-block";
  node.append(DOMPurify.sanitize(html, PURIFY_MARKDOWN));
  for (const block of node.querySelectorAll(".mermaid-block")) showDiagram(block);
  for (const pre of node.querySelectorAll("pre[data-closed]")) enhanceCode(pre);
  return node;
}
