// Which chat is on screen, and its address: every chat has a URL (`?chat=<id>`), so a reload,
// a bookmark or the back button reopens it. A reopened chat is drawn from GET /sessions/{id}:
// its turns with their steps, statuses and cut-off answers, its document (and what was left
// out of it), and — when a run of it is still going — that run, followed live from its start.

import { apiJson, HttpError, sessionPath } from "./api.js";
import { h, t } from "./dom.js";
import { setDocument } from "./documents.js";
import { detachRun, reattach, turnActions } from "./runs.js";
import { announce, emit, els, state } from "./state.js";
import { renderStoredSteps } from "./steps.js";
import { clearMessages, createTurn, scrollToEnd, setAnswer, setStatus, showCutOff, showError } from "./turn.js";

const PARAM = "chat";

/** The chat id in the page's address, if any. */
export function chatFromUrl() {
  return new URLSearchParams(window.location.search).get(PARAM);
}

/** Point the address at a chat (null: a new chat); `replace` keeps the history entry. */
export function setUrl(sessionId, { replace = false } = {}) {
  if (chatFromUrl() === sessionId) return;
  const params = new URLSearchParams(window.location.search);
  if (sessionId) params.set(PARAM, sessionId);
  else params.delete(PARAM);
  const query = params.toString();
  const url = `${window.location.pathname}${query ? `?${query}` : ""}`;
  if (replace) window.history.replaceState({ chat: sessionId }, "", url);
  else window.history.pushState({ chat: sessionId }, "", url);
}

export function newChat({ url = "push" } = {}) {
  detachRun();
  state.loadToken++;
  state.sessionId = null;
  state.sessionTurns = 0;
  setDocument(null);
  clearMessages();
  if (url !== "keep") setUrl(null, { replace: url === "replace" });
  emit("chat-changed", null);
}

/** Show a chat: its history, its document, and its run if one is still going. */
export async function openSession(sessionId, { url = "push" } = {}) {
  if (sessionId === state.sessionId && state.run) return; // already here, and busy
  detachRun();
  const token = ++state.loadToken;
  let session;
  try {
    session = await apiJson(sessionPath(sessionId));
  } catch (err) {
    if (token !== state.loadToken) return;
    if (err instanceof HttpError && err.status === 404) {
      newChat({ url: "replace" });
      showGone();
    } else {
      announce(t("loadFailed", { message: err.message }));
    }
    return;
  }
  if (token !== state.loadToken) return;
  state.sessionId = session.id;
  state.sessionTurns = session.turns.length;
  clearMessages();
  setDocument(session.document_info || (session.document ? { name: session.document } : null));
  if (url !== "keep") setUrl(session.id, { replace: url === "replace" });
  emit("chat-changed", session);
  const finished = session.turns.filter((past) => !(past.run_id && past.run_id === session.active_run_id));
  finished.forEach((past, i) => drawStoredTurn(past, i === finished.length - 1 && !session.active_run_id));
  if (session.active_run_id) {
    const active = session.turns.find((turn) => turn.run_id === session.active_run_id);
    scrollToEnd();
    reattach(session.active_run_id, active ? active.user_text : "");
  }
  scrollToEnd();
}

function drawStoredTurn(past, isLast) {
  const turn = createTurn(past.user_text, turnActions);
  renderStoredSteps(turn, past.steps);
  setAnswer(turn, past.answer || "", true);
  if (past.status === "interrupted" || past.status === "failed") {
    setStatus(turn, past.status, undefined, { badge: true, state: past.status });
    if (past.error) showError(turn, "runFailed", { message: past.error });
  } else if (past.finish_reason === "length") {
    showCutOff(turn, { canContinue: isLast });
  }
}

function showGone() {
  els.messages.append(
    h("p", { class: "notice gone", role: "alert", "data-testid": "chat-gone", i18n: "chatNotFound" }),
  );
}
