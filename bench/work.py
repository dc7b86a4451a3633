"""Work per image: UNet and VAE calls counted with hooks, for each mode and refine mode.

What the product must do and no more: the UNet once per step with classifier-free guidance
batched (batch = 2 x images), one VAE decode per image and none between base and refiner
(the refiner takes the base's latents), a VAE encode only for an input image (once per
output image: diffusers samples each image's latents with that image's own generator).

    python bench/work.py                      # tiny model
    python bench/work.py --weights weights    # any weights (counts do not depend on size)

Writes bench/results/work.json.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

from common import loaded_engine, weights_or_tiny, write
from PIL import Image

from sdxl.inputs.request import Request

IMAGES = 2
STEPS = 10


class Counter:
    def __init__(self, models):
        self.calls: dict[str, list[int]] = defaultdict(list)  # module -> batch size per call
        self.hooks = [
            module.register_forward_pre_hook(
                lambda mod, args, kwargs, name=name: self.calls[name].append(_batch(args, kwargs)),
                with_kwargs=True,
            )
            for name, module in (
                ("base unet", models.base.unet),
                ("refiner unet", models.refiner.unet),
                ("vae encode", models.base.vae.encoder),
                ("vae decode", models.base.vae.decoder),
            )
        ]

    def take(self) -> dict:
        out = {name: {"calls": len(b), "batch": sorted(set(b))} for name, b in self.calls.items()}
        self.calls.clear()
        return out


def _batch(args, kwargs) -> int:
    sample = args[0] if args else next(iter(kwargs.values()))
    return int(sample.shape[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, help="weights folder (default: tiny, built now)")
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    weights = weights_or_tiny(args.weights)
    engine = loaded_engine(weights)
    counter = Counter(engine.models)
    photo = Image.new("RGB", (args.size, args.size), (120, 80, 40))
    mask = Image.new("L", (args.size, args.size), 255)
    cases = {}
    for mode, files in (("txt2img", {}), ("img2img", {"image": photo}), ("inpaint", {})):
        if mode == "inpaint":
            files = {"image": photo, "mask": mask}
        for refine in ("no_refiner", "expert_ensemble_refiner", "base_image_refiner"):
            request = Request(
                prompt="a photo of a cat",
                width=args.size,
                height=args.size,
                num_outputs=IMAGES,
                num_inference_steps=STEPS,
                refine=refine,
                refine_steps=3,
                prompt_strength=0.8,
                seed=1,
                **files,
            )
            plan = engine.run(request).plan
            counts = counter.take()
            unet_batches = sorted(
                set(counts["base unet"]["batch"])
                | set(counts.get("refiner unet", {}).get("batch", []))
            )
            cases[f"{mode} {refine}"] = {
                "counts": counts,
                "plan": [plan.base_steps, plan.refiner_steps],
                "one_decode_per_image": counts["vae decode"] == {"calls": 1, "batch": [IMAGES]},
                "guidance_batched": unet_batches == [2 * IMAGES],
                "unet_calls_as_planned": counts["base unet"]["calls"] == plan.base_steps
                and counts.get("refiner unet", {}).get("calls", 0) == plan.refiner_steps,
                "encodes": counts.get("vae encode", {}).get("calls", 0),  # one per input image
            }
            row = cases[f"{mode} {refine}"]
            print(
                f"{mode:8} {refine:24} unet {counts['base unet']['calls']:>2}+"
                f"{counts.get('refiner unet', {}).get('calls', 0):<2} batch {unet_batches} "
                f"decode {counts['vae decode']} encode {row['encodes']} "
                f"{'ok' if row['one_decode_per_image'] and row['guidance_batched'] else 'CHECK'}"
            )
    engine.close()
    write("work", {"images": IMAGES, "steps": STEPS, "cases": cases})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
