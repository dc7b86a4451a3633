// The playground: the form, the API key, a prediction through this server's Replicate API
// (created, polled for its logs and progress, cancelled), its images, and the code for it;
// and the Train page (train.js), whose new version this page then runs.

import {
  ENDED,
  POLL_MS,
  api,
  apiKey,
  authHeaders,
  missingKey,
  requireKey,
  setApiKey,
  sleep,
} from "./api.js";
import { LANGUAGES } from "./code.js";
import { InputForm } from "./form.js";
import { Trainer } from "./train.js";

const $ = (id) => document.getElementById(id);

// target: the version that runs, the served model's or one trained on the Train page
// ({model, version, ref}: ref is what POST /v1/predictions is sent as its version).
const state = {
  config: null,
  form: null,
  prediction: null,
  language: "javascript",
  target: null,
  trainer: null,
};

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
    setApiKey($("api-key").value.trim());
    showError("");
    document.dispatchEvent(new Event("api-key")); // the Train page asks whose key it is
    if (location.hash !== "#train") $("run").focus();
  });
  if (!apiKey()) $("api-key").focus();
}

// ---- copy as code -----------------------------------------------------------------------
function request() {
  const { input, files } = state.form.collect();
  const { model, version } = state.target;
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
  const headers = authHeaders();
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

function figureOf(url, alt, label, fileName) {
  const figure = document.createElement("figure");
  const image = document.createElement("img");
  image.src = url;
  image.alt = alt;
  const caption = document.createElement("figcaption");
  const text = document.createElement("span");
  text.textContent = label;
  const link = document.createElement("a");
  link.href = url;
  const type = url.startsWith("data:") ? url.slice(11, url.indexOf(";")) : "";
  link.download = `${fileName}.${type || url.split(".").pop()}`;
  link.textContent = "Download";
  caption.append(text, link);
  figure.append(image, caption);
  return figure;
}

// The control types of the prediction's units, in order (one map each, when it returns them).
function controlTypes(input = {}) {
  return [1, 2, 3]
    .map((n) => input[`controlnet_${n}`])
    .filter((type) => type && type !== "none");
}

function showImages(prediction) {
  // With return_control_maps the outputs are the control maps first, then the images (the
  // seeds are the images' only): the maps are shown apart, above the images.
  const seeds = prediction.metrics?.seeds;
  const mapCount = seeds ? Math.max(0, prediction.output.length - seeds.length) : 0;
  const types = controlTypes(prediction.input);
  const maps = prediction.output.slice(0, mapCount).map((url, index) => {
    const type = types[index] ?? `unit ${index + 1}`;
    return figureOf(url, `Control map ${index + 1}, ${type}`, `${type} map`, `control-${index}`);
  });
  $("control-maps").replaceChildren(...maps);
  $("maps").hidden = !maps.length;
  const images = prediction.output.slice(mapCount).map((url, index) => {
    const seed = seeds?.[index];
    const alt = `Output ${index + 1}${seed === undefined ? "" : `, seed ${seed}`}`;
    const label = seed === undefined ? `Output ${index + 1}` : `seed ${seed}`;
    return figureOf(url, alt, label, `sdxl-${seed ?? index}`);
  });
  $("gallery").replaceChildren(...images);
}

function finish(prediction) {
  state.prediction = null;
  $("preview").hidden = true;
  $("cancel").hidden = true;
  $("progress").hidden = true;
  $("run").disabled = false;
  $("logs").textContent = prediction.logs || "";
  const took = prediction.metrics?.predict_time;
  const timing = typeof took === "number" ? ` in ${took.toFixed(1)} s` : "";
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
      await sleep(POLL_MS * 5);
      continue;
    }
    if (ENDED.includes(prediction.status)) return finish(prediction);
    showRunning(prediction);
    if (prediction.status === "processing") await showPreview(id);
    await sleep(POLL_MS);
  }
}

async function run(event) {
  event?.preventDefault();
  if (state.prediction) return;
  showError("");
  if (missingKey()) {
    showError("Enter an API key first (a key of the server's SDXL_API_KEYS).");
    $("api-key").focus();
    return;
  }
  const { input } = state.form.collect();
  $("run").disabled = true;
  delete document.body.dataset.predictionStatus;
  let prediction;
  try {
    prediction = await api("POST", "/v1/predictions", { version: state.target.ref, input });
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
  $("control-maps").replaceChildren();
  $("maps").hidden = true;
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

// ---- the ControlNet section ----------------------------------------------------------------
// Picking a control type asks for its detected map too (return_control_maps, which the visitor
// may untick); "none" stops asking. The maps come back with the images (showImages).
function setUpControl() {
  const type = $("in-controlnet_1");
  const maps = $("in-return_control_maps");
  if (!type || !maps) {
    $("control").hidden = true; // a model without ControlNet inputs
    return;
  }
  type.addEventListener("change", () => {
    maps.checked = type.value !== "none";
    showCode();
  });
}

// ---- the version that runs ------------------------------------------------------------------
function useVersion(target) {
  state.target = target;
  const trained = target.model !== state.config.model;
  $("form-status").textContent = `${target.model}, version ${target.version.slice(0, 12)}`;
  $("use-base").hidden = !trained;
  showCode();
}

function useBase() {
  const { model, version } = state.config;
  useVersion({ model, version, ref: version });
}

// "Generate with this version" on the Train page: this page, the new version, and a prompt
// with the training's token (the only word that calls up what was trained); the other inputs
// stay as they are (the model's defaults unless changed). Nothing runs until Run is pressed.
function generateWith(training) {
  const ref = training.output.version; // owner/name:id
  const [model, version] = ref.split(":");
  useVersion({ model, version, ref });
  const token = training.input.token_string || "TOK";
  const prompt = $("in-prompt");
  if (!prompt.value.split(/\W+/).includes(token)) {
    prompt.value = `a photo of ${token}`;
    prompt.dispatchEvent(new Event("input", { bubbles: true }));
  }
  location.hash = "";
  if (!state.prediction) setStatus(`Check the inputs for ${model}, then press Run.`);
  prompt.focus();
}

// ---- the two pages ----------------------------------------------------------------------------
function showPage() {
  const train = location.hash === "#train" && state.trainer !== null;
  $("generate-page").hidden = train;
  $("train-page").hidden = !train;
  for (const [link, current] of [[$("nav-generate"), !train], [$("nav-train"), train]]) {
    // The link to this page leads nowhere: one Tab stop for the two, as the code's tabs.
    link.tabIndex = current ? -1 : 0;
    if (current) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (train) state.trainer.shown();
}

// ---- start ------------------------------------------------------------------------------
async function start() {
  try {
    state.config = await (await fetch("/playground/config")).json();
  } catch (error) {
    $("form-status").textContent = `The model's inputs could not be loaded: ${error.message}`;
    return;
  }
  requireKey(state.config.auth);
  const hosts = [$("basic-fields"), $("advanced-fields")];
  state.form = new InputForm(state.config, ...hosts, showCode, "", $("control-fields"));
  setUpControl();
  useBase();
  $("use-base").addEventListener("click", useBase);
  if (state.config.training) {
    state.trainer = new Trainer(state.config, generateWith);
    $("nav").hidden = false;
  }
  showPage();
  addEventListener("hashchange", showPage);
  setUpKey();
  setUpCode();
  showCode();
  $("run-form").addEventListener("input", showCode);
  $("run-form").addEventListener("submit", run);
  $("reset").addEventListener("click", () => state.form.reset());
  $("cancel").addEventListener("click", cancel);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && location.hash !== "#train") {
      run(event);
    }
  });
  document.body.dataset.ready = "true";
}

start();
