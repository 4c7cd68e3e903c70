// The sidebar: earlier chats, and on a narrow screen the drawer that holds them.
//
// * Only chats with a title are listed: a chat gets one with its first question, so a chat
//   that only has a document attached (or was just created) does not show up as "(untitled)".
// * One Tab stop per chat: each chat is one link (its URL); its delete button is for the pointer,
//   and the Delete key deletes the focused chat. Up/Down/Home/End move between chats.
// * Below DRAWER_QUERY the sidebar is a drawer over the conversation: the menu button opens
//   it, Escape, the backdrop or choosing a chat closes it, and while closed it is inert (no
//   Tab stops, hidden from screen readers).

import { apiJson, sessionPath } from "./api.js";
import { h, setText, t } from "./dom.js";
import { newChat, openSession } from "./chat.js";
import { announce, els, on, state } from "./state.js";

const DRAWER_QUERY = window.matchMedia("(max-width: 760px)");

export async function loadSessions() {
  try {
    state.sessions = await apiJson("sessions?limit=100");
  } catch {
    return; // the list is a convenience; a failure here must not disturb the chat
  }
  renderSessions();
}

export function renderSessions() {
  const listed = state.sessions.filter((session) => session.title);
  els.sessionList.replaceChildren(
    ...listed.map((session) => {
      const open = h(
        "a",
        {
          href: `?chat=${encodeURIComponent(session.id)}`, // a real link: open in a new tab works too
          class: "session",
          "data-testid": "session-item",
          "data-session-id": session.id,
          "aria-current": session.id === state.sessionId ? "page" : null,
          "aria-keyshortcuts": "Delete",
          title: new Date(session.updated_at * 1000).toLocaleString(state.lang),
          onclick: (event) => {
            if (event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
            event.preventDefault();
            choose(session.id);
          },
          onkeydown: (event) => onItemKey(event, session.id),
        },
        h("span", { class: "session-title", text: session.title }),
      );
      const remove = h("button", {
        type: "button",
        class: "icon-button",
        tabindex: "-1", // one Tab stop per chat: the Delete key does this from the keyboard
        "data-testid": "delete-session",
        i18nAria: "deleteSession",
        "data-i18n-title": "deleteHint",
        title: t("deleteHint"),
        text: "×",
        onclick: () => deleteSession(session.id),
      });
      return h("li", {}, open, remove);
    }),
  );
  els.noSessions.hidden = listed.length > 0;
  const current = state.sessions.find((session) => session.id === state.sessionId);
  els.chatTitle.textContent = current && current.title ? current.title : "";
}

function choose(sessionId) {
  closeDrawer({ focus: false });
  openSession(sessionId);
}

function onItemKey(event, sessionId) {
  const items = [...els.sessionList.querySelectorAll(".session")];
  const at = items.indexOf(event.currentTarget);
  let next = null;
  if (event.key === "ArrowDown") next = items[Math.min(items.length - 1, at + 1)];
  else if (event.key === "ArrowUp") next = items[Math.max(0, at - 1)];
  else if (event.key === "Home") next = items[0];
  else if (event.key === "End") next = items[items.length - 1];
  else if (event.key === "Delete" || (event.key === "Backspace" && event.metaKey)) {
    event.preventDefault();
    deleteSession(sessionId, items[at + 1] ? at : at - 1);
    return;
  } else return;
  event.preventDefault();
  next?.focus();
}

async function deleteSession(sessionId, focusIndex = null) {
  if (!window.confirm(t("deleteConfirm"))) return;
  try {
    await apiJson(sessionPath(sessionId), { method: "DELETE" });
  } catch (err) {
    announce(t("loadFailed", { message: err.message }));
  }
  if (sessionId === state.sessionId) newChat();
  await loadSessions();
  if (focusIndex !== null) {
    const items = els.sessionList.querySelectorAll(".session");
    (items[Math.max(0, focusIndex)] || els.newChat).focus();
  }
}

// -- the drawer (narrow screens) -----------------------------------------------------------------

function drawerMode() {
  return DRAWER_QUERY.matches;
}

export function openDrawer() {
  if (!drawerMode()) return;
  els.app.classList.add("drawer-open");
  els.sidebar.inert = false;
  els.backdrop.hidden = false;
  els.menu.setAttribute("aria-expanded", "true");
  setText(els.menu.querySelector(".visually-hidden"), "closeMenu");
  const current = els.sessionList.querySelector("[aria-current=page]");
  (current || els.newChat).focus();
}

export function closeDrawer({ focus = true } = {}) {
  if (!drawerMode() || !els.app.classList.contains("drawer-open")) return;
  els.app.classList.remove("drawer-open");
  els.sidebar.inert = true;
  els.backdrop.hidden = true;
  els.menu.setAttribute("aria-expanded", "false");
  setText(els.menu.querySelector(".visually-hidden"), "openMenu");
  if (focus) els.menu.focus();
}

function layout() {
  els.app.classList.remove("drawer-open");
  els.backdrop.hidden = true;
  els.sidebar.inert = drawerMode();
  els.menu.setAttribute("aria-expanded", "false");
}

export function initSidebar() {
  layout();
  DRAWER_QUERY.addEventListener("change", layout);
  els.menu.addEventListener("click", () => {
    if (els.app.classList.contains("drawer-open")) closeDrawer();
    else openDrawer();
  });
  els.backdrop.addEventListener("click", () => closeDrawer());
  els.sidebar.addEventListener("keydown", (event) => {
    if (event.key === "Escape") closeDrawer();
  });
  els.newChat.addEventListener("click", () => {
    closeDrawer({ focus: false });
    newChat();
    els.input.focus();
  });
  on("sessions-changed", loadSessions);
  on("session-created", loadSessions);
  on("chat-changed", renderSessions);
}
