// The Train page: a .zip (or .tar) of photos, dropped or picked, uploaded to /v1/files; the
// destination model created unless it exists; a training of the served version started with
// Replicate's trainings API, polled for its log and loss curve, cancellable; and once it has
// succeeded, its trained_model.tar to download and its new version handed to the Generate page
// (filled in, run when the visitor presses Run); a cancelled one's checkpoint to download.

import { ApiError, ENDED, POLL_MS, api, authHeaders, missingKey, sleep } from "./api.js";
import { LossChart, parseSteps } from "./chart.js";
import { InputForm } from "./form.js";

const $ = (id) => document.getElementById(id);
const DEFAULT_NAME = "my-sdxl"; // the new model's name until the visitor picks another

function sizeOf(bytes) {
  if (bytes < 1e6) return `${Math.ceil(bytes / 1e3)} kB`;
  return `${(bytes / 1e6).toFixed(bytes < 1e7 ? 1 : 0)} MB`;
}

export class Trainer {
  constructor(config, onGenerate) {
    this.config = config;
    this.onGenerate = onGenerate;
    this.file = null; // the chosen archive (a File)
    this.running = null; // the running training's id
    this.trained = null; // the last succeeded training
    this.prefilled = ""; // the destination as this page filled it in, not the visitor
    this.cancelling = false; // "Cancelling…" stays until the training has stopped
    this.downloading = false;
    const hosts = [$("train-basic-fields"), $("train-advanced-fields")];
    this.form = new InputForm(config.training, ...hosts, () => {}, "train-");
    this.chart = new LossChart($("loss-chart"));
    $("train-images-help").textContent = config.training.images;
    $("train-base").textContent = `${config.model}:${config.version.slice(0, 12)}`;
    this.listen();
  }

