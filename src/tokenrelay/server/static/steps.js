// The steps of a turn, above its answer: what the model said before it acted (narration) and
// the tools it called, in order, grouped as ChatGPT-style pages show them — the narration on
// top, the tool calls it led to below it.
//
// A `narration` event re-labels answer text already on screen: it was the model speaking
// before a tool call, not the answer. The text moves out of the answer into a new step group
// that sits exactly where the answer was (the steps are directly above the answer), and its
// DOM moves with it (moveView), so nothing is drawn twice and nothing flickers. A group takes
// the tool calls that follow until answer text comes again.

import { h, setText } from "./dom.js";
import { markdownView, moveView, renderMarkdown } from "./markdown.js";

function newGroup(turn) {
  const group = { el: h("div", { class: "step-group", "data-testid": "step-group" }), open: true };
  turn.steps.append(group.el);
  turn.group = group;
  return group;
}

/** Narration before a tool call; `answerView` (with the text on screen) hands over its DOM. */
export function addNarration(turn, text, answerView = null) {
  const group = newGroup(turn);
  if (!text.trim()) {
    // only white space before the call (a line break): nothing to show above it
    if (answerView) {
      answerView.el.replaceChildren();
      answerView.blocks = [];
    }
    return;
  }
  const el = h("div", { class: "narration markdown", "data-testid": "narration" });
  group.el.append(el);
  const view = markdownView(el);
  if (answerView) moveView(answerView, view, text);
  else renderMarkdown(view, text, true);
}

/** Answer text came: later tool calls start a group of their own. */
export function closeGroup(turn) {
  if (turn.group) turn.group.open = false;
}

export function addToolStep(turn, data) {
  const group = turn.group && turn.group.open ? turn.group : newGroup(turn);
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
  step.open = true; // open while it runs, so the reader sees what is happening
  group.el.append(step);
  turn.toolSteps.set(data.call_id, { step, status, result, resultLabel, name: data.name });
}

export function finishToolStep(turn, data) {
  let entry = turn.toolSteps.get(data.call_id);
  if (!entry) {
    addToolStep(turn, { call_id: data.call_id, name: data.name, arguments: data.arguments ?? "" });
    entry = turn.toolSteps.get(data.call_id);
  }
  const failed = data.error !== null && data.error !== undefined;
  entry.step.dataset.state = failed ? "error" : "done";
  setText(entry.status, failed ? "toolFailed" : "toolDone");
  setText(entry.resultLabel, failed ? "toolError" : "toolResult");
  entry.resultLabel.hidden = false;
  entry.result.textContent = failed ? String(data.error) : String(data.result ?? "");
  entry.step.open = false;
}

/** The stored steps of a finished turn (GET /sessions/{id}), drawn as the live run drew them. */
export function renderStoredSteps(turn, steps) {
  if (!Array.isArray(steps)) return;
  for (const step of steps) {
    if (step && step.type === "narration" && typeof step.text === "string") {
      addNarration(turn, step.text);
    } else if (step && step.type === "tool") {
      addToolStep(turn, step);
      finishToolStep(turn, step);
    }
  }
  closeGroup(turn);
}

function formatArguments(value) {
  if (typeof value === "string") return value;
  try {
    return JSON.stringify(value, null, 2);
  } catch {
    return String(value);
  }
}
