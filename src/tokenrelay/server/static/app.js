// The tokenrelay chat page: no build step, no CDN. ES modules: this one is the page's state
// and wiring; markdown.js renders answers (sanitised, incremental, with Mermaid diagrams);
// sse.js reads the typed event stream; i18n.js holds the English and Japanese words.
//
// Invariants:
// * model output is untrusted: HTML made from it goes through DOMPurify (markdown.js), and
//   every other piece of it (tool input and output, reasoning, errors) is set as text only;
// * the streaming answer is re-rendered at most once per animation frame;
// * every event of a run is applied once, in order: events carry their index (`id:`), and a
//   resumed stream (GET /runs/{id}/events with Last-Event-ID) skips what was already seen;
// * Stop cancels the run on the server (POST /runs/{id}/cancel), not only in the browser.

import { clearText, h, setText, t } from "./dom.js";
import { LANGUAGES, applyLanguage, detectLanguage } from "./i18n.js";
import { markdownView, renderMarkdown } from "./markdown.js";
import { readEvents } from "./sse.js";

const KEY_STORAGE = "tokenrelay.apiKey";
const LANG_STORAGE = "tokenrelay.lang";
const MAX_RESUMES = 3;
const CANCEL_GRACE_MS = 5000;

// -- state ------------------------------------------------------------------------------

const state = {
  lang: detectLanguage(storageGet(LANG_STORAGE), navigator.languages || [navigator.language]),
  apiKey: storageGet(KEY_STORAGE),
  sessionId: null,
  sessions: [],
  presets: [],
  documentName: null,
  run: null, // the run in progress, if any
  attaching: false, // a document upload is in flight
  loadToken: 0, // bumps when the view changes, so late responses for an old view are ignored
};

const $ = (id) => document.getElementById(id);
const els = {
  messages: $("messages"),
  empty: $("empty"),
  status: $("status"),
  input: $("input"),
  send: $("send"),
  stop: $("stop"),
  composer: $("composer"),
  newChat: $("new-chat"),
  sessionList: $("session-list"),
  noSessions: $("no-sessions"),
  language: $("language"),
  keyButton: $("key-button"),
  keyForm: $("key-form"),
  keyInput: $("key-input"),
  keyMessage: $("key-message"),
  keyCancel: $("key-cancel"),
  attach: $("attach"),
  documentName: $("document-name"),
  documentNotice: $("document-notice"),
  presets: $("presets"),
};

function storageGet(key) {
  try {
    return window.localStorage.getItem(key);
  } catch {
    return null;
  }
}

function storageSet(key, value) {
  try {
    if (value === null) window.localStorage.removeItem(key);
    else window.localStorage.setItem(key, value);
  } catch {
    // private mode: the setting lasts for this page only
  }
}

function announce(text) {
  els.status.textContent = text;
}

// -- HTTP -------------------------------------------------------------------------------

class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (state.apiKey) headers.set("Authorization", `Bearer ${state.apiKey}`);
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) showKeyForm(Boolean(state.apiKey));
  return response;
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    return body?.error?.message || body?.detail || `HTTP ${response.status}`;
  } catch {
    return `HTTP ${response.status}`;
  }
}

async function apiJson(path, options = {}) {
  const response = await api(path, options);
  if (!response.ok) throw new HttpError(response.status, await errorMessage(response));
  return response.status === 204 ? null : response.json();
}

function jsonBody(value) {
  return { body: JSON.stringify(value), headers: { "Content-Type": "application/json" } };
}

// -- the conversation view -----------------------------------------------------------------

let turnCounter = 0;

