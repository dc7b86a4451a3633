"""The training steps: pivotal tuning as the reference trains it, its defects fixed.

Each step: a batch of cached latents (encoded once) and their captions, noise and timesteps
drawn from the training's own generator, the UNet's epsilon prediction, a loss weighted by the
masks and normalised by their area (the reference divided by the number of values), gradients
clipped to `MAX_GRAD_NORM` (the reference passed and never applied it), one AdamW step (LoRA or
UNet at its learning rate, weight decay 1e-4; the new token rows at `ti_lr`, 1e-3). Halfway,
the token rows stop training (the reference's pivot) and, the text encoders then being frozen,
the captions' embeddings are cached. `max_train_steps` steps run (at most `num_train_epochs`
passes over the images), warm-up applies to both schedulers, and the data order of each epoch
comes from the seed: the whole state is in `TrainState`, so a resumed training ends exactly
where an uninterrupted one does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from sdxl.train.options import TrainRequest
from sdxl.train.preprocess import Prepared
from sdxl.train.trainable import Trained

MAX_GRAD_NORM = 1.0
WEIGHT_DECAY, EMBEDDING_WEIGHT_DECAY = 1e-4, 1e-3
MAX_TOKENS = 77


@dataclass
class Example:
    latents: torch.Tensor  # [4, h, w], as the VAE encoded the image (scaled)
    mask: torch.Tensor  # [1, h, w] in 0..1, at the latents' size
    caption: str  # with the concepts' new tokens in it


def steps_of(req: TrainRequest, examples: int) -> int:
    per_epoch = math.ceil(examples / req.train_batch_size)
    return min(req.max_train_steps, req.num_train_epochs * per_epoch)


def masked_mse(predicted: torch.Tensor, target: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The squared error weighted by the masks ([b, 1, h, w], broadcast over channels) and
    divided by their area: a mean over what the masks keep, whatever their size."""
    weights = masks.expand_as(target)
    return ((predicted.float() - target.float()) ** 2 * weights).sum() / weights.sum()


