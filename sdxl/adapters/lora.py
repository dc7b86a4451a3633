"""LoRA files, read and checked off the GPU: every format becomes diffusers' own state dict.

A LoRA comes as the Replicate trainer's old attention-processor keys
(`...attn1.processor.to_q_lora.down.weight`, converted here to peft keys and checked against
the UNet's own layers), or as a file diffusers reads itself (diffusers/peft keys with the
alpha in the file's metadata, or kohya keys with `.alpha` tensors). `read_lora` does the file
reading and conversion that `load_lora_weights` would do under the lock, so that loading the
adapter later is only the copy into the model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from sdxl.adapters.tar import check_tensors, load_safetensors
from sdxl.config import MAX_PROMPT_CHARS
from sdxl.errors import InputError

MAX_RANK = 1024
MAX_LORA_BYTES = 2 << 30
_OLD_KEY = re.compile(
    r"(?P<attn>(?:down_blocks\.\d+|up_blocks\.\d+|mid_block)\.attentions\.\d+"
    r"\.transformer_blocks\.\d+\.attn[12])\.processor"
    r"\.(?P<proj>to_q|to_k|to_v|to_out)_lora\.(?P<which>down|up)\.weight"
)


class LoraError(InputError):
    """A LoRA that cannot be used as given; the message names the input."""


@dataclass
class LoraState:
    """One LoRA as diffusers loads it: `load_lora_into_unet` / `_into_text_encoder` inputs."""

    state: dict[str, torch.Tensor]
    alphas: dict[str, float] | None = None  # kohya's network alphas
    metadata: dict | None = None  # diffusers' adapter metadata (peft lora_alpha and rank)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.state.values())


# ---- old Replicate trainer keys -> peft keys ---------------------------------------------
def is_old_format(state: dict) -> bool:
    """Any attention-processor key makes it the old format (then all keys must be)."""
    return any(".processor." in k and _OLD_KEY.fullmatch(k) for k in state)


def convert_old_lora(
    state: dict[str, torch.Tensor], linears: dict[str, tuple[int, int]], label: str
) -> dict[str, torch.Tensor]:
    """Attention-processor LoRA (`...attn1.processor.to_q_lora.down.weight`) -> peft keys
    (`unet....attn1.to_q.lora_A.weight`), checked against the UNet's Linear layers
    (`Models.unet_linears`: name -> (in_features, out_features)).

    The old processors computed W x + scale * up(down(x)), with no alpha: lora_alpha = rank.
    """
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        m = _OLD_KEY.fullmatch(key)
        if m is None:
            raise LoraError(f"{label}: {key[:120]!r} is not an attention-processor LoRA key")
        proj = "to_out.0" if m["proj"] == "to_out" else m["proj"]
        target = f"{m['attn']}.{proj}"
        layer = linears.get(target)
        if layer is None:
            raise LoraError(f"{label}: {key[:120]!r} names no layer of the SDXL UNet")
        down = m["which"] == "down"
        pair = state.get(key.replace(".down.", ".up.") if down else key.replace(".up.", ".down."))
        if pair is None or tensor.dim() != 2:
            raise LoraError(f"{label}: {key[:120]!r} has no matching up/down pair")
        rank = tensor.shape[0] if down else tensor.shape[1]
        in_features, out_features = layer
        want = (rank, in_features) if down else (out_features, rank)
        if tuple(tensor.shape) != want or not 1 <= rank <= MAX_RANK:
            raise LoraError(
                f"{label}: {key[:120]!r} has shape {tuple(tensor.shape)}, the UNet needs {want}"
            )
        out[f"unet.{target}.lora_{'A' if down else 'B'}.weight"] = tensor
    return out


# ---- reading -------------------------------------------------------------------------------
def read_lora(path: Path, label: str, linears: dict, unet_config) -> LoraState:
    """A LoRA .safetensors file as diffusers would load it, checked; raises LoraError.

    `path` must end in `.safetensors` (diffusers reads the adapter metadata from the file)."""
    if path.stat().st_size > MAX_LORA_BYTES:
        raise LoraError(f"{label}: the LoRA file is larger than {MAX_LORA_BYTES} bytes")
    raw = load_safetensors(path, label)  # refuses pickles, with a message saying why
    if not raw:
        raise LoraError(f"{label}: the file holds no tensors")
    check_tensors(raw, label)
    if is_old_format(raw):
        return LoraState(convert_old_lora(raw, linears, label))
    from diffusers import StableDiffusionXLPipeline

    try:
        state, alphas, metadata = StableDiffusionXLPipeline.lora_state_dict(
            str(path.parent),
            weight_name=path.name,
            unet_config=unet_config,
            use_safetensors=True,
            local_files_only=True,
            return_lora_metadata=True,
        )
    except Exception as err:  # diffusers on keys it cannot map
        raise LoraError(f"{label}: the LoRA could not be read ({_why(err)})") from None
    if not state or not all("lora" in key for key in state):
        raise LoraError(f"{label}: none of its weights match the SDXL UNet or text encoders")
    return LoraState(state, alphas, metadata)


def _why(err: Exception) -> str:
    return f"{type(err).__name__}: {str(err)[:300]}"


# ---- prompts ------------------------------------------------------------------------------
def rewrite_prompt(text: str | None, special_params: dict[str, str]) -> str | None:
    """Replace each key (e.g. "TOK") with its value, in one pass, longest key first, so a
    replacement is never replaced again; a key that starts or ends with a letter, digit or _
    is replaced as a whole word only ("TOK," and "(TOK)" are; "TOKYO" is not)."""
    if text is None or not special_params:
        return text
    out = whole_words(special_params).sub(lambda m: special_params[m.group(0)], text)
    if len(out) > MAX_PROMPT_CHARS:
        raise LoraError(
            f"the prompt has {len(out)} characters after replacing the trained weights' special "
            f"tokens; the limit is {MAX_PROMPT_CHARS}",
            "prompt",
        )
    return out


def whole_words(keys) -> re.Pattern:
    def bounded(key: str) -> str:
        left = r"(?<![A-Za-z0-9_])" if re.match(r"\w", key[:1]) else ""
        right = r"(?![A-Za-z0-9_])" if re.match(r"\w", key[-1:]) else ""
        return left + re.escape(key) + right

    return re.compile("|".join(bounded(k) for k in sorted(keys, key=len, reverse=True)))
