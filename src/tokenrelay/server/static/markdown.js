// Markdown for untrusted model output, rendered incrementally, with Mermaid diagrams.
//
// Invariants:
// * every piece of HTML made from model output goes through DOMPurify before it reaches the
//   page; diagram sources and parser errors are only ever set as text;
// * `renderMarkdown` works block by block (marked's top-level tokens): a block whose HTML did
//   not change keeps its DOM node, so finished paragraphs, code and diagrams do not flicker
//   while the rest of the answer streams, and the cost per frame is one lex of the text;
// * while an answer streams, an unfinished fence at its end renders as a code block; a
//   ```mermaid block is drawn once its closing fence has arrived (or the answer has ended);
// * each distinct diagram source is drawn once: its SVG (or its parse error) is cached by
//   source text and reused by every later render.

import { Marked } from "./vendor/marked/marked.esm.js";
import { h, setText } from "./dom.js";

const DOMPurify = window.DOMPurify;

const diagramKeys = new Map(); // mermaid source -> short key used in placeholders
const diagramSources = new Map(); // key -> source
const render = { lastOpen: false }; // true while the streaming answer's last block renders

const md = new Marked({
  gfm: true,
  breaks: false,
  renderer: {
    code(token) {
      const lang = (token.lang || "").trim().split(/\s+/)[0].toLowerCase();
      if (lang !== "mermaid") return false; // marked's own code block
      const source = token.text;
      const closed = !render.lastOpen || fenceClosed(token.raw);
      return (
        `<div class="mermaid-block" data-diagram="${diagramKey(source)}" data-closed="${closed ? 1 : 0}">` +
        `<div class="diagram-caption"></div>` +
        `<pre class="mermaid-source"><code class="language-mermaid">${escapeHtml(source)}</code></pre></div>`
      );
    },
  },
});

function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function diagramKey(source) {
  let key = diagramKeys.get(source);
  if (!key) {
    key = `d${diagramKeys.size + 1}`;
    diagramKeys.set(source, key);
    diagramSources.set(key, source);
  }
  return key;
}

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
  // two that diagram placeholders use
  ALLOW_DATA_ATTR: false,
  ADD_ATTR: ["data-diagram", "data-closed"],
  SANITIZE_NAMED_PROPS: true, // ids and names from an answer cannot clobber page globals
  RETURN_DOM_FRAGMENT: true,
};

const PURIFY_SVG = {
  USE_PROFILES: { svg: true, svgFilters: true, html: true },
  ADD_TAGS: ["foreignObject", "style"],
  ADD_ATTR: ["dominant-baseline", "text-anchor"],
  HTML_INTEGRATION_POINTS: { foreignobject: true },
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

function makeBlock(html) {
  const node = document.createElement("div");
  node.className = "md-block";
  node.append(DOMPurify.sanitize(html, PURIFY_MARKDOWN));
  for (const block of node.querySelectorAll(".mermaid-block")) showDiagram(block);
  return node;
}

// -- Mermaid --------------------------------------------------------------------------------

const diagrams = new Map(); // source -> {status: "pending" | "ok" | "error", svg?, error?}
let mermaidReady = null;
let drawQueue = Promise.resolve();
let diagramCounter = 0;

function loadMermaid() {
  if (!mermaidReady) {
    mermaidReady = import("./vendor/mermaid/mermaid.esm.min.mjs").then(({ default: mermaid }) => {
      const dark = window.matchMedia?.("(prefers-color-scheme: dark)").matches;
      mermaid.initialize({
        startOnLoad: false,
        securityLevel: "strict",
        suppressErrorRendering: true,
        theme: dark ? "dark" : "neutral",
        fontFamily: getComputedStyle(document.body).fontFamily,
      });
      return mermaid;
    });
    mermaidReady.catch(() => {
      mermaidReady = null; // try again for the next diagram
    });
  }
  return mermaidReady;
}

function diagramFor(source) {
  let diagram = diagrams.get(source);
  if (!diagram) {
    diagram = { status: "pending" };
    diagrams.set(source, diagram);
    // one at a time: mermaid measures text in scratch elements of its own
    drawQueue = drawQueue.then(() => drawDiagram(source, diagram));
  }
  return diagram;
}

async function drawDiagram(source, diagram) {
  const id = `mermaid-${++diagramCounter}`;
  try {
    const mermaid = await loadMermaid();
    await mermaid.parse(source); // throws the parser's message for invalid input
    const { svg } = await mermaid.render(id, source);
    diagram.svg = DOMPurify.sanitize(svg, PURIFY_SVG);
    diagram.status = "ok";
  } catch (err) {
    diagram.status = "error";
    diagram.error = (err && (err.message || err.str)) || String(err);
  } finally {
    // mermaid can leave its scratch elements behind when it fails
    for (const stray of document.querySelectorAll(`#${id}, #d${id}, #i${id}`)) {
      if (!stray.closest(".mermaid-block")) stray.remove();
    }
  }
  const key = diagramKeys.get(source);
  for (const block of document.querySelectorAll(`.mermaid-block[data-diagram="${key}"]`)) {
    showDiagram(block);
  }
}

/** Fill a diagram placeholder from the cache, drawing the diagram first if needed. */
function showDiagram(block) {
  const source = diagramSources.get(block.dataset.diagram);
  const caption = block.querySelector(".diagram-caption");
  if (source === undefined) return;
  if (block.dataset.closed !== "1") {
    if (caption) setText(caption, "diagramStreaming");
    loadMermaid().catch(() => {}); // fetch the library while the block streams
    return;
  }
  const diagram = diagramFor(source);
  if (diagram.status === "pending") {
    block.dataset.state = "pending";
    if (caption) setText(caption, "diagramPending");
    return;
  }
  if (block.dataset.state === diagram.status) return;
  block.dataset.state = diagram.status;
  if (diagram.status === "ok") {
    const figure = h("figure", { class: "diagram", role: "img", i18nAria: "diagramLabel" });
    figure.append(diagram.svg.cloneNode(true)); // sanitised once, as DOM: never re-parsed
    block.replaceChildren(figure);
  } else {
    block.replaceChildren(
      h(
        "div",
        {
          class: "error-box diagram-error",
          role: "alert",
          "data-testid": "error-box",
          "data-kind": "diagram",
        },
        h("p", { class: "error-title", i18n: "diagramError" }),
        h("pre", { class: "error-message", text: diagram.error }),
        h("pre", { class: "mermaid-source" }, h("code", { text: source })),
      ),
    );
  }
}
