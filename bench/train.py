"""The trainer's cost: seconds per step and peak memory, against a plain diffusers + peft loop
doing the same work at the same settings, its rounds interleaved with ours.

The plain loop is what a diffusers LoRA script does, with the reference's pivotal tuning: the
UNet with a peft LoRA on to_q, to_k, to_v and to_out.0; both text encoders' token tables
resized for the new tokens and trained (the reference's way: the whole table takes gradients,
other rows restored after each step); AdamW; the same cached latents, batch, resolution and
rank. It is timed in both halves of a training: with the token rows training (text encoders
run with gradients) and after the pivot (text embeddings cached), against ours in the same half.

    python bench/train.py                       # the tiny model, 256x256 (CI-sized)
    python bench/train.py --weights DIR --size 512 --batch 1 --rank 32   # full size, CPU

Memory: peak RSS on the CPU, torch.cuda.max_memory_allocated on a GPU; with and without
gradient checkpointing (--checkpointing both). Writes bench/results/train[-NAME].json.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch
from common import loaded_engine, reset_rss_peak, rss_peak_bytes, sync, weights_or_tiny, write

from sdxl.train import trainable
from sdxl.train.loop import Example, Trainer
from sdxl.train.options import TrainRequest


def examples(models, count: int, size: int) -> list[Example]:
    """Random latents and full masks: the loop's cost does not depend on what the images are."""
    g = torch.Generator().manual_seed(0)
    side = size // 8
    return [
        Example(
            torch.randn(4, side, side, generator=g),
            torch.ones(1, side, side),
            "a photo of <s0><s1>",
        )
        for _ in range(count)
    ]


def ours(models, req: TrainRequest, data: list[Example], checkpointing: bool) -> Trainer:
    trained = trainable.build(
        models, ["TOK"], True, req.lora_rank, torch.Generator().manual_seed(1)
    )
    if checkpointing:
        trained.unet.enable_gradient_checkpointing()
    return Trainer(models, trained, req, data)


