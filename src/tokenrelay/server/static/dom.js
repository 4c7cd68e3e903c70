// Small DOM helpers shared by the page's modules. Translatable text is set through data-i18n
// attributes, so a language switch (i18n.js applyLanguage) relabels it later; the current
// language is the document's `lang`.

import { translate } from "./i18n.js";

export function t(key, args) {
  return translate(document.documentElement.lang, key, args);
}

/** An element with attributes and children; `i18n` labels it through data-i18n. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "i18n") {
      el.dataset.i18n = value;
      el.textContent = t(value, attrs.i18nArgs);
    } else if (name === "i18nArgs") {
      el.dataset.i18nArgs = JSON.stringify(value);
    } else if (name === "i18nAria") {
      el.dataset.i18nAria = value;
      el.setAttribute("aria-label", t(value, attrs.i18nArgs));
    } else if (name === "text") {
      el.textContent = value;
    } else if (name.startsWith("on")) {
      el.addEventListener(name.slice(2), value);
    } else {
      el.setAttribute(name, value === true ? "" : value);
    }
  }
  for (const child of children) if (child != null) el.append(child);
  return el;
}

/** Set an element's translatable text (it follows later language switches). */
export function setText(el, key, args) {
  el.dataset.i18n = key;
  if (args) el.dataset.i18nArgs = JSON.stringify(args);
  else delete el.dataset.i18nArgs;
  el.textContent = t(key, args);
}

/** Text as HTML text (for the few places that build HTML strings that are then sanitised). */
export function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** Empty an element that held translatable text. */
export function clearText(el) {
  delete el.dataset.i18n;
  delete el.dataset.i18nArgs;
  el.textContent = "";
}
