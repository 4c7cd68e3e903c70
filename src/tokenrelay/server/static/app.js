// The tokenrelay chat page: no build step, no CDN, native ES modules. This one wires the page
// together and starts it; each concern has its module:
//
//   state.js     shared state, elements, storage, the bus modules talk through
//   api.js       HTTP to this server          sse.js     the typed event stream
//   runs.js      a run: start, follow, resume, stop      turn.js / steps.js   drawing a turn
//   markdown.js  Markdown (sanitised)  code.js  code blocks  diagrams.js / diagram-view.js  Mermaid
//   chat.js      the chat on screen and its URL           sidebar.js  chats, the mobile drawer
//   documents.js attached documents, presets, titles      i18n.js / dom.js  words, DOM helpers
//
// Invariants kept across the modules: model output is untrusted (sanitised with DOMPurify or
// set as text, never evaluated); there is no inline script or style (a strict CSP holds);
// each run's events are applied once, in order; Stop cancels the run on the server.

import { apiJson } from "./api.js";
import { chatFromUrl, newChat, openSession, setUrl } from "./chat.js";
import { setText } from "./dom.js";
import { attachDocument, loadPresets, renderPresets } from "./documents.js";
import { LANGUAGES, applyLanguage } from "./i18n.js";
import { startRun, stopRun } from "./runs.js";
import { initSidebar, loadSessions, renderSessions } from "./sidebar.js";
import { STORAGE, canSend, els, on, state, storageGet, storageSet } from "./state.js";

function updateComposer() {
  els.send.disabled = !canSend();
  renderPresets();
}

function setLanguage(lang) {
  state.lang = lang in LANGUAGES ? lang : "en";
  document.documentElement.lang = state.lang;
  els.language.value = state.lang;
  applyLanguage(state.lang);
  renderPresets();
  renderSessions();
}

function showKeyForm(rejected) {
  setText(els.keyMessage, rejected ? "apiKeyInvalid" : "apiKeyPrompt");
  els.keyForm.hidden = false;
  els.keyInput.focus();
}

/** The server's notice (GET /info), if it has one: shown until dismissed, once per text. */
async function showServerNotice() {
  let info;
  try {
    info = await apiJson("info");
  } catch {
    return; // an older server without /info, or none: nothing to say
  }
  const notice = info && typeof info.notice === "string" ? info.notice.trim() : "";
  if (!notice || storageGet(STORAGE.notice) === notice) return;
  els.infoText.textContent = notice; // the operator's words, as text
  els.infoNotice.hidden = false;
  els.infoDismiss.onclick = () => {
    storageSet(STORAGE.notice, notice);
    els.infoNotice.hidden = true;
    els.input.focus();
  };
}

// -- wiring -------------------------------------------------------------------------------------

els.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = els.input.value;
  if (!text.trim() || !canSend()) return;
  els.input.value = "";
  startRun(text);
});
els.input.addEventListener("keydown", (event) => {
  // Enter sends; Shift+Enter is a new line; Enter that confirms an IME conversion does neither
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing && event.keyCode !== 229) {
    event.preventDefault();
    els.composer.requestSubmit();
  }
});
els.stop.addEventListener("click", () => {
  stopRun();
  els.input.focus(); // the Stop button hides itself: the next question goes here
});
els.skip.addEventListener("click", (event) => {
  event.preventDefault(); // focus without changing the address (#input)
  els.input.focus();
});
els.language.addEventListener("change", () => {
  storageSet(STORAGE.lang, els.language.value);
  setLanguage(els.language.value);
});
els.attach.addEventListener("change", () => attachDocument(els.attach.files[0]));
els.keyButton.addEventListener("click", () => showKeyForm(false));
els.keyCancel.addEventListener("click", () => {
  els.keyForm.hidden = true;
});
els.keyForm.addEventListener("submit", (event) => {
  event.preventDefault();
  state.apiKey = els.keyInput.value.trim() || null;
  storageSet(STORAGE.apiKey, state.apiKey);
  els.keyInput.value = "";
  els.keyForm.hidden = true;
  loadSessions();
  loadPresets();
  const chat = chatFromUrl();
  if (chat && chat !== state.sessionId) openSession(chat, { url: "keep" });
});
on("unauthorized", showKeyForm);
on("run-state", updateComposer);
on("composer-changed", updateComposer);
on("session-created", (sessionId) => setUrl(sessionId, { replace: true }));
window.addEventListener("popstate", () => {
  const chat = chatFromUrl();
  if (chat === state.sessionId) return;
  if (chat) openSession(chat, { url: "keep" });
  else newChat({ url: "keep" });
});

// -- start ----------------------------------------------------------------------------------------

initSidebar();
setLanguage(state.lang);
loadPresets();
loadSessions();
showServerNotice();
const initial = chatFromUrl();
if (initial) openSession(initial, { url: "keep" });
document.body.dataset.ready = "1"; // for tests: the page's script has run
