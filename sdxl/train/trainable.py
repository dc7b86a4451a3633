"""What a training trains, built beside the served models without changing them.

- The UNet: a module of its own over the served UNet's frozen tensors (nothing copied); a LoRA
  (peft, rank `lora_rank`, on every attention's to_q, to_k, to_v and to_out.0) is added to it;
  a full fine-tune (`is_lora=false`) trains a float32 copy instead.
- The text encoders: modules of their own over the served encoders' frozen tensors, whose
  token embedding knows the new tokens: two per concept, `<s0><s1>`, `<s2><s3>`... Only the new
  rows are parameters (`PivotalEmbedding`): every other row is the served one, exactly, with
  nothing to restore after a step.
- The tokenizers: copies that know the new tokens.

So a prediction between two training steps runs the served models as they always are. The
trainable tensors are float32 whatever the served dtype (the GPU step runs under autocast).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]  # the reference's attention projections
FROZEN_IN_FINETUNE = ("norm", "time_")  # the reference keeps norms and time embeddings fixed


class PivotalEmbedding(torch.nn.Module):
    """A token embedding: the served table, frozen, plus trainable rows for the new tokens."""

    def __init__(self, served: torch.nn.Embedding, rows: torch.Tensor):
        super().__init__()
        self.served = served.weight  # shared, never trained
        self.first_new = served.num_embeddings
        self.rows = torch.nn.Parameter(rows)
        self.embedding_dim = served.embedding_dim
        self.num_embeddings = served.num_embeddings + rows.shape[0]

    @property
    def weight(self) -> torch.Tensor:
        return torch.cat([self.served, self.rows.to(self.served.dtype)])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        new = ids >= self.first_new
        out = F.embedding(ids.clamp(max=self.first_new - 1), self.served)
        if not bool(new.any()):
            return out
        extra = F.embedding((ids - self.first_new).clamp(min=0), self.rows).to(out.dtype)
        return torch.where(new.unsqueeze(-1), extra, out)


@dataclass
class Trained:
    """The modules a training optimises, and what goes into its optimizer."""

    unet: torch.nn.Module
    text_encoders: list[torch.nn.Module]
    tokenizers: list
    embeddings: list[PivotalEmbedding]
    tokens: dict[str, list[str]]  # concept -> its new tokens
    unet_params: list[torch.nn.Parameter] = field(default_factory=list)
    is_lora: bool = True

    @property
    def special_params(self) -> dict[str, str]:
        return {concept: "".join(tokens) for concept, tokens in self.tokens.items()}


def build(models, concepts: list[str], is_lora: bool, rank: int, generator: torch.Generator):
    """The training's own modules over `models` (the served ones, read only)."""
    base = models.base
    tokens, names = {}, []
    for concept in concepts:
        tokens[concept] = [f"<s{len(names)}>", f"<s{len(names) + 1}>"]
        names += tokens[concept]
    encoders, tokenizers, embeddings = [], [], []
    for tokenizer, encoder in (
        (base.tokenizer, base.text_encoder),
        (base.tokenizer_2, base.text_encoder_2),
    ):
        own = copy.deepcopy(tokenizer)
        own.add_tokens(names, special_tokens=True)
        view = _view(encoder)
        served = encoder.get_input_embeddings()
        std = served.weight.float().std().item()
        rows = torch.randn(len(names), served.embedding_dim, generator=generator) * std
        pivotal = PivotalEmbedding(served, rows.to(served.weight.device))
        view.set_input_embeddings(pivotal)
        view.requires_grad_(False)
        pivotal.rows.requires_grad_(True)
        encoders.append(view)
        tokenizers.append(own)
        embeddings.append(pivotal)
    unet = _unet(base.unet, trainable=not is_lora)
    trained = Trained(unet, encoders, tokenizers, embeddings, tokens, is_lora=is_lora)
    if is_lora:
        trained.unet_params = _add_lora(unet, rank, generator)
    else:
        trained.unet_params = [
            p for n, p in unet.named_parameters() if not any(w in n for w in FROZEN_IN_FINETUNE)
        ]
        for name, param in unet.named_parameters():
            param.requires_grad_(not any(w in name for w in FROZEN_IN_FINETUNE))
    return trained


def _view(module):
    """A module of the same class and config over the same (frozen) tensors."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        view = type(module)(copy.deepcopy(module.config))
    view.load_state_dict(module.state_dict(), strict=True, assign=True)
    return view.requires_grad_(False).eval()


def _unet(served, trainable: bool):
    """The served UNet's own parameters (no resident LoRA layer, no fused projection) in a
    module of its own: shared, or a float32 copy to fine-tune."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    plain = {
        key.replace(".base_layer.", "."): value
        for key, value in served.state_dict().items()
        if "lora_" not in key and ".to_qkv." not in key and ".to_kv." not in key
    }
    if trainable:
        plain = {key: value.detach().float().clone() for key, value in plain.items()}
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(served.config)
    unet.load_state_dict(plain, strict=True, assign=True)
    return unet.requires_grad_(False).train()


def _add_lora(unet, rank: int, generator: torch.Generator) -> list[torch.nn.Parameter]:
    """peft LoRA layers at scale 1 (alpha = rank, as the reference trains), float32, down
    projections drawn from `generator` (std 1/rank) and up projections zero."""
    from peft import LoraConfig

    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=LORA_TARGETS))
    params = []
    for name, param in unet.named_parameters():
        if "lora_" not in name:
            continue
        data = torch.zeros(param.shape, dtype=torch.float32)
        if "lora_A" in name:
            data.normal_(0.0, 1.0 / rank, generator=generator)
        param.data = data.to(param.device)
        param.requires_grad_(True)
        params.append(param)
    return params