  listen() {
    const drop = $("train-drop");
    $("train-images").addEventListener("change", () => this.take($("train-images").files[0]));
    for (const type of ["dragenter", "dragover"]) {
      drop.addEventListener(type, (event) => {
        event.preventDefault();
        drop.classList.add("over");
      });
    }
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", (event) => {
      event.preventDefault();
      drop.classList.remove("over");
      this.take(event.dataTransfer.files[0]);
    });
    $("train-form").addEventListener("submit", (event) => this.start(event));
    $("train-reset").addEventListener("click", () => this.form.reset());
    $("train-cancel").addEventListener("click", () => this.cancel());
    $("train-generate").addEventListener("click", () => this.onGenerate(this.trained));
    $("train-download").addEventListener("click", (event) => this.download(event));
    document.addEventListener("api-key", () => this.whoami());
  }

  take(file) {
    if (!file) return;
    this.file = file;
    $("train-file").textContent = `${file.name}, ${sizeOf(file.size)}`;
  }

  shown() {
    this.whoami();
  }

  // The destination's owner must be the key's account: ask the server whose key it is, and
  // fill in owner/name unless the visitor has written their own.
  async whoami() {
    const field = $("train-destination");
    if (missingKey() || (field.value && field.value !== this.prefilled)) return;
    try {
      const account = await api("GET", "/v1/account");
      const name = this.prefilled.split("/")[1] || DEFAULT_NAME;
      if (field.value !== this.prefilled) return; // typed in while we asked
      field.value = this.prefilled = `${account.username}/${name}`;
    } catch {
      // a refused key: Start says so
    }
  }

  error(message) {
    $("train-error").textContent = message;
    $("train-error").hidden = !message;
  }

  status(text) {
    $("train-status").textContent = text;
  }

  refuse(message, focus) {
    this.error(message);
    focus?.focus();
    document.body.dataset.trainingStatus = "refused"; // for scripts and tests
  }

  async start(event) {
    event.preventDefault();
    if (this.running) return;
    this.error("");
    if (missingKey()) {
      const why = "Enter an API key first (a key of the server's SDXL_API_KEYS).";
      return this.refuse(why, $("api-key"));
    }
    if (!this.file) return this.refuse("Choose a .zip or .tar of photos first.", $("train-images"));
    const destination = $("train-destination").value.trim();
    const [owner, name, ...more] = destination.split("/");
    if (!owner || !name || more.length) {
      const why = "Give the new model as owner/name: owner is your account (the key's name).";
      return this.refuse(why, $("train-destination"));
    }
    $("train-start").disabled = true;
    delete document.body.dataset.trainingStatus;
    let training;
    try {
      training = await this.create(owner, name);
    } catch (error) {
      $("train-start").disabled = false;
      this.status("Not started.");
      const refused = "The API key was refused: enter a key of the server's SDXL_API_KEYS.";
      return this.refuse(error.status === 401 ? refused : error.message);
    }
    this.running = training.id;
    document.body.dataset.trainingId = training.id;
    $("train-generate").hidden = true;
    $("train-download").hidden = true;
    $("train-progress").value = 0;
    $("train-progress").hidden = false;
    $("train-cancel").hidden = false;
    $("train-cancel").disabled = false;
    this.show(training);
    this.poll(training.id);
  }

  async create(owner, name) {
    this.status("Uploading the photos…");
    const upload = new FormData();
    upload.append("content", this.file, this.file.name); // the part Replicate's clients send
    const file = await api("POST", "/v1/files", upload);
    this.status(`Creating the model ${owner}/${name}…`);
    try {
      await api("POST", "/v1/models", { owner, name, visibility: "private", hardware: "gpu" });
    } catch (error) {
      if (error.status !== 409) throw error; // 409: it exists; the new version goes there too
    }
    this.status("Starting the training…");
    const { model, version } = this.config;
    const input = { ...this.form.collect().input, input_images: file.urls.get };
    const path = `/v1/models/${model}/versions/${version}/trainings`;
    return api("POST", path, { destination: `${owner}/${name}`, input });
  }

  show(training) {
    const logs = $("train-logs");
    const atEnd = logs.scrollTop + logs.clientHeight >= logs.scrollHeight - 4;
    logs.textContent = training.logs || "";
    if (atEnd) logs.scrollTop = logs.scrollHeight; // follow the log unless scrolled back
    const steps = parseSteps(training.logs || "");
    this.chart.draw(steps);
    const last = steps[steps.length - 1];
    if (last) $("train-progress").value = last.step / last.total;
    if (this.cancelling) return;
    if (training.status === "starting") this.status("Waiting for the GPU…");
    if (training.status !== "processing") return;
    if (!last) return this.status("Preparing the photos…");
    const eta = last.timing.match(/ETA ([\d:]+)/);
    const left = eta ? `, ${eta[1]} left` : "";
    this.status(`Training: step ${last.step}/${last.total}, loss ${last.loss}${left}`);
  }

  async poll(id) {
    while (this.running === id) {
      let training;
      try {
        training = await api("GET", `/v1/trainings/${id}`);
      } catch (error) {
        this.status(`Lost touch with the server (${error.message}); retrying…`);
        await sleep(POLL_MS * 5);
        continue;
      }
      if (ENDED.includes(training.status)) return this.finish(training);
      this.show(training);
      await sleep(POLL_MS);
    }
  }

  finish(training) {
    this.running = null;
    this.cancelling = false;
    this.show(training);
    $("train-cancel").hidden = true;
    $("train-progress").hidden = true;
    $("train-start").disabled = false;
    const took = training.metrics?.predict_time;
    const timing = typeof took === "number" ? ` in ${took.toFixed(1)} s` : ""; // null: never ran
    if (training.status === "succeeded") {
      this.trained = training;
      this.status(`Succeeded${timing}: the new version is ${training.output.version}.`);
      $("train-generate").hidden = false;
      this.offer(training.output.weights, "Download the weights (trained_model.tar)");
    } else if (training.status === "canceled") {
      this.status("Canceled.");
    } else {
      this.status("Failed.");
      this.error(training.error || "the training failed");
    }
    const checkpoint = training.output?.checkpoint; // stopped after a step: go on from it later
    if (checkpoint) this.offer(checkpoint, "Download the checkpoint (resume_from_checkpoint)");
    document.body.dataset.trainingStatus = training.status; // for scripts and tests
  }

  // A link to a file the server keeps for the key's owner. The file is named by the server.
  offer(url, text) {
    const link = $("train-download");
    link.href = url;
    link.download = "";
    link.textContent = text;
    link.hidden = false;
  }

  // A server with keys wants one on the download too, which a link cannot send: the file is
  // fetched with it (from this origin, also when the URL is under SDXL_PUBLIC_URL) and saved.
  async download(event) {
    if (!Object.keys(authHeaders()).length) return; // no keys: the link works as it is
    event.preventDefault();
    if (this.downloading) return;
    this.downloading = true;
    this.error("");
    const link = $("train-download");
    try {
      const response = await fetch(new URL(link.href).pathname, { headers: authHeaders() });
      if (!response.ok) {
        throw new ApiError(response.status, await response.json().catch(() => ({})));
      }
      const named = /filename="([^"]+)"/.exec(response.headers.get("Content-Disposition"));
      const saved = URL.createObjectURL(await response.blob());
      const anchor = document.createElement("a");
      anchor.href = saved;
      anchor.download = named ? named[1] : "download.tar";
      document.body.append(anchor);
      anchor.click();
      anchor.remove();
      setTimeout(() => URL.revokeObjectURL(saved), 60000); // once the download has it
    } catch (error) {
      this.error(`The download failed: ${error.message}`);
    } finally {
      this.downloading = false;
    }
  }

  async cancel() {
    if (!this.running) return;
    $("train-cancel").disabled = true;
    this.cancelling = true;
    this.status("Cancelling…");
    try {
      await api("POST", `/v1/trainings/${this.running}/cancel`);
    } catch (error) {
      this.error(error.message);
      this.cancelling = false;
      $("train-cancel").disabled = false;
    }
  }
}