class PlainLoop:
    """diffusers + peft, the reference's pivotal tuning, nothing of ours."""

    def __init__(self, models, req: TrainRequest, data: list[Example], checkpointing: bool):
        from diffusers import DDPMScheduler, UNet2DConditionModel
        from peft import LoraConfig

        base = models.base
        self.device, self.req, self.data = models.device, req, data
        self.unet = UNet2DConditionModel.from_config(base.unet.config).to(
            models.device, models.dtype
        )
        self.unet.load_state_dict(
            {
                k.replace(".base_layer.", "."): v
                for k, v in base.unet.state_dict().items()
                if "lora_" not in k and "to_qkv" not in k and "to_kv" not in k
            }
        )
        self.unet.requires_grad_(False)
        self.unet.add_adapter(
            LoraConfig(
                r=req.lora_rank,
                lora_alpha=req.lora_rank,
                init_lora_weights="gaussian",
                target_modules=["to_k", "to_q", "to_v", "to_out.0"],
            )
        )
        lora = [p for n, p in self.unet.named_parameters() if "lora_" in n]
        for p in lora:
            p.data = p.data.float()
        if checkpointing:
            self.unet.enable_gradient_checkpointing()
        self.tokenizers = [copy.deepcopy(base.tokenizer), copy.deepcopy(base.tokenizer_2)]
        self.encoders = [copy.deepcopy(base.text_encoder), copy.deepcopy(base.text_encoder_2)]
        tables = []
        for tokenizer, encoder in zip(self.tokenizers, self.encoders, strict=True):
            tokenizer.add_special_tokens({"additional_special_tokens": ["<s0>", "<s1>"]})
            encoder.resize_token_embeddings(len(tokenizer))
            encoder.requires_grad_(False)
            table = encoder.get_input_embeddings().weight  # in the model's dtype, as the reference
            table.requires_grad_(True)
            tables.append(table)
        self.tables, self.originals = tables, [t.detach().clone() for t in tables]
        self.optimizer = torch.optim.AdamW(
            [{"params": lora, "lr": 1e-4}, {"params": tables, "lr": 3e-4}], weight_decay=1e-4
        )
        self.noise = DDPMScheduler.from_config(models.scheduler_config("base"))
        self.g = torch.Generator().manual_seed(2)
        self.cached = None

    def step(self, pivoted: bool) -> None:
        batch = self.data[: self.req.train_batch_size]
        latents = torch.stack([e.latents for e in batch]).to(self.device, self.unet.dtype)
        noise = torch.randn(latents.shape, generator=self.g).to(self.device, latents.dtype)
        t = torch.randint(0, 1000, (len(batch),), generator=self.g).to(self.device)
        if pivoted and self.cached is not None:
            embeds, pooled = self.cached
        else:
            with torch.set_grad_enabled(not pivoted):
                states = []
                for tokenizer, encoder in zip(self.tokenizers, self.encoders, strict=True):
                    ids = tokenizer(
                        [e.caption for e in batch],
                        padding="max_length",
                        max_length=77,
                        truncation=True,
                        return_tensors="pt",
                    ).input_ids.to(self.device)
                    out = encoder(ids, output_hidden_states=True)
                    states.append(out.hidden_states[-2])
                    pooled = out[0]
                embeds = torch.cat(states, dim=-1)
            if pivoted:
                self.cached = (embeds.detach(), pooled.detach())
        size = self.req.resolution
        time_ids = torch.tensor([[size, size, 0, 0, size, size]] * len(batch), device=self.device)
        dtype = self.unet.dtype
        pred = self.unet(
            self.noise.add_noise(latents, noise, t),
            t,
            embeds.to(dtype),
            added_cond_kwargs={"text_embeds": pooled.to(dtype), "time_ids": time_ids},
            return_dict=False,
        )[0]
        loss = torch.nn.functional.mse_loss(pred.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(
            [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None], 1.0
        )
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():  # the reference restores every other row after each step
            for table, original in zip(self.tables, self.originals, strict=True):
                table[: original.shape[0] - 2] = original[: original.shape[0] - 2]


def start_peak(device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        reset_rss_peak()


def peak(device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return rss_peak_bytes()


def timed_steps(step, count: int) -> list[float]:
    seconds = []
    for _ in range(count):
        sync()
        started = time.perf_counter()
        step()
        sync()
        seconds.append(time.perf_counter() - started)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per round and half")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--checkpointing", choices=("on", "off", "both"), default="off")
    parser.add_argument("--name", default="")
    args = parser.parse_args()
    engine = loaded_engine(weights_or_tiny(args.weights))
    models = engine.models
    req = TrainRequest(
        input_images="-",
        seed=1,
        resolution=args.size,
        train_batch_size=args.batch,
        lora_rank=args.rank,
        max_train_steps=10_000,
        lr_warmup_steps=0,
    )
    data = examples(models, max(4, args.batch * 2), args.size)
    rows = {}
    for checkpointing in {"on": [True], "off": [False], "both": [False, True]}[args.checkpointing]:
        sides = {"ours": {"rows": [], "cached": []}, "plain": {"rows": [], "cached": []}}
        peaks = {}
        for _ in range(args.rounds):  # interleaved: ours, then plain, each round
            for name in ("ours", "plain"):
                start_peak(models.device)
                if name == "ours":
                    trainer = ours(models, req, data, checkpointing)
                    trainer.pivot = 10_000
                    sides[name]["rows"] += timed_steps(trainer.train_step, args.steps)
                    trainer.pivot = trainer.step
                    sides[name]["cached"] += timed_steps(trainer.train_step, args.steps)
                else:
                    loop = PlainLoop(models, req, data, checkpointing)
                    sides[name]["rows"] += timed_steps(lambda: loop.step(False), args.steps)  # noqa: B023
                    sides[name]["cached"] += timed_steps(lambda: loop.step(True), args.steps)  # noqa: B023
                peaks[name] = max(peaks.get(name, 0), peak(models.device))
                trainer = loop = None
        median = {n: {h: statistics.median(v) for h, v in s.items()} for n, s in sides.items()}
        rows["checkpointing" if checkpointing else "plain"] = {
            "seconds_per_step": median,
            "ratio_rows_training": median["ours"]["rows"] / median["plain"]["rows"],
            "ratio_after_pivot": median["ours"]["cached"] / median["plain"]["cached"],
            "peak_memory_bytes": peaks,
        }
        print(rows)
    settings = {
        "size": args.size,
        "batch": args.batch,
        "rank": args.rank,
        "steps": args.steps,
        "rounds": args.rounds,
    }
    record = {"settings": settings, "target": "ratio <= 1.05", **rows}
    write(f"train{('-' + args.name) if args.name else ''}", record)
    engine.close()


if __name__ == "__main__":
    main()
