// A run on screen: start it (POST /chat/events), read its typed events, resume it after a
// broken connection or a reload, stop it.
//
// Invariants:
// * every event of a run is applied once, in order: events carry their index (`id:`), and a
//   resumed stream (GET /runs/{id}/events with Last-Event-ID) skips what was already seen;
// * the answer is re-rendered at most once per animation frame;
// * `run.answer` is the final answer so far: answer text minus what `narration` events took
//   out (the same text `run_finished.answer` and the stored turn hold); `run.segment` is
//   where the text after the last narration starts;
// * runs are started resumable: a dropped connection, a reload, another chat or a closed
//   tab leave the run going on the server, and reopening its chat follows it again. Only
//   Stop cancels it (POST /runs/{id}/cancel), and the model then stops generating.
//
// The resume uses fetch, not EventSource: EventSource cannot send the Authorization header
// that a server with API keys needs, and it hides the HTTP status (a 404 for a forgotten run
// would look like a network error to retry forever). The page does what EventSource does
// by itself: it reconnects with Last-Event-ID and drops frames it already has.

import { api, errorMessage, jsonBody, runPath } from "./api.js";
import { clearText, t } from "./dom.js";
import { translate } from "./i18n.js";
import { readEvents } from "./sse.js";
import { announce, canSend, emit, els, looksJapanese, state } from "./state.js";
import { addNarration, addToolStep, closeGroup, finishToolStep } from "./steps.js";
import { createTurn, setAnswer, setProgress, setStatus, showCutOff, showError } from "./turn.js";

const MAX_RESUMES = 3;
const CANCEL_GRACE_MS = 5000;

export const turnActions = {
  retry: (turn) => canSend() && startRun(turn.userText),
  continue: (turn) => canSend() && startRun(continuePrompt(turn)),
};

/** The follow-up that asks for the rest of a cut-off answer, in the chat's language. */
export function continuePrompt(turn) {
  const japanese = looksJapanese(turn.userText) || looksJapanese(turn.answerText);
  return translate(japanese ? "ja" : "en", "continuePrompt");
}

/** The state of following one run into `turn` (exported for the page tests). */
export function createRun(turn, runId = null) {
  return {
    turn,
    runId,
    lastId: null,
    answer: "",
    segment: 0,
    listed: false, // the sidebar was refreshed once the run had begun (its chat has a title then)
    reasoning: "",
    frame: 0,
    finished: false,
    detached: false,
    stopRequested: false,
    waiting: ["progressThinking"], // what the progress line says while no answer text shows
    controller: new AbortController(),
  };
}

function setRunning(run, running) {
  if (running) state.run = run;
  else if (state.run === run) state.run = null;
  else return; // a run no longer on screen (detached): the controls belong to another
  els.stop.hidden = !running;
  els.stop.disabled = false;
  els.stop.dataset.i18n = "stop";
  els.stop.textContent = t("stop");
  els.messages.setAttribute("aria-busy", String(running));
  emit("run-state", running);
}