/** One question and its answer: the DOM and the render state of its answer. */
function createTurn(userText) {
  const n = ++turnCounter;
  const answer = h("div", { class: "answer markdown", "data-testid": "answer" });
  const reasoningText = h("pre", { class: "reasoning-text", id: `reasoning-${n}`, hidden: true });
  const reasoningToggle = h("button", {
    type: "button",
    class: "link-button",
    "data-testid": "reasoning-toggle",
    "aria-expanded": "false",
    "aria-controls": `reasoning-${n}`,
    i18n: "showReasoning",
  });
  const reasoning = h("div", { class: "reasoning", hidden: true }, reasoningToggle, reasoningText);
  reasoningToggle.addEventListener("click", () => {
    const open = reasoningText.hidden;
    reasoningText.hidden = !open;
    reasoningToggle.setAttribute("aria-expanded", String(open));
    setText(reasoningToggle, open ? "hideReasoning" : "showReasoning");
  });
  const steps = h("div", { class: "steps" });
  const status = h("span", { class: "run-status muted", "data-testid": "run-status" });
  const copy = h("button", {
    type: "button",
    class: "button ghost small",
    "data-testid": "copy-answer",
    i18n: "copy",
    i18nAria: "copyLabel",
  });
  const retry = h("button", {
    type: "button",
    class: "button small",
    "data-testid": "retry",
    i18n: "retry",
    i18nAria: "retryLabel",
    hidden: true,
  });
  const errors = h("div", { class: "run-errors" });
  const footer = h("div", { class: "turn-footer" }, status, copy, retry);
  const el = h(
    "article",
    { class: "turn", "data-testid": "turn" },
    h(
      "div",
      { class: "user" },
      h("div", { class: "role", i18n: "you" }),
      h("div", { class: "bubble", text: userText }),
    ),
    h(
      "div",
      { class: "assistant" },
      h("div", { class: "role", i18n: "assistant" }),
      steps,
      reasoning,
      answer,
      errors,
      footer,
    ),
  );
  const turn = {
    el,
    userText,
    answerText: "",
    view: markdownView(answer),
    answer,
    reasoning,
    reasoningText,
    steps,
    toolSteps: new Map(),
    status,
    errors,
    retry,
  };
  copy.addEventListener("click", () => copyAnswer(turn, copy));
  retry.addEventListener("click", () => {
    retry.hidden = true;
    startRun(turn.userText);
  });
  els.empty.hidden = true;
  els.messages.append(el);
  growth.observe(el);
  return turn;
}

function setAnswer(turn, text, final) {
  turn.answerText = text;
  renderMarkdown(turn.view, text, final);
  turn.answer.classList.toggle("streaming", !final);
}

function showError(turn, key, args, { retry = false } = {}) {
  turn.errors.append(
    h(
      "div",
      { class: "error-box", role: "alert", "data-testid": "error-box", "data-kind": "run" },
      h("p", { i18n: key, i18nArgs: args }),
    ),
  );
  turn.retry.hidden = !retry;
}