class Trainer:
    def __init__(self, models, trained: Trained, req: TrainRequest, examples: list[Example]):
        self.models, self.trained, self.req, self.examples = models, trained, req, examples
        self.device = models.device
        self.total = steps_of(req, len(examples))
        self.pivot = self.total // 2  # the token rows train for the first half
        self.step = 0
        self.generator = torch.Generator("cpu").manual_seed(_seed(req))
        self.noise = _noise_scheduler(models)
        lr = req.lora_lr if trained.is_lora else req.unet_learning_rate
        groups = [
            {"params": trained.unet_params, "lr": lr, "weight_decay": WEIGHT_DECAY},
            {
                "params": [e.rows for e in trained.embeddings],
                "lr": req.ti_lr,
                "weight_decay": EMBEDDING_WEIGHT_DECAY,
            },
        ]
        self.optimizer = torch.optim.AdamW(groups)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, [self._factor, lambda step: self._factor(step) * (step < self.pivot)]
        )
        self.std = [e.rows.detach().std().item() for e in trained.embeddings]
        self._cached: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._order: list[int] = []

    def _factor(self, step: int) -> float:
        warmup = self.req.lr_warmup_steps
        if warmup and step < warmup:
            return (step + 1) / (warmup + 1)
        if self.req.lr_scheduler == "linear":
            return max(0.0, (self.total - step) / max(1, self.total - warmup))
        return 1.0

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    # ---- one step ---------------------------------------------------------------------------
    def train_step(self) -> float:
        """One optimisation step; the loss."""
        batch = self._batch()
        if self.step == self.pivot:
            for embedding in self.trained.embeddings:
                embedding.rows.requires_grad_(False)
        examples = [self.examples[i] for i in batch]
        latents = torch.stack([e.latents for e in examples]).to(self.device)
        noise = torch.randn(latents.shape, generator=self.generator).to(self.device, latents.dtype)
        steps = torch.randint(
            0, self.noise.config.num_train_timesteps, (len(batch),), generator=self.generator
        )
        loss = self._loss(examples, latents, noise, steps.to(self.device))
        loss.backward()
        trainable = [
            p for group in self.optimizer.param_groups for p in group["params"] if p.requires_grad
        ]
        torch.nn.utils.clip_grad_norm_(trainable, MAX_GRAD_NORM)
        self.optimizer.step()
        self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._hold_row_scale()
        self.step += 1
        return float(loss.detach())

    def evaluate(self, seed: int) -> float:
        """The mean loss over every example, with noise and timesteps drawn from `seed` (the
        same for every call with it), training nothing."""
        generator = torch.Generator("cpu").manual_seed(seed)
        total = 0.0
        with torch.no_grad():
            for example in self.examples:
                latents = example.latents[None].to(self.device)
                noise = torch.randn(latents.shape, generator=generator).to(self.device)
                steps = torch.randint(0, 1000, (1,), generator=generator).to(self.device)
                total += self._loss([example], latents, noise, steps).item()
        return total / len(self.examples)

    def _batch(self) -> list[int]:
        """The next batch of this epoch's order (each epoch's order drawn from the seed)."""
        size, count = self.req.train_batch_size, len(self.examples)
        per_epoch = math.ceil(count / size)
        epoch, index = divmod(self.step, per_epoch)
        order = torch.randperm(
            count, generator=torch.Generator().manual_seed(_seed(self.req) + epoch + 1)
        )
        return order[index * size : (index + 1) * size].tolist()

    def _loss(self, examples, latents, noise, steps) -> torch.Tensor:
        """The examples' epsilon loss, weighted by their masks and normalised by their area."""
        masks = torch.stack([e.mask for e in examples]).to(self.device)
        noisy = self.noise.add_noise(latents, noise, steps)
        size, dtype = self.req.resolution, self._unet_dtype
        time_ids = torch.tensor([[size, size, 0, 0, size, size]] * len(examples))
        with self._autocast():
            embeds, pooled = self._conditioning([e.caption for e in examples])
            predicted = self.trained.unet(
                noisy.to(dtype),
                steps,
                embeds.to(dtype),
                added_cond_kwargs={
                    "text_embeds": pooled.to(dtype),
                    "time_ids": time_ids.to(self.device),
                },
                return_dict=False,
            )[0]
        return masked_mse(predicted, noise, masks)

    def _conditioning(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """SDXL's prompt embeddings ([B, 77, 2048]) and pooled embeddings ([B, 1280]) of the
        captions, as diffusers' encode_prompt makes them, in one batch; cached once the
        encoders are frozen."""
        if self.step < self.pivot:
            return self._encode(captions)
        missing = [c for c in dict.fromkeys(captions) if c not in self._cached]
        if missing:
            with torch.no_grad():
                embeds, pooled = self._encode(missing)
            for i, caption in enumerate(missing):
                self._cached[caption] = (embeds[i : i + 1], pooled[i : i + 1])
        found = [self._cached[c] for c in captions]
        return torch.cat([f[0] for f in found]), torch.cat([f[1] for f in found])

    def _encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        states, pooled = [], None
        pairs = zip(self.trained.tokenizers, self.trained.text_encoders, strict=True)
        for tokenizer, encoder in pairs:
            ids = tokenizer(
                captions,
                padding="max_length",
                max_length=MAX_TOKENS,
                truncation=True,
                return_tensors="pt",
            ).input_ids.to(self.device)
            output = encoder(ids, output_hidden_states=True)
            pooled = output[0]
            states.append(output.hidden_states[-2])
        return torch.cat(states, dim=-1), pooled

    def _hold_row_scale(self) -> None:
        """The reference's regulariser of the new rows: their spread pulled back towards the
        table's (`retract_embeddings`), once per step while they train."""
        if self.step >= self.pivot:
            return
        with torch.no_grad():
            for embedding, std in zip(self.trained.embeddings, self.std, strict=True):
                rows = embedding.rows
                rows.mul_((std / rows.std().clamp_min(1e-12)) ** 0.1)

    @property
    def _unet_dtype(self) -> torch.dtype:
        return next(self.trained.unet.parameters()).dtype

    def _autocast(self):
        if self.device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            return torch.autocast("cuda", dtype=dtype)
        return torch.autocast("cpu", enabled=False)


def _seed(req: TrainRequest) -> int:
    if req.seed is None:
        raise ValueError("the training's seed is drawn before it starts (Training.prepare)")
    return req.seed


def _noise_scheduler(models):
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(models.scheduler_config("base"))


def as_tensor_image(image) -> torch.Tensor:
    """An RGB PIL image as the VAE takes it: [3, h, w] in -1..1."""
    pixels = torch.from_numpy(np.asarray(image, np.float32) / 127.5 - 1.0)
    return pixels.permute(2, 0, 1)


def encode_examples(models, prepared: list[Prepared], tokens: dict[str, list[str]], seed: int):
    """The latents of every example, encoded once (sampled from the VAE's distribution with
    the seed), and the masks at the latents' size; captions with the new tokens."""
    from sdxl.adapters.lora import rewrite_prompt

    vae = models.base.vae
    generator = torch.Generator("cpu").manual_seed(seed)
    examples = []
    with torch.no_grad():
        for item in prepared:
            pixels = as_tensor_image(item.image)[None].to(models.device, vae.dtype)
            dist = vae.encode(pixels).latent_dist
            sample = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=generator).to(
                dist.mean.device, dist.mean.dtype
            )
            latents = (sample * vae.config.scaling_factor).float().cpu()[0]
            mask = torch.from_numpy(np.asarray(item.mask, np.float32) / 255.0)[None, None]
            mask = F.interpolate(
                mask, size=latents.shape[-2:], mode="bilinear", align_corners=False
            )
            caption = rewrite_prompt(item.caption, {c: "".join(t) for c, t in tokens.items()})
            examples.append(Example(latents, mask[0], caption))
    return examples
