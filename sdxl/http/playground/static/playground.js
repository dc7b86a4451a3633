// The playground: the form, the API key, a prediction through this server's Replicate API
// (created, polled for its logs and progress, cancelled), its images, and the code for it.

import { LANGUAGES } from "./code.js";
import { InputForm } from "./form.js";

const KEY = "sdxl-playground-api-key"; // in sessionStorage: this tab only, never in the URL
const POLL_MS = 400;
const ENDED = ["succeeded", "failed", "canceled"];
const $ = (id) => document.getElementById(id);

const state = { config: null, form: null, prediction: null, language: "javascript" };

function apiKey() {
  return sessionStorage.getItem(KEY) || "";
}

async function api(method, path, body) {
  const headers = { "Content-Type": "application/json" };
  if (state.config.auth) headers.Authorization = `Bearer ${apiKey()}`;
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) throw new ApiError(response.status, answer);
  return answer;
}

class ApiError extends Error {
  constructor(status, answer) {
    super(answer.detail || answer.title || `the server answered ${status}`);
    this.status = status;
  }
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function setStatus(text) {
  $("status").textContent = text;
}

// ---- the API key ------------------------------------------------------------------------
function setUpKey() {
  if (!state.config.auth) return;
  $("key-form").hidden = false;
  $("api-key").value = apiKey();
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY, $("api-key").value.trim());
    showError("");
    $("run").focus();
  });
  if (!apiKey()) $("api-key").focus();
}

// ---- copy as code -----------------------------------------------------------------------
function request() {
  const { input, files } = state.form.collect();
  const { model, version } = state.config;
  return { base: location.origin, model, version, input, files };
}

function showCode() {
  $("code").textContent = LANGUAGES[state.language](request());
}

function setUpCode() {
  const tabs = [...document.querySelectorAll("[role=tab]")];
  const select = (tab) => {
    for (const other of tabs) {
      other.setAttribute("aria-selected", String(other === tab));
      other.tabIndex = other === tab ? 0 : -1;
    }
    $("code-panel").setAttribute("aria-labelledby", tab.id);
    state.language = tab.dataset.language;
    showCode();
  };
  tabs.forEach((tab, index) => {
    tab.addEventListener("click", () => select(tab));
    tab.addEventListener("keydown", (event) => {
      const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
      if (!step) return;
      const next = tabs[(index + step + tabs.length) % tabs.length];
      next.focus();
      select(next);
    });
  });
  $("copy").addEventListener("click", async () => {
    const text = $("code").textContent;
    try {
      await navigator.clipboard.writeText(text);
    } catch {
      const range = document.createRange(); // no clipboard API (plain http): select it
      range.selectNodeContents($("code"));
      getSelection().removeAllRanges();
      getSelection().addRange(range);
      document.execCommand("copy");
    }
    $("copied").textContent = "Copied.";
    setTimeout(() => ($("copied").textContent = ""), 2000);
  });
}

// ---- running ----------------------------------------------------------------------------
function progressOf(logs) {
  // The engine logs "base step 3/20" and "refiner step 1/5" lines.
  const steps = {};
  for (const [, stage, done, total] of logs.matchAll(/^(\w+) step (\d+)\/(\d+)$/gm)) {
    steps[stage] = [Number(done), Number(total)];
  }
  const stages = Object.values(steps);
  if (!stages.length) return null;
  const done = stages.reduce((sum, [d]) => sum + d, 0);
  const total = stages.reduce((sum, [, t]) => sum + t, 0);
  return { done, total, line: Object.entries(steps).map(([s, [d, t]]) => `${s} ${d}/${t}`) };
}

async function showPreview(id) {
  // The latest preview of the running job's latents (GET /v1/predictions/<id>/preview).
  const headers = state.config.auth ? { Authorization: `Bearer ${apiKey()}` } : {};
  const response = await fetch(`/v1/predictions/${id}/preview`, { headers }).catch(() => null);
  if (!response || response.status !== 200 || state.prediction !== id) return;
  const step = response.headers.get("X-Preview-Step");
  const preview = $("preview");
  if (preview.dataset.step === step) return;
  const previous = preview.src;
  preview.src = URL.createObjectURL(await response.blob());
  if (previous.startsWith("blob:")) URL.revokeObjectURL(previous);
  preview.dataset.step = step; // for scripts and tests
  preview.hidden = false;
}

function showRunning(prediction) {
  $("logs").textContent = prediction.logs || "";
  const progress = progressOf(prediction.logs || "");
  if (prediction.status === "starting") setStatus("Waiting for the GPU…");
  if (prediction.status === "processing") {
    setStatus(progress ? `Running: ${progress.line.join(", ")}` : "Running…");
  }
  if (progress) $("progress").value = progress.done / progress.total;
}

