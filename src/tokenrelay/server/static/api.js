// HTTP to this server. Paths are relative (no leading slash), so the page also works behind
// a proxy that serves it under a prefix. Every error body of the API is
// {"error": {"message", "type", "code"}}; `apiJson` turns a failure into an HttpError with
// that message. A 401 asks for an API key (the key form listens on the bus).

import { emit, state } from "./state.js";

export class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function authHeaders() {
  return state.apiKey ? { Authorization: `Bearer ${state.apiKey}` } : {};
}

export async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  for (const [name, value] of Object.entries(authHeaders())) headers.set(name, value);
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) emit("unauthorized", Boolean(state.apiKey));
  return response;
}

export async function errorMessage(response) {
  try {
    const body = await response.json();
    return body?.error?.message || body?.detail || `HTTP ${response.status}`;
  } catch {
    return `HTTP ${response.status}`;
  }
}

export async function apiJson(path, options = {}) {
  const response = await api(path, options);
  if (!response.ok) throw new HttpError(response.status, await errorMessage(response));
  return response.status === 204 ? null : response.json();
}

export function jsonBody(value, method = "POST") {
  return { method, body: JSON.stringify(value), headers: { "Content-Type": "application/json" } };
}

export const sessionPath = (id) => `sessions/${encodeURIComponent(id)}`;
export const runPath = (id) => `runs/${encodeURIComponent(id)}`;

/** Fire-and-forget POST that outlives the page (`keepalive`). */
export function postQuietly(path) {
  fetch(path, { method: "POST", headers: authHeaders(), keepalive: true }).catch(() => {});
}
