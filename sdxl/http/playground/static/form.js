// A form built from an input schema (the predictor's, or the trainer's on the Train page):
// every input with its default, bounds, choices and description. `collect()` gives the inputs
// that differ from their defaults. Element ids are `in-<prefix><name>`: both forms have a seed.

import { FileField, Painter } from "./mask.js";

const SLIDER_SPAN = 5000; // inputs with a narrower range get a slider beside the number

function title(spec) {
  if (spec.title) return spec.title;
  const words = spec.name.replaceAll("_", " ");
  return words[0].toUpperCase() + words.slice(1);
}

function field(spec, control, help, extraClass = "") {
  const wrapper = document.createElement("div");
  wrapper.className = `field ${extraClass}`.trim();
  const label = document.createElement("label");
  label.htmlFor = `in-${spec.id}`;
  label.textContent = title(spec);
  wrapper.append(label, control);
  if (spec.description) {
    const small = document.createElement("small");
    small.id = help;
    small.textContent = spec.description;
    wrapper.append(small);
  }
  return wrapper;
}

function describe(control, spec, help) {
  control.id = `in-${spec.id}`;
  control.name = spec.name;
  if (spec.description) control.setAttribute("aria-describedby", help);
  return control;
}

function choiceControl(spec, help) {
  const select = describe(document.createElement("select"), spec, help);
  const options = spec.nullable ? [null, ...spec.enum] : spec.enum;
  for (const choice of options) {
    const option = document.createElement("option");
    option.value = choice ?? "";
    option.textContent = choice ?? "(none)";
    select.append(option);
  }
  select.value = spec.default ?? "";
  return { element: select, read: () => select.value || undefined, reset: () => (select.value = spec.default ?? "") };
}

function booleanControl(spec, help) {
  const box = describe(document.createElement("input"), spec, help);
  box.type = "checkbox";
  box.checked = Boolean(spec.default);
  return { element: box, read: () => box.checked, reset: () => (box.checked = Boolean(spec.default)), check: true };
}

function numberControl(spec, help) {
  const number = describe(document.createElement("input"), spec, help);
  number.type = "number";
  number.inputMode = spec.type === "integer" ? "numeric" : "decimal";
  number.step = spec.type === "integer" ? "1" : "any";
  if (spec.minimum !== undefined) number.min = spec.minimum;
  if (spec.maximum !== undefined) number.max = spec.maximum;
  number.placeholder = spec.default === null || spec.default === undefined ? "(none)" : "";
  const reset = () => (number.value = spec.default ?? "");
  reset();
  const read = () => (number.value.trim() === "" ? undefined : Number(number.value));
  const span = spec.maximum - spec.minimum;
  if (!(span > 0 && span <= SLIDER_SPAN)) return { element: number, read, reset };
  const slider = document.createElement("input");
  slider.type = "range";
  slider.min = spec.minimum;
  slider.max = spec.maximum;
  slider.step = spec.type === "integer" ? "1" : span <= 2 ? "0.01" : "0.1";
  slider.tabIndex = -1; // the number field is the keyboard's way in
  slider.setAttribute("aria-hidden", "true");
  const sync = () => (slider.value = number.value || spec.minimum);
  sync();
  number.addEventListener("input", sync);
  slider.addEventListener("input", () => {
    number.value = slider.value;
    number.dispatchEvent(new Event("input", { bubbles: true }));
  });
  const row = document.createElement("div");
  row.className = "range";
  row.append(slider, number);
  return { element: row, read, reset: () => (reset(), sync()) };
}

function textControl(spec, help) {
  const long = spec.name.includes("prompt");
  const text = describe(document.createElement(long ? "textarea" : "input"), spec, help);
  if (!long) text.type = "text";
  const reset = () => (text.value = spec.default ?? "");
  reset();
  const read = () => (text.value === "" && spec.default !== "" ? undefined : text.value);
  return { element: text, read, reset };
}

export class InputForm {
  // `controlHost`: where the inputs of config.control go (the ControlNet section), if any.
  constructor(config, basicHost, advancedHost, onChange, prefix = "", controlHost = null) {
    this.controls = new Map(); // name -> {spec, read, reset}
    this.files = new Map(); // name -> FileField
    this.onChange = onChange;
    const names = new Set(config.inputs.map((spec) => spec.name));
    this.painter = names.has("image") && names.has("mask") ? new Painter(onChange) : null;
    const control = new Set(controlHost ? config.control || [] : []);
    for (const spec of config.inputs) {
      let host = config.basic.includes(spec.name) ? basicHost : advancedHost;
      if (control.has(spec.name)) host = controlHost;
      host.append(this.build({ ...spec, id: prefix + spec.name }));
    }
  }

  build(spec) {
    const help = `help-${spec.id}`;
    if (spec.format === "uri") {
      const file = new FileField(spec, spec.description ? help : null, (changed) => {
        if (this.painter && changed.spec.name === "image") this.painter.show(changed.value);
        this.onChange();
      });
      this.files.set(spec.name, file);
      this.controls.set(spec.name, { spec, read: () => file.value, reset: () => file.clear() });
      const wrapper = field(spec, file.element, help);
      if (this.painter && spec.name === "image") wrapper.append(this.painter.element);
      return wrapper;
    }
    let control;
    if (spec.enum) control = choiceControl(spec, help);
    else if (spec.type === "boolean") control = booleanControl(spec, help);
    else if (spec.type === "integer" || spec.type === "number") control = numberControl(spec, help);
    else control = textControl(spec, help);
    this.controls.set(spec.name, { spec, ...control });
    return field(spec, control.element, help, control.check ? "check" : "");
  }

  // {input, files}: the inputs to send (the prompt always, the rest when not the default),
  // and the names of those that are images.
  collect() {
    const input = {};
    const files = new Set();
    for (const [name, control] of this.controls) {
      let value = control.read();
      if (name === "mask" && this.painter) value = this.painter.toDataURI() ?? value;
      if (value === undefined || (name !== "prompt" && value === control.spec.default)) continue;
      input[name] = value;
      if (this.files.has(name)) files.add(name);
    }
    return { input, files };
  }

  reset() {
    for (const control of this.controls.values()) control.reset();
    this.painter?.show(undefined);
    this.onChange();
  }
}