function showImages(prediction) {
  const seeds = prediction.metrics?.seeds || [];
  const gallery = $("gallery");
  gallery.replaceChildren();
  prediction.output.forEach((url, index) => {
    const seed = seeds[index];
    const figure = document.createElement("figure");
    const image = document.createElement("img");
    image.src = url;
    image.alt = `Output ${index + 1}${seed === undefined ? "" : `, seed ${seed}`}`;
    const caption = document.createElement("figcaption");
    const label = document.createElement("span");
    label.textContent = seed === undefined ? `Output ${index + 1}` : `seed ${seed}`;
    const link = document.createElement("a");
    link.href = url;
    const type = url.startsWith("data:") ? url.slice(11, url.indexOf(";")) : "";
    link.download = `sdxl-${seed ?? index}.${type || url.split(".").pop()}`;
    link.textContent = "Download";
    caption.append(label, link);
    figure.append(image, caption);
    gallery.append(figure);
  });
}

function finish(prediction) {
  state.prediction = null;
  $("preview").hidden = true;
  $("cancel").hidden = true;
  $("progress").hidden = true;
  $("run").disabled = false;
  $("logs").textContent = prediction.logs || "";
  const took = prediction.metrics?.predict_time;
  const timing = took === undefined ? "" : ` in ${took.toFixed(1)} s`;
  if (prediction.status === "succeeded") {
    showImages(prediction);
    setStatus(`Succeeded${timing}.`);
  } else if (prediction.status === "canceled") {
    setStatus("Canceled.");
  } else {
    setStatus("Failed.");
    showError(prediction.error || "the prediction failed");
  }
  document.body.dataset.predictionStatus = prediction.status; // for scripts and tests
}

async function poll(id) {
  while (state.prediction === id) {
    let prediction;
    try {
      prediction = await api("GET", `/v1/predictions/${id}`);
    } catch (error) {
      setStatus(`Lost touch with the server (${error.message}); retrying…`);
      await new Promise((resolve) => setTimeout(resolve, POLL_MS * 5));
      continue;
    }
    if (ENDED.includes(prediction.status)) return finish(prediction);
    showRunning(prediction);
    if (prediction.status === "processing") await showPreview(id);
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

async function run(event) {
  event?.preventDefault();
  if (state.prediction) return;
  showError("");
  if (state.config.auth && !apiKey()) {
    showError("Enter an API key first (a key of the server's SDXL_API_KEYS).");
    $("api-key").focus();
    return;
  }
  const { input } = state.form.collect();
  $("run").disabled = true;
  delete document.body.dataset.predictionStatus;
  let prediction;
  try {
    prediction = await api("POST", "/v1/predictions", { version: state.config.version, input });
  } catch (error) {
    $("run").disabled = false;
    setStatus("Not started.");
    document.body.dataset.predictionStatus = "refused";
    if (error.status === 401) {
      showError("The API key was refused: enter a key of the server's SDXL_API_KEYS.");
      $("api-key").focus();
    } else {
      showError(error.message);
    }
    return;
  }
  state.prediction = prediction.id;
  document.body.dataset.predictionId = prediction.id;
  $("gallery").replaceChildren();
  $("progress").value = 0;
  $("progress").hidden = false;
  $("cancel").hidden = false;
  $("cancel").disabled = false;
  showRunning(prediction);
  poll(prediction.id);
}

async function cancel() {
  if (!state.prediction) return;
  $("cancel").disabled = true;
  setStatus("Cancelling…");
  try {
    await api("POST", `/v1/predictions/${state.prediction}/cancel`);
  } catch (error) {
    showError(error.message);
    $("cancel").disabled = false;
  }
}

// ---- start ------------------------------------------------------------------------------
async function start() {
  try {
    state.config = await (await fetch("/playground/config")).json();
  } catch (error) {
    $("form-status").textContent = `The model's inputs could not be loaded: ${error.message}`;
    return;
  }
  $("form-status").textContent = `${state.config.model}, version ${state.config.version.slice(0, 12)}`;
  state.form = new InputForm(state.config, $("basic-fields"), $("advanced-fields"), showCode);
  setUpKey();
  setUpCode();
  showCode();
  $("run-form").addEventListener("input", showCode);
  $("run-form").addEventListener("submit", run);
  $("reset").addEventListener("click", () => state.form.reset());
  $("cancel").addEventListener("click", cancel);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) run(event);
  });
  document.body.dataset.ready = "true";
}

start();
