// Mermaid diagrams in answers: drawn once their block is complete, each distinct source once.
//
// Invariants:
// * Mermaid runs with securityLevel "strict" and its SVG goes through DOMPurify; diagram
//   sources and parser errors are only ever set as text;
// * each distinct diagram source is drawn once, one at a time: its SVG (or its parse error)
//   is cached by source text and reused by every later render of every answer;
// * a parse error is not the answer's failure: it collapses behind "show the error", and
//   the rest of the answer renders as usual.

import { escapeHtml, h, setText } from "./dom.js";
import { mountDiagram } from "./diagram-view.js";

const DOMPurify = window.DOMPurify;

const diagramKeys = new Map(); // mermaid source -> short key used in placeholders
const diagramSources = new Map(); // key -> source
const diagrams = new Map(); // source -> {status: "pending" | "ok" | "error", svg?, error?}
let mermaidReady = null;
let drawQueue = Promise.resolve();
let diagramCounter = 0;

const PURIFY_SVG = {
  USE_PROFILES: { svg: true, svgFilters: true, html: true },
  ADD_TAGS: ["foreignObject", "style"],
  ADD_ATTR: ["dominant-baseline", "text-anchor"],
  HTML_INTEGRATION_POINTS: { foreignobject: true },
  RETURN_DOM_FRAGMENT: true,
};

function diagramKey(source) {
  let key = diagramKeys.get(source);
  if (!key) {
    key = `d${diagramKeys.size + 1}`;
    diagramKeys.set(source, key);
    diagramSources.set(key, source);
  }
  return key;
}

/** The HTML placeholder markdown.js renders for a ```mermaid block (sanitised with the rest). */
export function diagramPlaceholder(source, closed) {
  return (
    `<div class="mermaid-block" data-diagram="${diagramKey(source)}" data-closed="${closed ? 1 : 0}">` +
    `<div class="diagram-caption"></div>` +
    `<pre class="mermaid-source"><code class="language-mermaid">${escapeHtml(source)}</code></pre></div>`
  );
}

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
        // labels as SVG text, not HTML in foreignObject: the SVG then stands alone (a
        // downloaded file, a PNG drawn through a canvas) and the sanitiser sees no HTML
        htmlLabels: false,
        flowchart: { htmlLabels: false },
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
export function showDiagram(block) {
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
    mountDiagram(block, diagram.svg.cloneNode(true)); // sanitised once, as DOM: never re-parsed
  } else {
    const details = h(
      "details",
      { class: "diagram-error-details" },
      h("summary", { i18n: "showError", "data-testid": "show-error" }),
      h("pre", { class: "error-message", text: diagram.error }),
      h("pre", { class: "mermaid-source" }, h("code", { text: source })),
    );
    block.replaceChildren(
      h(
        "div",
        { class: "error-box diagram-error", "data-testid": "error-box", "data-kind": "diagram" },
        h("p", { class: "error-title", i18n: "diagramError" }),
        details,
      ),
    );
  }
}
