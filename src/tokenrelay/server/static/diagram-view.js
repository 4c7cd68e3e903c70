// A drawn diagram you can read on any screen: zoom (buttons, Ctrl+wheel, + and - keys), pan
// (drag with a mouse, scroll or swipe), open full screen, and download as SVG or PNG.
//
// Zoom sets the SVG's size, not a CSS transform: the vector redraws crisp at every scale and
// the viewport scrolls natively (touch included). At first a diagram fits its column but is
// never shrunk below MIN_READABLE of its natural size, so a wide sequence diagram on a phone
// stays legible and scrolls sideways instead of shrinking its labels to a few pixels.
// Everything here is set through the CSSOM (element.style), which a strict CSP allows.

import { h } from "./dom.js";

const MIN_READABLE = 0.75;
const MIN_SCALE = 0.1;
const MAX_SCALE = 8;
const STEP = 1.25;
let downloads = 0;

/** Replace a diagram placeholder's content with the drawn `svgFragment` and its tools. */
export function mountDiagram(block, svgFragment) {
  const svg = svgFragment.querySelector ? svgFragment.querySelector("svg") : svgFragment;
  if (!svg) return;
  const name = `diagram-${++downloads}`;
  const viewport = h("div", { class: "diagram-viewport", tabindex: "0", "data-testid": "diagram-viewport" });
  viewport.append(svg);
  const viewer = createViewer(svg, viewport, "inline");
  const figure = h(
    "figure",
    { class: "diagram", role: "group", i18nAria: "diagramLabel", "data-testid": "diagram" },
    toolbar(viewer, svg, name, () => openFullScreen(svg, name)),
    viewport,
  );
  block.replaceChildren(figure);
}

function naturalSize(svg) {
  const box = svg.viewBox && svg.viewBox.baseVal;
  if (box && box.width > 0 && box.height > 0) return { width: box.width, height: box.height };
  const width = parseFloat(svg.getAttribute("width")) || 600;
  const height = parseFloat(svg.getAttribute("height")) || 400;
  return { width, height };
}

/** Zoom and pan state of one SVG in one scrolling viewport. */
function createViewer(svg, viewport, mode) {
  const { width, height } = naturalSize(svg);
  const viewer = { scale: 1, fitted: true, width, height, viewport };
  svg.removeAttribute("width");
  svg.removeAttribute("height");
  svg.style.maxWidth = "none";

  const apply = () => {
    svg.style.width = `${width * viewer.scale}px`;
    svg.style.height = `${height * viewer.scale}px`;
    viewport.dataset.scale = viewer.scale.toFixed(3);
  };
  viewer.fit = () => {
    const availW = Math.max(40, viewport.clientWidth - 16);
    const availH = Math.max(40, viewport.clientHeight - 16);
    let scale = Math.min(1, availW / width);
    if (mode === "inline") scale = Math.max(scale, MIN_READABLE);
    else scale = Math.min(availW / width, availH / height);
    viewer.fitted = true;
    viewer.scale = scale;
    apply();
  };
  viewer.zoom = (factor, cx = viewport.clientWidth / 2, cy = viewport.clientHeight / 2) => {
    const scale = Math.min(MAX_SCALE, Math.max(MIN_SCALE, viewer.scale * factor));
    const ratio = scale / viewer.scale;
    // keep the point under (cx, cy) where it is
    const x = (viewport.scrollLeft + cx) * ratio - cx;
    const y = (viewport.scrollTop + cy) * ratio - cy;
    viewer.scale = scale;
    viewer.fitted = false;
    apply();
    viewport.scrollLeft = x;
    viewport.scrollTop = y;
  };
  apply();
  new ResizeObserver(() => {
    if (viewer.fitted && viewport.clientWidth > 0) viewer.fit();
  }).observe(viewport);

  viewport.addEventListener(
    "wheel",
    (event) => {
      if (!event.ctrlKey && !event.metaKey) return; // a plain wheel scrolls the page
      event.preventDefault();
      const rect = viewport.getBoundingClientRect();
      viewer.zoom(event.deltaY < 0 ? STEP : 1 / STEP, event.clientX - rect.left, event.clientY - rect.top);
    },
    { passive: false },
  );
  viewport.addEventListener("keydown", (event) => {
    if (event.key === "+" || event.key === "=") viewer.zoom(STEP);
    else if (event.key === "-") viewer.zoom(1 / STEP);
    else if (event.key === "0") viewer.fit();
    else return;
    event.preventDefault();
  });
  // drag to pan with a mouse (touch scrolls natively)
  let drag = null;
  viewport.addEventListener("pointerdown", (event) => {
    if (event.pointerType !== "mouse" || event.button !== 0) return;
    drag = { x: event.clientX, y: event.clientY, left: viewport.scrollLeft, top: viewport.scrollTop };
    viewport.setPointerCapture(event.pointerId);
    viewport.classList.add("dragging");
  });
  viewport.addEventListener("pointermove", (event) => {
    if (!drag) return;
    viewport.scrollLeft = drag.left - (event.clientX - drag.x);
    viewport.scrollTop = drag.top - (event.clientY - drag.y);
  });
  const endDrag = () => {
    drag = null;
    viewport.classList.remove("dragging");
  };
  viewport.addEventListener("pointerup", endDrag);
  viewport.addEventListener("pointercancel", endDrag);
  return viewer;
}

