// One question and its answer on screen: the DOM of a turn and everything drawn into it —
// the answer (Markdown), the progress line shown while nothing of the answer has come yet,
// the status in its footer, errors, and the Copy / Continue / Retry buttons. Live runs
// (runs.js) and reopened chats (chat.js) draw through the same functions, so a reopened
// chat looks like the live answer did. Tool steps and narration: steps.js.
//
// Invariants:
// * model output is untrusted: it reaches the DOM only through markdown.js (sanitised) or
//   as text;
// * the Copy button exists only while there is answer text to copy;
// * the progress line is shown exactly while a run is going and the answer part after the
//   last narration is still empty (waiting is visible, and says on what).

import { copyText } from "./code.js";
import { clearText, h, setText } from "./dom.js";
import { markdownView, renderMarkdown } from "./markdown.js";
import { els } from "./state.js";

let turnCounter = 0;

/** A new turn at the end of the conversation. `actions` get the Retry and Continue clicks. */
export function createTurn(userText, actions = {}) {
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
  const progressLabel = h("span", { class: "progress-label" });
  const progress = h(
    "div",
    { class: "progress", "data-testid": "progress", hidden: true },
    h("span", { class: "spinner", "aria-hidden": "true" }),
    progressLabel,
  );
  const status = h("span", { class: "run-status muted", "data-testid": "run-status" });
  const button = (testid, key, aria, extra = {}) =>
    h("button", { type: "button", "data-testid": testid, i18n: key, i18nAria: aria, hidden: true, ...extra });
  const continueButton = button("continue", "continue", "continueLabel", { class: "button small primary" });
  const copy = button("copy-answer", "copy", "copyLabel", { class: "button ghost small" });
  const retry = button("retry", "retry", "retryLabel", { class: "button small" });
  const steps = h("div", { class: "steps" });
  const errors = h("div", { class: "run-errors" });
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
      reasoning,
      steps,
      progress,
      answer,
      errors,
      h("div", { class: "turn-footer" }, status, continueButton, copy, retry),
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
    progress,
    progressLabel,
    steps,
    group: null, // the step group that narration and tool calls are going into (steps.js)
    toolSteps: new Map(),
    status,
    errors,
    copy,
    retry,
    continueButton,
  };
  copy.addEventListener("click", () => copyText(turn.answerText, copy));
  retry.addEventListener("click", () => {
    retry.hidden = true;
    actions.retry?.(turn);
  });
  continueButton.addEventListener("click", () => {
    continueButton.hidden = true;
    actions.continue?.(turn);
  });
  els.empty.hidden = true;
  els.messages.append(el);
  growth.observe(el);
  return turn;
}

/** Draw the answer text (`final`: the answer will not grow any more). */
export function setAnswer(turn, text, final) {
  turn.answerText = text;
  renderMarkdown(turn.view, text, final);
  turn.answer.classList.toggle("streaming", !final);
  turn.copy.hidden = !text;
}

/** Show what the run is doing while no answer text is there yet; null hides the line. */
export function setProgress(turn, key, args) {
  if (!key) {
    turn.progress.hidden = true;
    return;
  }
  if (turn.progressLabel.dataset.i18n !== key || turn.progressLabel.dataset.i18nArgs !== JSON.stringify(args)) {
    setText(turn.progressLabel, key, args);
  }
  turn.progress.hidden = false;
}

/** The footer's status line; `badge` marks an outcome that needs the reader's attention. */
export function setStatus(turn, key, args, { badge = false, state = null } = {}) {
  if (key) setText(turn.status, key, args);
  else clearText(turn.status);
  turn.status.classList.toggle("badge", badge);
  if (state) turn.status.dataset.state = state;
  else delete turn.status.dataset.state;
}

export function showError(turn, key, args, { retry = false } = {}) {
  turn.errors.append(
    h(
      "div",
      { class: "error-box", role: "alert", "data-testid": "error-box", "data-kind": "run" },
      h("p", { i18n: key, i18nArgs: args }),
    ),
  );
  turn.retry.hidden = !retry;
}

/** The answer stopped at the model's token limit: say so, and offer to continue. */
export function showCutOff(turn, { canContinue = true } = {}) {
  setStatus(turn, "cutOff", undefined, { badge: true, state: "length" });
  turn.continueButton.hidden = !canContinue;
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

export function scrollToEnd() {
  stickToEnd = true;
  els.messages.scrollTop = els.messages.scrollHeight;
}

export function clearMessages() {
  for (const el of [...els.messages.children]) {
    if (el === els.empty) continue;
    growth.unobserve(el);
    el.remove();
  }
  els.empty.hidden = false;
}
