"""The README's performance figure, drawn from bench/results/*.json (pip install matplotlib).

python bench/plot.py    # writes docs/performance.png
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

RESULTS = Path(__file__).resolve().parent / "results"
OUT = Path(__file__).resolve().parent.parent / "docs" / "performance.png"


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def rows() -> list[tuple[str, float, float, bool]]:
    """(label, measured ratio, target, lower is better)."""
    out = []
    for kind in ("tiny", "full"):
        record = load(f"overhead-{kind}")
        for mode, numbers in (record or {}).get("modes", {}).items():
            out.append((f"overhead {mode} ({kind})", numbers["ratio"], 1.02, True))
    for kind in ("tiny", "full"):
        record = load(f"memory-{kind}")
        if record:
            out.append((f"resident / safetensors bytes ({kind})", record["ratio"], 1.0, True))
    record = load("cold-start")
    if record:
        out.append(("setup / read floor (full, CPU)", record["ratio"], 1.3, True))
    record = load("cpu-dtype")
    if record:
        out.append(("CPU default speed-up over float32 (full)", record["speedup"], 2.0, False))
    record = load("adapters")
    if record:
        for kind in ("lora", "fine-tune"):
            speedup = record[kind]["reloaded_over_resident"]
            out.append((f"second-call speed-up, resident {kind} (tiny)", speedup, 1.0, False))
    # The targets are for full size; the tiny record stands in only until there is one.
    kind, record = "full", load("fast-modes")
    if record is None:
        kind, record = "tiny", load("fast-modes-tiny")
    for label, row in (record or {}).get("rows", {}).items():
        if row.get("target"):
            out.append(
                (f"speed-up, {label} over plain ({kind})", row["speedup"], row["target"], False)
            )
    return out


def main() -> int:
    data = rows()
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(data) + 1.2))
    labels = [r[0] for r in data]
    values = [r[1] for r in data]
    colours = [("#2a7" if (v <= t if lower else v >= t) else "#d54") for _, v, t, lower in data]
    ax.barh(labels, values, color=colours)
    for i, (_, value, target, _lower) in enumerate(data):
        ax.plot([target, target], [i - 0.4, i + 0.4], color="black", linewidth=1.5)
        ax.text(value, i, f" {value:.2f}", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ratio (black tick: target; green: target met)")
    ax.set_title("SDXL serving: measured ratios (bench/results)")
    fig.tight_layout()
    OUT.parent.mkdir(exist_ok=True)
    fig.savefig(OUT, dpi=110)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
