"""`trained_model.tar`: the reference trainer's layout, so that Replicate's own predictor and
ours (`replicate_weights`) load it, and in `webui/` the same weights as the other SDXL tools
read them, named after the training (`name`: the `name` input, the destination and version on
the trainings API, else the first 8 hex digits of the sha256 of `lora.safetensors`, or of
`unet.safetensors` for a full fine-tune), so that two trainings' files can share the web UIs'
folders.

- `lora.safetensors`: the LoRA in the reference's keys (diffusers' old attention-processor
  names, `...attn1.processor.to_q_lora.down.weight`), float32; or `unet.safetensors` for a
  full fine-tune: the trained UNet parameters (norms and time embeddings were not trained);
- `embeddings.pti`: safetensors with `text_encoders_0` [n, 768] and `text_encoders_1`
  [n, 1280], one row per new token `<s0>`, `<s1>`, ...; `special_params.json`: each concept's
  word and its tokens, {"TOK": "<s0><s1>"};
- `webui/<name>.safetensors`: the LoRA in kohya's keys (`lora_unet_..._to_q.lora_down.weight`,
  `.lora_up.weight`, `.alpha` = rank): AUTOMATIC1111, ComfyUI, Forge, InvokeAI and diffusers'
  `load_lora_weights` read it;
- `webui/embeddings.safetensors`: `clip_l` [n, 768] and `clip_g` [n, 1280], every new token's
  row, what diffusers' `load_textual_inversion` (one call per text encoder) reads;
- `webui/embeddings/<name>_<word>.safetensors`: the same for one concept (its two rows). The
  web UIs take an embedding's file name as the word that calls it in a prompt: there the
  prompt says `<name>_<word>` where it says `<word>` with `replicate_weights`.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from pathlib import Path

import torch
from safetensors.torch import save

from sdxl.train.trainable import Trained

EMBEDDINGS_DIR = "webui/embeddings/"  # one file per concept, for the web UIs
DIFFUSERS_EMBEDDINGS = "webui/embeddings.safetensors"  # every token's rows, for diffusers
_PEFT = re.compile(r"(?P<module>.+)\.(?P<proj>to_q|to_k|to_v|to_out\.0)\.lora_(?P<ab>[AB])\.weight")


def tar_members(trained: Trained, dtype: torch.dtype, name: str | None = None) -> dict[str, bytes]:
    """The tar's files, by name; the web UI files named after `name` (None: weights_hash)."""
    rows = [e.rows.detach().float().cpu().contiguous() for e in trained.embeddings]
    members: dict[str, bytes] = {}
    if trained.is_lora:
        lora = peft_lora(trained.unet)
        members["lora.safetensors"] = save(reference_keys(lora))
        name = name or weights_hash(members["lora.safetensors"])
        members[lora_member(name)] = save(kohya_keys(lora))
    else:
        names = {id(p): n for n, p in trained.unet.named_parameters()}
        tuned = {names[id(p)]: p.detach().to(dtype).cpu().contiguous() for p in trained.unet_params}
        members["unet.safetensors"] = save(tuned)
        name = name or weights_hash(members["unet.safetensors"])
    members["embeddings.pti"] = save({"text_encoders_0": rows[0], "text_encoders_1": rows[1]})
    members[DIFFUSERS_EMBEDDINGS] = save({"clip_l": rows[0], "clip_g": rows[1]})
    first = 0
    for concept, tokens in trained.tokens.items():  # rows in the order of the concepts' tokens
        mine = slice(first, first + len(tokens))
        first += len(tokens)
        own = {"clip_l": rows[0][mine].contiguous(), "clip_g": rows[1][mine].contiguous()}
        members[embedding_member(name, concept)] = save(own)
    members["special_params.json"] = json.dumps(trained.special_params).encode()
    return members


def weights_hash(weights: bytes) -> str:
    """The default name: the first 8 hex digits of the trained weights file's sha256."""
    return hashlib.sha256(weights).hexdigest()[:8]


def lora_member(name: str) -> str:
    return f"webui/{name}.safetensors"


def embedding_member(name: str, word: str) -> str:
    return f"{EMBEDDINGS_DIR}{name}_{word}.safetensors"


def write_tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def peft_lora(unet) -> dict[str, torch.Tensor]:
    """The UNet's LoRA as peft names it (`...to_q.lora_A.weight`), float32."""
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(unet)
    return {key: value.detach().float().cpu().contiguous() for key, value in state.items()}


def reference_keys(lora: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in lora.items():
        match = _PEFT.fullmatch(key)
        if match is None:
            raise ValueError(f"an unexpected LoRA tensor {key}")
        proj = match["proj"].replace(".0", "")
        side = "down" if match["ab"] == "A" else "up"
        out[f"{match['module']}.processor.{proj}_lora.{side}.weight"] = value
    return out


def kohya_keys(lora: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from diffusers.utils import convert_state_dict_to_kohya

    kohya = convert_state_dict_to_kohya({f"unet.{k}": v for k, v in lora.items()})
    return {key: value.contiguous() for key, value in kohya.items()}