/** Send a question in the chat on screen and follow its answer. */
export async function startRun(text) {
  const turn = createTurn(text, turnActions);
  const run = createRun(turn);
  setRunning(run, true);
  turn.answer.classList.add("streaming");
  paintProgress(run);
  const sessionId = state.sessionId; // the chat asked in, even if the reader moves on meanwhile
  try {
    let response;
    try {
      await runBeforeSend(); // e.g. a chat's first question titles it (documents.js)
      const body = { text, mode: "full", resumable: true };
      if (sessionId) body.session_id = sessionId;
      response = await api("chat/events", {
        ...jsonBody(body),
        headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
        signal: run.controller.signal,
      });
    } catch {
      if (!run.detached) connectionLost(run);
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
    const created = response.headers.get("X-Session-Id");
    if (!run.detached) {
      if (created && created !== state.sessionId) {
        state.sessionId = created;
        emit("session-created", created);
      }
      state.sessionTurns += 1;
    }
    if (run.stopRequested) cancelOnServer(run);
    await follow(run, response);
  } finally {
    if (run.finished || run.detached) setRunning(run, false);
  }
}

/** Hooks awaited before a question is sent; they handle their own errors. */
const beforeSend = [];
export function onBeforeSend(hook) {
  beforeSend.push(hook);
}
async function runBeforeSend() {
  for (const hook of beforeSend) await hook();
}

/** Follow a run that is still going (a reopened or reloaded chat), from its first event. */
export async function reattach(runId, userText) {
  const turn = createTurn(userText, turnActions);
  const run = createRun(turn, runId);
  setRunning(run, true);
  turn.answer.classList.add("streaming");
  paintProgress(run);
  try {
    await follow(run, null);
  } finally {
    if (run.finished || run.detached) setRunning(run, false);
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
          if (run.finished || run.detached) return;
        }
      } catch {
        // the connection broke: resume below
      }
      if (run.finished || run.detached) return;
      response = null;
      failures += 1;
    }
    if (!run.runId || failures > MAX_RESUMES) return connectionLost(run);
    if (failures) {
      setStatus(run.turn, "reconnecting");
      await sleep(250 * failures);
      if (run.detached) return;
    }
    try {
      const headers = { Accept: "text/event-stream" };
      if (run.lastId !== null) headers["Last-Event-ID"] = String(run.lastId);
      const resumed = await api(`${runPath(run.runId)}/events`, { headers, signal: run.controller.signal });
      if (resumed.ok) response = resumed;
      else if (resumed.status < 500) return connectionLost(run);
      else failures += 1;
    } catch {
      if (run.detached) return;
      failures += 1;
    }
  }
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export function handleEvent(run, { event, data, id }) {
  if (id !== null && !Number.isNaN(id)) {
    if (run.lastId !== null && id <= run.lastId) return; // already applied (a resumed stream)
    run.lastId = id;
  }
  const turn = run.turn;
  if (!run.listed && event !== "run_started") {
    run.listed = true;
    emit("sessions-changed");
  }
  switch (event) {
    case "run_started":
      run.runId = run.runId || data.run_id;
      if (turn.status.dataset.i18n === "reconnecting") setStatus(turn, null);
      paintProgress(run);
      break;
    case "answer_delta":
      run.answer += data.text;
      if (data.text) closeGroup(turn);
      scheduleFrame(run);
      break;
    case "reasoning_delta":
      run.reasoning += data.text;
      turn.reasoning.hidden = false;
      scheduleFrame(run);
      break;
    case "narration":
      foldNarration(run, typeof data.text === "string" ? data.text : "");
      break;
    case "tool_call_started":
      addToolStep(turn, data);
      run.waiting = ["progressTool", { name: data.name }];
      paintProgress(run);
      break;
    case "tool_call_finished":
      finishToolStep(turn, data);
      run.waiting = ["progressResult", { name: data.name }];
      paintProgress(run);
      break;
    case "run_finished":
      if (typeof data.answer === "string") run.answer = data.answer;
      run.segment = Math.min(run.segment, run.answer.length);
      finishRun(run);
      if (data.finish_reason === "length") {
        showCutOff(turn);
        announce(`${t("cutOff")} ${t("continue")}`);
      } else {
        if (data.timings && typeof data.timings.total_s === "number") {
          setStatus(turn, "finishedIn", { seconds: data.timings.total_s.toFixed(1) });
        }
        announce(t("answerDone"));
      }
      emit("sessions-changed");
      break;
    case "error":
      if (typeof data.answer === "string" && data.answer.length >= run.answer.length) {
        run.answer = data.answer; // the server's partial answer is authoritative
      }
      finishRun(run);
      if (data.code === "cancelled" && run.stopRequested) {
        setStatus(turn, "stopped", undefined, { badge: true, state: "interrupted" });
        announce(t("stopped"));
      } else if (data.code === "cancelled") {
        setStatus(turn, "interrupted", undefined, { badge: true, state: "interrupted" });
        showError(turn, "cancelledElsewhere", undefined, { retry: true });
      } else {
        showError(turn, "runFailed", { message: data.message || data.code || "error" }, { retry: true });
      }
      emit("sessions-changed");
      break;
    default:
      break; // an event type this page does not know yet
  }
}

/** Move the narration (the tail of the answer text since the last narration) into a step. */
function foldNarration(run, text) {
  const start = run.answer.length - text.length;
  if (!text || start < run.segment || !run.answer.endsWith(text)) return; // not ours: leave it shown
  if (run.frame) {
    cancelAnimationFrame(run.frame); // draw what is pending first, so the move is of what is seen
    run.frame = 0;
    paint(run, false);
  }
  const turn = run.turn;
  const whole = start === 0;
  run.answer = run.answer.slice(0, start);
  run.segment = run.answer.length;
  run.waiting = ["progressThinking"];
  // the usual case: everything on screen is the narration, so its DOM moves as it is
  addNarration(turn, text, whole ? turn.view : null);
  if (!whole || turn.answerText !== run.answer) setAnswer(turn, run.answer, false);
  else turn.answerText = run.answer;
  turn.copy.hidden = !run.answer;
  paintProgress(run);
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
  if (turn.status.dataset.i18n === "reconnecting") setStatus(turn, null);
  paintProgress(run);
}

function paintProgress(run) {
  const waiting = !run.finished && run.answer.length === run.segment;
  setProgress(run.turn, waiting ? run.waiting[0] : null, run.waiting[1]);
}

function finishRun(run) {
  if (run.frame) cancelAnimationFrame(run.frame);
  run.frame = 0;
  run.finished = true;
  paint(run, true);
  setRunning(run, false);
}

function connectionLost(run) {
  if (run.finished) return;
  finishRun(run);
  clearText(run.turn.status);
  showError(run.turn, "connectionLost", undefined, { retry: true });
}

/** Stop: cancel the run on the server; its stream then ends with `error` (cancelled). */
export async function stopRun() {
  const run = state.run;
  if (!run || run.stopRequested) return;
  run.stopRequested = true;
  els.stop.disabled = true;
  els.stop.dataset.i18n = "stopping";
  els.stop.textContent = t("stopping");
  if (run.runId) await cancelOnServer(run);
  // otherwise startRun cancels as soon as the server has told us the run's id
}

async function cancelOnServer(run) {
  const giveUp = () => {
    if (run.finished) return;
    // the server did not confirm in time: stop following; the cancel may still land
    run.detached = true;
    run.controller.abort();
    finishRun(run);
    setStatus(run.turn, "stopped", undefined, { badge: true, state: "interrupted" });
  };
  setTimeout(giveUp, CANCEL_GRACE_MS);
  try {
    const response = await api(`${runPath(run.runId)}/cancel`, { method: "POST" });
    if (!response.ok && response.status !== 404) giveUp();
  } catch {
    giveUp();
  }
}

/** Stop following the run on screen (another chat, a new chat); it goes on on the server. */
export function detachRun() {
  const run = state.run;
  if (!run) return;
  run.detached = true;
  run.controller.abort();
  if (run.frame) cancelAnimationFrame(run.frame);
  setRunning(run, false);
}
