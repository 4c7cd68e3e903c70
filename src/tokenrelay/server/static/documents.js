// Document Q&A: attach a file to the chat, say plainly what did not fit the model, offer the
// preset questions, and title the chat after its document.
//
// A chat that only has a document is not listed in the sidebar (it has no title until its
// first question; sidebar.js lists titled chats only), but it has its URL at once, so a
// reload keeps the document. Its first question then titles it after the document — its
// first heading, else its file name — instead of after a preset question every such chat
// shares. The title waits in sessionStorage meanwhile (the browser has the file's text;
// the server keeps only what the model sees).

import { apiJson, jsonBody, sessionPath } from "./api.js";
import { clearText, h, setText } from "./dom.js";
import { onBeforeSend, startRun } from "./runs.js";
import { STORAGE, canSend, emit, els, state, storageGet, storageSet } from "./state.js";

const TITLE_CHARS = 80;

/** Show the chat's document (null: none): its name, and what was left out when it was cut. */
export function setDocument(doc) {
  state.documentName = doc ? doc.name : null;
  els.documentNotice.hidden = true;
  els.documentNotice.replaceChildren();
  if (!doc) {
    clearText(els.documentName);
  } else if (typeof doc.total_chars === "number") {
    setText(els.documentName, "attached", { name: doc.name, chars: doc.total_chars.toLocaleString() });
  } else {
    setText(els.documentName, "attachedName", { name: doc.name });
  }
  if (doc && doc.truncated) showCut(doc);
  renderPresets();
}

function showCut(doc) {
  const pct = Math.floor((100 * doc.kept_chars) / Math.max(1, doc.total_chars));
  const args = {
    name: doc.name,
    kept: doc.kept_chars.toLocaleString(),
    total: doc.total_chars.toLocaleString(),
    pct,
  };
  els.documentNotice.replaceChildren(
    h("span", { i18n: "truncated", i18nArgs: args }),
    doc.notice ? h("span", { class: "server-notice", text: ` (${doc.notice})` }) : null,
  );
  els.documentNotice.hidden = false;
}

export async function attachDocument(file) {
  if (!file) return;
  const previous = state.documentName;
  setText(els.documentName, "attaching", { name: file.name });
  els.documentNotice.hidden = true;
  state.attaching = true; // a question sent now would race the document
  emit("composer-changed");
  try {
    const content = await file.text();
    if (!state.sessionId) {
      const session = await apiJson("sessions", { method: "POST" });
      state.sessionId = session.id;
      state.sessionTurns = 0;
      emit("session-created", session.id);
    }
    if (state.sessionTurns === 0) {
      storageSet(STORAGE.title + state.sessionId, documentTitle(file.name, content), "sessionStorage");
    }
    const result = await apiJson(`${sessionPath(state.sessionId)}/document`, {
      ...jsonBody({ name: file.name, content }, "PUT"),
    });
    setDocument(result);
  } catch (err) {
    setDocument(previous ? { name: previous } : null);
    const args = { name: file.name, message: err.message };
    els.documentNotice.replaceChildren(h("span", { i18n: "attachFailed", i18nArgs: args }));
    els.documentNotice.hidden = false;
  } finally {
    els.attach.value = "";
    state.attaching = false;
    emit("composer-changed");
  }
}

// A chat's first question: give it the title its document suggested.
onBeforeSend(async () => {
  if (!state.sessionId || state.sessionTurns > 0) return;
  const key = STORAGE.title + state.sessionId;
  const title = storageGet(key, "sessionStorage");
  if (!title) return;
  try {
    await apiJson(sessionPath(state.sessionId), jsonBody({ title }, "PATCH"));
    storageSet(key, null, "sessionStorage");
  } catch {
    // untitled, the server titles the chat after its first question instead
  }
});

/** A title for a chat about this file: its first heading, else its name. */
export function documentTitle(name, content) {
  let text = content;
  if (!/\.(md|markdown|txt|rst|ipynb)$/i.test(name)) return clip(name); // code, data: no headings
  if (/\.ipynb$/i.test(name)) {
    try {
      const cells = JSON.parse(content).cells || [];
      text = cells
        .filter((cell) => cell && cell.cell_type === "markdown")
        .map((cell) => (Array.isArray(cell.source) ? cell.source.join("") : String(cell.source || "")))
        .join("\n\n");
    } catch {
      text = "";
    }
  }
  const lines = text.split(/\r?\n/, 400);
  for (let i = 0; i < lines.length; i++) {
    const atx = /^ {0,3}#{1,6}[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$/.exec(lines[i]);
    if (atx) return clip(atx[1]);
    const underline = lines[i + 1] || "";
    if (lines[i].trim() && /^ {0,3}(=+|-{3,}|~{3,})[ \t]*$/.test(underline)) return clip(lines[i]);
  }
  return clip(name);
}

function clip(text) {
  const line = text.replace(/[*_`]/g, "").split(/\s+/).join(" ").trim();
  return line.length > TITLE_CHARS ? `${line.slice(0, TITLE_CHARS - 1)}…` : line;
}

// -- preset questions ------------------------------------------------------------------------------

export async function loadPresets() {
  try {
    state.presets = await apiJson("presets");
  } catch {
    state.presets = [];
  }
  renderPresets();
}

function pick(localized) {
  if (typeof localized === "string") return localized;
  return (localized && (localized[state.lang] || localized.en || Object.values(localized)[0])) || "";
}

export function renderPresets() {
  const show = Boolean(state.documentName) && state.presets.length > 0;
  els.presets.hidden = !show;
  els.presets.replaceChildren(
    ...(show ? state.presets : []).map((preset) =>
      h("button", {
        type: "button",
        class: "button chip",
        "data-testid": "preset-button",
        "data-preset-id": preset.id,
        disabled: !canSend(),
        text: pick(preset.label),
        onclick: () => {
          startRun(pick(preset.question));
          els.input.focus(); // the follow-up question goes here
        },
      }),
    ),
  );
}
