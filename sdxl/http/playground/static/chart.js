// The loss curve of a training, parsed from its logs and drawn as an inline SVG built with DOM
// calls (no library; nothing inline for the page's CSP to refuse: colours are in the CSS).

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 600;
const HEIGHT = 220;
const PAD = { left: 56, right: 12, top: 12, bottom: 28 };
const DOTS_UP_TO = 200; // a dot (with its value as a tooltip) per step while they stay apart
// The trainer logs a line a step: "step 3/40 loss 0.1234 lr 1.00e-04 (0.10 s/step, ETA 0:04)".
const STEP_LINE = /^step (\d+)\/(\d+) loss (\S+) lr (\S+)(?: \(([^)]*)\))?$/gm;

export function parseSteps(logs) {
  const steps = [];
  for (const [, step, total, loss, lr, timing] of logs.matchAll(STEP_LINE)) {
    const value = Number(loss);
    if (!Number.isFinite(value)) continue; // a nan loss would bend the whole scale
    steps.push({ step: Number(step), total: Number(total), loss: value, lr, timing: timing || "" });
  }
  return steps;
}

function node(name, attributes, text) {
  const element = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
  if (text !== undefined) element.textContent = text;
  return element;
}

export class LossChart {
  constructor(svg) {
    this.svg = svg;
    svg.setAttribute("viewBox", `0 0 ${WIDTH} ${HEIGHT}`);
    this.draw([]);
  }

  // Redrawn whole at each poll: a few hundred nodes at most, and the scale moves anyway.
  draw(steps) {
    const svg = this.svg;
    svg.replaceChildren();
    svg.dataset.points = String(steps.length); // for scripts and tests
    const left = PAD.left;
    const right = WIDTH - PAD.right;
    const top = PAD.top;
    const bottom = HEIGHT - PAD.bottom;
    svg.append(node("path", { class: "axis", d: `M${left},${top}V${bottom}H${right}` }));
    if (!steps.length) {
      const text = "The loss appears here, a point a step.";
      const centre = { class: "empty", x: (left + right) / 2, y: (top + bottom) / 2 };
      svg.append(node("text", centre, text));
      return;
    }
    const total = steps[steps.length - 1].total;
    const losses = steps.map((s) => s.loss);
    let low = Math.min(...losses);
    let high = Math.max(...losses);
    if (high - low < 1e-9) [low, high] = [low - 0.5, high + 0.5]; // a flat line, centred
    const x = (step) => left + ((right - left) * (step - 1)) / Math.max(total - 1, 1);
    const y = (loss) => bottom - ((bottom - top) * (loss - low)) / (high - low);
    for (const [value, anchor] of [[high, top], [low, bottom]]) {
      svg.append(node("text", { class: "tick", x: left - 6, y: anchor + 4 }, value.toFixed(4)));
    }
    svg.append(node("text", { class: "tick start", x: left, y: HEIGHT - 8 }, "step 1"));
    svg.append(node("text", { class: "tick end", x: right, y: HEIGHT - 8 }, `step ${total}`));
    const points = steps.map((s) => `${x(s.step).toFixed(1)},${y(s.loss).toFixed(1)}`);
    svg.append(node("polyline", { class: "curve", points: points.join(" ") }));
    if (steps.length > DOTS_UP_TO) return;
    for (const s of steps) {
      const dot = node("circle", { class: "point", cx: x(s.step), cy: y(s.loss), r: 3 });
      dot.dataset.step = String(s.step);
      dot.append(node("title", {}, `step ${s.step}: loss ${s.loss}`));
      svg.append(dot);
    }
  }
}
