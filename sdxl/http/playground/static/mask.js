// Image inputs (file picker or drag and drop, sent as data URIs) and the inpainting mask painted
// over the image with a brush: white = repaint, black = keep, a PNG of the image's own size.

const PAINT = "#ff2d95"; // what strokes look like on screen; the mask sent is white on black

export function readDataURI(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

export class FileField {
  // A drop zone around a file picker; `value` is the chosen image as a data URI.
  constructor(spec, help, onChange) {
    this.spec = spec;
    this.value = undefined;
    this.onChange = onChange;
    this.element = document.createElement("div");
    this.element.className = "drop";
    this.input = document.createElement("input");
    this.input.type = "file";
    this.input.accept = "image/*";
    this.input.id = `in-${spec.id ?? spec.name}`;
    this.input.name = spec.name;
    if (help) this.input.setAttribute("aria-describedby", help);
    const hint = document.createElement("p");
    hint.className = "muted";
    hint.textContent = "Drop an image here, or choose a file.";
    this.clearButton = document.createElement("button");
    this.clearButton.type = "button";
    this.clearButton.textContent = "Remove";
    this.clearButton.hidden = true;
    this.element.append(hint, this.input, this.clearButton);
    this.input.addEventListener("change", () => this.take(this.input.files[0]));
    this.clearButton.addEventListener("click", () => this.clear());
    for (const type of ["dragenter", "dragover"]) {
      this.element.addEventListener(type, (event) => {
        event.preventDefault();
        this.element.classList.add("over");
      });
    }
    this.element.addEventListener("dragleave", () => this.element.classList.remove("over"));
    this.element.addEventListener("drop", (event) => {
      event.preventDefault();
      this.element.classList.remove("over");
      const file = event.dataTransfer.files[0];
      if (file) this.take(file);
    });
  }

  async take(file) {
    if (!file) return this.clear();
    this.value = await readDataURI(file);
    this.clearButton.hidden = false;
    this.onChange(this);
  }

  clear() {
    this.value = undefined;
    this.input.value = "";
    this.clearButton.hidden = true;
    this.onChange(this);
  }
}

export class Painter {
  // A canvas over the image, of the image's natural size, painted with the pointer.
  constructor(onChange) {
    this.onChange = onChange;
    this.painted = false;
    this.erasing = false;
    this.element = document.createElement("div");
    this.element.hidden = true;
    this.element.innerHTML = `
      <p class="muted">Paint over what to repaint (the mask): white is repainted, the rest kept.</p>
      <div class="painter"><img alt="the input image, to paint the mask on" /><canvas
        aria-label="mask canvas: paint with the pointer"></canvas></div>
      <div class="brush">
        <label for="brush-size">Brush</label>
        <input id="brush-size" type="range" min="4" max="256" value="48" />
        <button type="button" id="brush-paint" aria-pressed="true">Paint</button>
        <button type="button" id="brush-erase" aria-pressed="false">Erase</button>
        <button type="button" id="brush-clear">Clear mask</button>
      </div>`;
    this.image = this.element.querySelector("img");
    this.canvas = this.element.querySelector("canvas");
    this.size = this.element.querySelector("#brush-size");
    this.paintButton = this.element.querySelector("#brush-paint");
    this.eraseButton = this.element.querySelector("#brush-erase");
    this.paintButton.addEventListener("click", () => this.mode(false));
    this.eraseButton.addEventListener("click", () => this.mode(true));
    this.element.querySelector("#brush-clear").addEventListener("click", () => this.clear());
    this.listen();
  }

  show(dataURI) {
    if (!dataURI) {
      this.element.hidden = true;
      this.clear();
      return;
    }
    this.image.onload = () => {
      this.canvas.width = this.image.naturalWidth;
      this.canvas.height = this.image.naturalHeight;
      this.clear();
    };
    this.image.src = dataURI;
    this.element.hidden = false;
  }

  mode(erasing) {
    this.erasing = erasing;
    this.paintButton.setAttribute("aria-pressed", String(!erasing));
    this.eraseButton.setAttribute("aria-pressed", String(erasing));
  }

  clear() {
    this.canvas.getContext("2d").clearRect(0, 0, this.canvas.width, this.canvas.height);
    this.painted = false;
    this.onChange();
  }

  point(event) {
    const box = this.canvas.getBoundingClientRect();
    return [
      ((event.clientX - box.left) * this.canvas.width) / box.width,
      ((event.clientY - box.top) * this.canvas.height) / box.height,
    ];
  }

  stroke(from, to) {
    const ctx = this.canvas.getContext("2d");
    ctx.globalCompositeOperation = this.erasing ? "destination-out" : "source-over";
    ctx.strokeStyle = PAINT;
    ctx.lineWidth = Number(this.size.value);
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.moveTo(...from);
    ctx.lineTo(...to);
    ctx.stroke();
    if (!this.erasing) this.painted = true;
  }

  listen() {
    let last = null;
    this.canvas.addEventListener("pointerdown", (event) => {
      event.preventDefault();
      this.canvas.setPointerCapture(event.pointerId);
      last = this.point(event);
      this.stroke(last, last);
    });
    this.canvas.addEventListener("pointermove", (event) => {
      if (last === null) return;
      const next = this.point(event);
      this.stroke(last, next);
      last = next;
    });
    const end = () => {
      if (last !== null) this.onChange();
      last = null;
    };
    this.canvas.addEventListener("pointerup", end);
    this.canvas.addEventListener("pointercancel", end);
  }

  // The mask as a PNG data URI (white where painted), or undefined when nothing is painted.
  toDataURI() {
    if (!this.painted || this.element.hidden) return undefined;
    const { width, height } = this.canvas;
    const strokes = this.canvas.getContext("2d").getImageData(0, 0, width, height).data;
    const out = document.createElement("canvas");
    out.width = width;
    out.height = height;
    const ctx = out.getContext("2d");
    const mask = ctx.createImageData(width, height);
    let any = false;
    for (let i = 0; i < strokes.length; i += 4) {
      const on = strokes[i + 3] > 0 ? 255 : 0;
      any ||= on > 0;
      mask.data[i] = mask.data[i + 1] = mask.data[i + 2] = on;
      mask.data[i + 3] = 255;
    }
    if (!any) return undefined; // all of it erased again
    ctx.putImageData(mask, 0, 0);
    return out.toDataURL("image/png");
  }
}