// icons as SVG paths (24×24), so they never depend on a font having the glyph
const ICONS = {
  fit: "M4 9V4h5M20 9V4h-5M4 15v5h5M20 15v5h-5",
  fullScreen: "M15 3h6v6M9 21H3v-6M21 3l-7 7M3 21l7-7",
};

const SVG_NS = "http://www.w3.org/2000/svg"; // a name, not an address: nothing is fetched

function icon(path) {
  const svg = document.createElementNS(SVG_NS, "svg");
  for (const [name, value] of Object.entries({
    viewBox: "0 0 24 24",
    width: "14",
    height: "14",
    fill: "none",
    stroke: "currentColor",
    "stroke-width": "2",
    "stroke-linecap": "round",
    "aria-hidden": "true",
  })) {
    svg.setAttribute(name, value);
  }
  const shape = document.createElementNS(SVG_NS, "path");
  shape.setAttribute("d", path);
  svg.append(shape);
  return svg;
}

function toolButton(label, glyph, testid, onclick) {
  const button = h("button", {
    type: "button",
    class: "tool-button",
    "data-testid": testid,
    i18nAria: label,
    "data-i18n-title": label,
    text: ICONS[glyph] ? null : glyph,
    onclick,
  });
  if (ICONS[glyph]) button.append(icon(ICONS[glyph]));
  return button;
}

function toolbar(viewer, svg, name, fullScreen) {
  const bar = h(
    "div",
    { class: "diagram-tools", role: "toolbar", i18nAria: "diagramTools" },
    toolButton("zoomOut", "−", "diagram-zoom-out", () => viewer.zoom(1 / STEP)),
    toolButton("zoomIn", "+", "diagram-zoom-in", () => viewer.zoom(STEP)),
    toolButton("zoomFit", "fit", "diagram-fit", () => viewer.fit()),
    fullScreen ? toolButton("fullScreen", "fullScreen", "diagram-fullscreen", fullScreen) : null,
    toolButton("downloadSvg", "SVG", "diagram-svg", () => downloadSvg(svg, viewer, name)),
    toolButton("downloadPng", "PNG", "diagram-png", () => downloadPng(svg, viewer, name)),
  );
  for (const button of bar.querySelectorAll("button")) button.title = button.getAttribute("aria-label");
  return bar;
}

// -- full screen: a modal dialog (works on phones, where the Fullscreen API often does not) --

function openFullScreen(svg, name) {
  const opener = document.activeElement;
  const copy = svg.cloneNode(true);
  const viewport = h("div", { class: "diagram-viewport", tabindex: "0", "data-testid": "diagram-viewport" });
  viewport.append(copy);
  const dialog = h("dialog", {
    class: "diagram-dialog",
    "data-testid": "diagram-dialog",
    i18nAria: "diagramLabel",
  });
  const close = toolButton("close", "×", "diagram-close", () => dialog.close());
  document.body.append(dialog);
  dialog.showModal();
  const viewer = createViewer(copy, viewport, "dialog");
  const bar = toolbar(viewer, copy, name, null);
  bar.append(close);
  dialog.append(bar, viewport);
  viewer.fit();
  viewport.focus();
  dialog.addEventListener("close", () => {
    dialog.remove();
    if (opener && opener.isConnected) opener.focus();
  });
}

// -- downloads ------------------------------------------------------------------------------------

function svgMarkup(svg, viewer) {
  const clone = svg.cloneNode(true);
  clone.removeAttribute("style");
  clone.setAttribute("xmlns", SVG_NS); // a standalone file needs it
  clone.setAttribute("width", String(Math.ceil(viewer.width)));
  clone.setAttribute("height", String(Math.ceil(viewer.height)));
  return new XMLSerializer().serializeToString(clone);
}

function save(blob, filename) {
  const url = URL.createObjectURL(blob);
  const link = h("a", { href: url, download: filename, class: "visually-hidden" });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 30_000);
}

function downloadSvg(svg, viewer, name) {
  save(new Blob([svgMarkup(svg, viewer)], { type: "image/svg+xml" }), `${name}.svg`);
}

async function downloadPng(svg, viewer, name) {
  const url = URL.createObjectURL(new Blob([svgMarkup(svg, viewer)], { type: "image/svg+xml" }));
  try {
    const image = new Image();
    image.src = url;
    await image.decode();
    const ratio = 2; // sharp on high-density screens and in documents
    const canvas = h("canvas", {});
    canvas.width = Math.ceil(viewer.width * ratio);
    canvas.height = Math.ceil(viewer.height * ratio);
    const context = canvas.getContext("2d");
    context.fillStyle = getComputedStyle(document.body).backgroundColor || "#fff";
    context.fillRect(0, 0, canvas.width, canvas.height);
    context.drawImage(image, 0, 0, canvas.width, canvas.height);
    const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
    if (blob) save(blob, `${name}.png`);
  } finally {
    URL.revokeObjectURL(url);
  }
}
