// Calls to this server's Replicate API with the visitor's own key, shared by the Generate and
// Train pages: JSON in and out (a FormData body goes as multipart, for /v1/files), errors
// turned into the server's own message.

const KEY = "sdxl-playground-api-key"; // in sessionStorage: this tab only, never in the URL
export const POLL_MS = 400;
export const ENDED = ["succeeded", "failed", "canceled"];

let keyRequired = false; // the server runs with SDXL_API_KEYS (from /playground/config)

export function requireKey(required) {
  keyRequired = required;
}

export function apiKey() {
  return sessionStorage.getItem(KEY) || "";
}

export function setApiKey(key) {
  sessionStorage.setItem(KEY, key);
}

export function authHeaders() {
  return keyRequired ? { Authorization: `Bearer ${apiKey()}` } : {};
}

export function missingKey() {
  return keyRequired && !apiKey();
}

export class ApiError extends Error {
  constructor(status, answer) {
    // Replicate's errors have detail and title; OpenAI-shaped ones (the server answers so on
    // paths OpenAI also has, such as /v1/models) an error.message.
    const message = answer.detail || answer.error?.message || answer.title;
    super(message || `the server answered ${status}`);
    this.status = status;
  }
}

export async function api(method, path, body) {
  const headers = authHeaders();
  const multipart = body instanceof FormData; // fetch sets its Content-Type with the boundary
  if (!multipart) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined || multipart ? body : JSON.stringify(body),
  });
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) throw new ApiError(response.status, answer);
  return answer;
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