async function copyAnswer(turn, button) {
  const text = turn.answerText;
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

function addToolStep(turn, data) {
  const status = h("span", { class: "tool-state", i18n: "toolRunning" });
  const result = h("pre", { class: "tool-result" });
  const resultLabel = h("div", { class: "tool-label", i18n: "toolResult", hidden: true });
  const step = h(
    "details",
    { class: "tool-step", "data-testid": "tool-step", "data-state": "running" },
    h(
      "summary",
      {},
      h("span", { class: "tool-name", i18n: "tool", i18nArgs: { name: data.name } }),
      " ",
      status,
    ),
    h("div", { class: "tool-label", i18n: "toolInput" }),
    h("pre", { class: "tool-input", text: formatArguments(data.arguments) }),
    resultLabel,
    result,
  );
  step.open = true; // open while it runs, so the user sees what is happening
  turn.steps.append(step);
  turn.toolSteps.set(data.call_id, { step, status, result, resultLabel });
}

function finishToolStep(turn, data) {
  let entry = turn.toolSteps.get(data.call_id);
  if (!entry) {
    addToolStep(turn, { call_id: data.call_id, name: data.name, arguments: "" });
    entry = turn.toolSteps.get(data.call_id);
  }
  const failed = data.error !== null && data.error !== undefined;
  entry.step.dataset.state = failed ? "error" : "done";
  setText(entry.status, failed ? "toolFailed" : "toolDone");
  setText(entry.resultLabel, failed ? "toolError" : "toolResult");
  entry.resultLabel.hidden = false;
  entry.result.textContent = failed ? data.error : data.result;
  entry.step.open = false;
}

function formatArguments(value) {
  if (typeof value === "string") return value;
  try {
    return JSON.stringify(value, null, 2);
  } catch {
    return String(value);
  }
}

// Follow the end of the conversation while the reader is there: content that grows later (a
// streaming answer, a diagram drawn after the answer ended) keeps it in view; scrolling up
// to read stops that until the reader scrolls back down.
let stickToEnd = true;
const growth = new ResizeObserver(() => {
  if (stickToEnd) els.messages.scrollTop = els.messages.scrollHeight;
});
els.messages.addEventListener("scroll", () => {
  const box = els.messages;
  stickToEnd = box.scrollHeight - box.scrollTop - box.clientHeight < 80;
});

function scrollToEnd() {
  stickToEnd = true;
  els.messages.scrollTop = els.messages.scrollHeight;
}

function clearMessages() {
  for (const el of [...els.messages.children]) {
    if (el === els.empty) continue;
    growth.unobserve(el);
    el.remove();
  }
  els.empty.hidden = false;
}

// -- a run --------------------------------------------------------------------------------

function setRunning(running) {
  els.stop.hidden = !running;
  els.stop.disabled = false;
  setText(els.stop, "stop");
  els.messages.setAttribute("aria-busy", String(running));
  updateComposer();
}

/** Sending is possible when no answer is streaming and no document is being attached. */
function canSend() {
  return !state.run && !state.attaching;
}

function updateComposer() {
  els.send.disabled = !canSend();
  for (const button of els.presets.querySelectorAll("button")) button.disabled = !canSend();
}

async function startRun(text) {
  text = text.trim();
  if (!text || !canSend()) return;
  const turn = createTurn(text);
  scrollToEnd();
  const run = {
    turn,
    text,
    runId: null,
    lastId: null,
    answer: "",
    reasoning: "",
    frame: 0,
    finished: false,
    abandoned: false,
    stopRequested: false,
    controller: new AbortController(),
  };
  state.run = run;
  setRunning(true);
  turn.answer.classList.add("streaming");
  try {
    let response = null;
    try {
      // resumable: a dropped connection leaves the run going, to be resumed by id (follow);
      // leaving the chat or the page cancels it explicitly (abandonRun, pagehide)
      const body = { text, mode: "full", resumable: true };
      if (state.sessionId) body.session_id = state.sessionId;
      response = await api("chat/events", {
        method: "POST",
        ...jsonBody(body),
        headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
        signal: run.controller.signal,
      });
    } catch (err) {
      if (!run.abandoned) connectionLost(run);
      return;
    }
    if (!response.ok) {
      finishRun(run);
      showError(turn, "requestFailed", { message: await errorMessage(response) }, {
        retry: response.status >= 500 || response.status === 401,
      });
      return;
    }
    run.runId = response.headers.get("X-Run-Id");
    if (run.abandoned) return cancelQuietly(run);
    const sessionId = response.headers.get("X-Session-Id");
    if (sessionId && sessionId !== state.sessionId) {
      state.sessionId = sessionId;
      loadSessions();
    }
    if (run.stopRequested) cancelOnServer(run);
    await follow(run, response);
  } finally {
    if (state.run === run && (run.finished || run.abandoned)) {
      state.run = null;
      setRunning(false);
    }
  }
}

/** Read a run's events until its terminal event, resuming after a broken connection. */
async function follow(run, response) {
  for (let failures = 0; ; ) {
    if (response) {
      try {
        for await (const frame of readEvents(response)) {
          failures = 0;
          handleEvent(run, frame);
          if (run.finished || run.abandoned) return;
        }
      } catch {
        // the connection broke: resume below
      }
      if (run.finished || run.abandoned) return;
      response = null;
      failures += 1;
    }
    if (!run.runId || failures > MAX_RESUMES) return connectionLost(run);
    if (failures) {
      setText(run.turn.status, "reconnecting");
      await sleep(250 * failures);
      if (run.abandoned) return;
    }
    try {
      const headers = { Accept: "text/event-stream" };
      if (run.lastId !== null) headers["Last-Event-ID"] = String(run.lastId);
      const resumed = await api(`runs/${encodeURIComponent(run.runId)}/events`, {
        headers,
        signal: run.controller.signal,
      });
      if (resumed.ok) response = resumed;
      else if (resumed.status < 500) return connectionLost(run);
      else failures += 1;
    } catch {
      if (run.abandoned) return;
      failures += 1;
    }
  }
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function handleEvent(run, { event, data, id }) {
  if (id !== null && !Number.isNaN(id)) {
    if (run.lastId !== null && id <= run.lastId) return; // already applied (a resumed stream)
    run.lastId = id;
  }
  const turn = run.turn;
  switch (event) {
    case "run_started":
      run.runId = run.runId || data.run_id;
      if (turn.status.dataset.i18n === "reconnecting") clearText(turn.status);
      break;
    case "answer_delta":
      run.answer += data.text;
      scheduleFrame(run);
      break;
    case "reasoning_delta":
      run.reasoning += data.text;
      turn.reasoning.hidden = false;
      scheduleFrame(run);
      break;
    case "tool_call_started":
      addToolStep(turn, data);
      break;
    case "tool_call_finished":
      finishToolStep(turn, data);
      break;
    case "run_finished":
      run.answer = typeof data.answer === "string" ? data.answer : run.answer;
      finishRun(run);
      if (data.timings && typeof data.timings.total_s === "number") {
        setText(turn.status, "finishedIn", { seconds: data.timings.total_s.toFixed(1) });
      }
      announce(t("answerDone"));
      loadSessions();
      break;
    case "error":
      if (typeof data.answer === "string" && data.answer.length >= run.answer.length) {
        run.answer = data.answer; // the server's partial answer is authoritative
      }
      finishRun(run);
      if (data.code === "cancelled" && run.stopRequested) {
        setText(turn.status, "stopped");
        announce(t("stopped"));
      } else if (data.code === "cancelled") {
        showError(turn, "cancelledElsewhere", undefined, { retry: true });
      } else {
        showError(turn, "runFailed", { message: data.message || data.code || "error" }, { retry: true });
      }
      loadSessions();
      break;
    default:
      break; // an event type this page does not know yet
  }
}

function scheduleFrame(run) {
  if (run.frame) return;
  run.frame = requestAnimationFrame(() => {
    run.frame = 0;
    paint(run, false);
  });
}

function paint(run, final) {
  const turn = run.turn;
  if (run.answer !== turn.answerText || final) setAnswer(turn, run.answer, final);
  if (turn.reasoningText.textContent.length !== run.reasoning.length) {
    turn.reasoningText.textContent = run.reasoning;
  }
  if (turn.status.dataset.i18n === "reconnecting") clearText(turn.status);
}

function finishRun(run) {
  if (run.frame) cancelAnimationFrame(run.frame);
  run.frame = 0;
  run.finished = true;
  paint(run, true);
  if (state.run === run) {
    state.run = null;
    setRunning(false);
  }
}

function connectionLost(run) {
  if (run.finished) return;
  finishRun(run);
  clearText(run.turn.status);
  showError(run.turn, "connectionLost", undefined, { retry: true });
}

async function stopRun() {
  const run = state.run;
  if (!run || run.stopRequested) return;
  run.stopRequested = true;
  els.stop.disabled = true;
  setText(els.stop, "stopping");
  if (run.runId) await cancelOnServer(run);
  // otherwise startRun cancels as soon as the server has told us the run's id
}

/** Cancel on the server (the model stops generating); the stream then ends with `error`. */
async function cancelOnServer(run) {
  const giveUp = () => {
    if (run.finished) return;
    // the server did not confirm in time: stop following; the cancel may still land
    run.abandoned = true;
    run.controller.abort();
    finishRun(run);
    setText(run.turn.status, "stopped");
  };
  setTimeout(giveUp, CANCEL_GRACE_MS);
  try {
    const response = await api(`runs/${encodeURIComponent(run.runId)}/cancel`, { method: "POST" });
    if (!response.ok && response.status !== 404) giveUp();
  } catch {
    giveUp();
  }
}

/** Leave the current run (another chat, a new chat): cancel it and stop following it. */
function abandonRun() {
  const run = state.run;
  if (!run) return;
  cancelQuietly(run);
  run.abandoned = true;
  run.controller.abort();
  if (run.frame) cancelAnimationFrame(run.frame);
  state.run = null;
  setRunning(false);
}

/** Fire-and-forget cancel that outlives the page (`keepalive`), for pagehide. */
function cancelQuietly(run) {
  if (!run.runId || run.finished) return;
  const headers = state.apiKey ? { Authorization: `Bearer ${state.apiKey}` } : {};
  fetch(`runs/${encodeURIComponent(run.runId)}/cancel`, { method: "POST", headers, keepalive: true }).catch(
    () => {},
  );
}

// -- sessions -------------------------------------------------------------------------------

async function loadSessions() {
  try {
    state.sessions = await apiJson("sessions?limit=100");
  } catch {
    return; // the list is a convenience; a failure here must not disturb the chat
  }
  renderSessions();
}

function renderSessions() {
  els.sessionList.replaceChildren(
    ...state.sessions.map((session) => {
      const title = session.title || t("untitled");
      const open = h(
        "button",
        {
          type: "button",
          class: "session",
          "data-testid": "session-item",
          "data-session-id": session.id,
          "aria-current": session.id === state.sessionId ? "page" : null,
          title: new Date(session.updated_at * 1000).toLocaleString(state.lang),
          onclick: () => openSession(session.id),
        },
        h("span", { class: "session-title", text: title }),
      );
      const remove = h("button", {
        type: "button",
        class: "icon-button",
        "data-testid": "delete-session",
        i18nAria: "deleteSession",
        "data-i18n-title": "deleteSession",
        title: t("deleteSession"),
        text: "×",
        onclick: () => deleteSession(session.id),
      });
      return h("li", {}, open, remove);
    }),
  );
  els.noSessions.hidden = state.sessions.length > 0;
}

function newChat() {
  abandonRun();
  state.loadToken++;
  state.sessionId = null;
  setDocument(null);
  clearMessages();
  renderSessions();
  els.input.focus();
}

async function openSession(sessionId) {
  if (sessionId === state.sessionId && state.run) return; // already here, and busy
  abandonRun();
  const token = ++state.loadToken;
  let session;
  try {
    session = await apiJson(`sessions/${encodeURIComponent(sessionId)}`);
  } catch (err) {
    announce(t("loadFailed", { message: err.message }));
    return;
  }
  if (token !== state.loadToken) return;
  state.sessionId = session.id;
  clearMessages();
  setDocument(session.document ? { name: session.document } : null);
  renderSessions();
  for (const past of session.turns) {
    if (past.run_id && past.run_id === session.active_run_id) continue;
    const turn = createTurn(past.user_text);
    setAnswer(turn, past.answer || "", true);
    if (past.status === "interrupted" || past.status === "failed") {
      turn.status.classList.add("badge");
      setText(turn.status, past.status);
      if (past.error) showError(turn, "runFailed", { message: past.error });
    }
  }
  if (session.active_run_id) {
    const active = session.turns.find((turn) => turn.run_id === session.active_run_id);
    reattach(session.active_run_id, active ? active.user_text : "");
  }
  scrollToEnd();
}

/** Follow a run that is still going (a reopened chat), from its first event. */
async function reattach(runId, userText) {
  const turn = createTurn(userText);
  const run = {
    turn,
    text: userText,
    runId,
    lastId: null,
    answer: "",
    reasoning: "",
    frame: 0,
    finished: false,
    abandoned: false,
    stopRequested: false,
    controller: new AbortController(),
  };
  state.run = run;
  setRunning(true);
  setText(turn.status, "running");
  await follow(run, null);
}

async function deleteSession(sessionId) {
  if (!window.confirm(t("deleteConfirm"))) return;
  try {
    await apiJson(`sessions/${encodeURIComponent(sessionId)}`, { method: "DELETE" });
  } catch (err) {
    announce(t("loadFailed", { message: err.message }));
  }
  if (sessionId === state.sessionId) newChat();
  loadSessions();
}

// -- documents and presets --------------------------------------------------------------------

function setDocument(doc) {
  state.documentName = doc ? doc.name : null;
  els.documentNotice.hidden = true;
  els.documentNotice.textContent = "";
  if (!doc) {
    clearText(els.documentName);
  } else if (doc.total_chars !== undefined) {
    setText(els.documentName, "attached", { name: doc.name, chars: doc.total_chars.toLocaleString() });
  } else {
    setText(els.documentName, "attachedName", { name: doc.name });
  }
  renderPresets();
}

async function attachDocument(file) {
  if (!file) return;
  const previous = state.documentName;
  setText(els.documentName, "attaching", { name: file.name });
  els.documentNotice.hidden = true;
  state.attaching = true; // a question sent now would race the document
  updateComposer();
  try {
    const content = await file.text();
    if (!state.sessionId) {
      const session = await apiJson("sessions", { method: "POST" });
      state.sessionId = session.id;
    }
    const result = await apiJson(`sessions/${encodeURIComponent(state.sessionId)}/document`, {
      method: "PUT",
      ...jsonBody({ name: file.name, content }),
    });
    setDocument(result);
    if (result.truncated) {
      const pct = Math.floor((100 * result.kept_chars) / Math.max(1, result.total_chars));
      const args = {
        name: result.name,
        kept: result.kept_chars.toLocaleString(),
        total: result.total_chars.toLocaleString(),
        pct,
      };
      els.documentNotice.replaceChildren(
        h("span", { i18n: "truncated", i18nArgs: args }),
        result.notice ? h("span", { class: "server-notice", text: ` (${result.notice})` }) : null,
      );
      els.documentNotice.hidden = false;
    }
    loadSessions();
  } catch (err) {
    setDocument(previous ? { name: previous } : null);
    const args = { name: file.name, message: err.message };
    els.documentNotice.replaceChildren(h("span", { i18n: "attachFailed", i18nArgs: args }));
    els.documentNotice.hidden = false;
  } finally {
    els.attach.value = "";
    state.attaching = false;
    updateComposer();
  }
}

async function loadPresets() {
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

function renderPresets() {
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
        onclick: () => startRun(pick(preset.question)),
      }),
    ),
  );
}

// -- language and API key ------------------------------------------------------------------------

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

// -- wiring --------------------------------------------------------------------------------------

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
els.stop.addEventListener("click", stopRun);
window.addEventListener("pagehide", () => {
  if (state.run) cancelQuietly(state.run); // closing the tab stops the model too
});
els.newChat.addEventListener("click", newChat);
els.language.addEventListener("change", () => {
  storageSet(LANG_STORAGE, els.language.value);
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
  storageSet(KEY_STORAGE, state.apiKey);
  els.keyInput.value = "";
  els.keyForm.hidden = true;
  loadSessions();
  loadPresets();
});

setLanguage(state.lang);
loadPresets();
loadSessions();
document.body.dataset.ready = "1"; // for tests: the page's script has run
