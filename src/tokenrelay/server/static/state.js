// The page's shared state, its elements, and the small services every module uses: local
// storage that tolerates private mode, the screen-reader status line, and a bus on which
// modules announce changes that other modules react to (no module imports one above it).
//
// Invariants:
// * one chat is on screen (`state.sessionId`, null for a new chat), and at most one run is
//   followed (`state.run`); a run of another chat keeps going on the server and is followed
//   again when that chat is reopened;
// * `state.loadToken` bumps whenever the view changes, so a late response for an old view is
//   dropped instead of drawn into the new one.

import { detectLanguage } from "./i18n.js";

export const STORAGE = {
  apiKey: "tokenrelay.apiKey",
  lang: "tokenrelay.lang",
  notice: "tokenrelay.dismissedNotice",
  title: "tokenrelay.pendingTitle.", // + session id: a title waiting for the chat's first question
};

export function storageGet(key, store = "localStorage") {
  try {
    return window[store].getItem(key);
  } catch {
    return null;
  }
}

export function storageSet(key, value, store = "localStorage") {
  try {
    if (value === null) window[store].removeItem(key);
    else window[store].setItem(key, value);
  } catch {
    // private mode: the setting lasts for this page only
  }
}

export const state = {
  lang: detectLanguage(storageGet(STORAGE.lang), navigator.languages || [navigator.language]),
  apiKey: storageGet(STORAGE.apiKey),
  sessionId: null,
  sessionTurns: 0, // turns of the chat on screen (0: nothing asked yet)
  sessions: [],
  presets: [],
  documentName: null,
  run: null, // the run on screen that is still going, if any
  attaching: false, // a document upload is in flight
  loadToken: 0,
};

const $ = (id) => document.getElementById(id);

export const els = {
  app: $("app"),
  sidebar: $("sidebar"),
  backdrop: $("backdrop"),
  menu: $("menu-button"),
  chatTitle: $("chat-title"),
  skip: $("skip-link"),
  infoNotice: $("info-notice"),
  infoText: $("info-text"),
  infoDismiss: $("info-dismiss"),
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

/** Say something to screen readers (the polite status line). */
export function announce(text) {
  els.status.textContent = text;
}

/** Whether a question can be sent now. */
export function canSend() {
  return !state.run && !state.attaching;
}

/** Modules announce changes here: "sessions-changed", "run-state" (detail: running). */
export const bus = new EventTarget();

export function emit(name, detail) {
  bus.dispatchEvent(new CustomEvent(name, { detail }));
}

export function on(name, handler) {
  bus.addEventListener(name, (event) => handler(event.detail));
}

/** Japanese text in it? (the language a follow-up to this chat should be written in) */
export function looksJapanese(text) {
  return /[\u3040-\u30ff\u3400-\u9fff\uff66-\uff9f]/.test(text || "");
}
