"""LoRAs, trained weights and new tokens, applied to the shared models for one request only.

`with adapters_applied(models, spec) as applied:` fetches and validates everything first
(nothing is touched if any input is bad), then changes the SHARED modules: LoRAs loaded
through diffusers/peft into the base UNet (and text encoders, for LoRAs that have them),
a full fine-tune copied into the base UNet's parameters, new tokens added to every
tokenizer/text encoder pair of base and refiner. On the way out, even after an exception or a
cancellation midway, everything is put back bitwise: adapters unloaded (never fused), the
UNet's replaced tensors restored, the original embedding modules and tokenizer state put back.

The scale is set with `set_adapters`, so the pipelines need no extra arguments. LoRAs apply
to the base UNet only: the refiner has another architecture; new tokens reach it through the
shared text_encoder_2/tokenizer_2.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sdxl.config import MAX_PROMPT_CHARS
from sdxl.fetch import DownloadCache, default_cache
from sdxl.trained import (
    TrainedWeights,
    TrainedWeightsError,
    check_tensors,
    load_safetensors,
    read_trained_tar,
    safetensors_shapes,
    sniff,
)
from sdxl.tuning import LoraError, Session, any_lora

log = logging.getLogger(__name__)

LORAS_DIR = "loras"  # under the weights folder
NAMED_LORAS = {"offset": f"{LORAS_DIR}/offset.safetensors"}  # from the SDXL base repository
LORA_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
MAX_RANK = 1024
MAX_LORA_BYTES = 2 << 30
PROMPT_FIELDS = ("prompt", "prompt_2", "negative_prompt", "negative_prompt_2")
_OLD_KEY = re.compile(
    r"(?P<attn>(?:down_blocks\.\d+|up_blocks\.\d+|mid_block)\.attentions\.\d+"
    r"\.transformer_blocks\.\d+\.attn[12])\.processor"
    r"\.(?P<proj>to_q|to_k|to_v|to_out)_lora\.(?P<which>down|up)\.weight"
)


@dataclass(frozen=True)
class AdapterSpec:
    """What one request asks for. Empty: nothing is loaded and nothing is touched."""

    replicate_weights: str | None = None  # URL of a trainer tar or of a LoRA .safetensors
    lora_name: str | None = None  # a LoRA we ship: "offset"
    lora_id: str | None = None  # <SDXL_LORA_DIR>/<id>.safetensors
    lora_scale: float = 0.6

    @property
    def empty(self) -> bool:
        return not (self.replicate_weights or self.lora_name or self.lora_id)

    @classmethod
    def from_request(cls, req) -> AdapterSpec:
        return cls(
            replicate_weights=getattr(req, "replicate_weights", None) or None,
            lora_name=getattr(req, "lora_name", None),
            lora_id=getattr(req, "lora_id", None),
            lora_scale=float(getattr(req, "lora_scale", 0.6)),
        )


def check_spec(spec: AdapterSpec) -> None:
    """The checks that need no file or model (for check_inputs)."""
    if not math.isfinite(spec.lora_scale):
        raise LoraError(f"lora_scale={spec.lora_scale} must be a finite number")
    if spec.lora_name is not None and spec.lora_name not in NAMED_LORAS:
        raise LoraError(
            f"lora_name={spec.lora_name!r} is not available; choose one of: "
            f"{', '.join(NAMED_LORAS)}"
        )
    if spec.lora_id is not None and (
        not isinstance(spec.lora_id, str)
        or not LORA_ID.fullmatch(spec.lora_id)
        or ".." in spec.lora_id
    ):
        raise LoraError(
            f"lora_id={str(spec.lora_id)[:80]!r} is not a valid id: use letters, digits, '_', "
            "'-' and '.', at most 128 characters, no path separators or '..'"
        )


def lora_dir(weights_dir: Path) -> Path:
    return Path(os.environ.get("SDXL_LORA_DIR") or weights_dir / LORAS_DIR)


# ---- old Replicate trainer keys -> peft keys ---------------------------------------------
def is_old_format(state: dict) -> bool:
    """Any attention-processor key makes it the old format (then all keys must be)."""
    return any(".processor." in k and _OLD_KEY.fullmatch(k) for k in state)


def convert_old_lora(state: dict[str, torch.Tensor], unet, label: str) -> dict[str, torch.Tensor]:
    """Attention-processor LoRA (`...attn1.processor.to_q_lora.down.weight`) -> peft keys
    (`unet....attn1.to_q.lora_A.weight`), checked against the UNet's own layers.

    The old processors computed W x + scale * up(down(x)), with no alpha: lora_alpha = rank.
    """
    modules = dict(unet.named_modules())
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        m = _OLD_KEY.fullmatch(key)
        if m is None:
            raise LoraError(f"{label}: {key[:120]!r} is not an attention-processor LoRA key")
        proj = "to_out.0" if m["proj"] == "to_out" else m["proj"]
        target = f"{m['attn']}.{proj}"
        layer = modules.get(target)
        if not isinstance(layer, torch.nn.Linear):
            raise LoraError(f"{label}: {key[:120]!r} names no layer of the SDXL UNet")
        down = m["which"] == "down"
        pair = state.get(key.replace(".down.", ".up.") if down else key.replace(".up.", ".down."))
        if pair is None or tensor.dim() != 2:
            raise LoraError(f"{label}: {key[:120]!r} has no matching up/down pair")
        rank = tensor.shape[0] if down else tensor.shape[1]
        want = (rank, layer.in_features) if down else (layer.out_features, rank)
        if tuple(tensor.shape) != want or not 1 <= rank <= MAX_RANK:
            raise LoraError(
                f"{label}: {key[:120]!r} has shape {tuple(tensor.shape)}, the UNet needs {want}"
            )
        out[f"unet.{target}.lora_{'A' if down else 'B'}.weight"] = tensor
    return out


def random_kohya_lora(unet, rank: int = 4, seed: int = 0, std: float = 0.05) -> dict:
    """A small random kohya-format LoRA for `unet`'s attention layers: for the tiny test
    model's `loras/offset.safetensors` (`weights tiny`), so `lora_name` works there too."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, layer in unet.named_modules():
        if name.endswith((".to_q", ".to_k", ".to_v", ".to_out.0")):
            key = "lora_unet_" + name.replace(".", "_")
            out[f"{key}.lora_down.weight"] = torch.randn(rank, layer.in_features, generator=g) * std
            out[f"{key}.lora_up.weight"] = torch.randn(layer.out_features, rank, generator=g) * std
            out[f"{key}.alpha"] = torch.tensor(float(rank))
    return out


# ---- prompts ------------------------------------------------------------------------------
def rewrite_prompt(text: str | None, special_params: dict[str, str]) -> str | None:
    """Replace each key (e.g. "TOK") with its value in one pass, longest key first, so a
    replacement is never replaced again."""
    if text is None or not special_params:
        return text
    pattern = re.compile("|".join(re.escape(k) for k in sorted(special_params, key=len)[::-1]))
    out = pattern.sub(lambda m: special_params[m.group(0)], text)
    if len(out) > MAX_PROMPT_CHARS:
        raise LoraError(
            f"the prompt has {len(out)} characters after replacing the trained weights' special "
            f"tokens; the limit is {MAX_PROMPT_CHARS}"
        )
    return out


@dataclass
class Applied:
    """What is active inside `adapters_applied`, and the prompt rewriting it implies."""

    special_params: dict[str, str] = field(default_factory=dict)
    tokens: list[str] = field(default_factory=list)
    adapters: list[str] = field(default_factory=list)  # labels, e.g. "lora_name='offset'"
    lora_scale: float | None = None
    finetuned_unet: bool = False

    def rewrite(self, text: str | None) -> str | None:
        return rewrite_prompt(text, self.special_params)

    def rewrite_request(self, req):
        """`req` (a frozen dataclass) with its prompt fields rewritten."""
        changes = {
            name: self.rewrite(getattr(req, name)) for name in PROMPT_FIELDS if hasattr(req, name)
        }
        return dataclasses.replace(req, **changes) if self.special_params else req

    def describe(self) -> dict:
        return {
            "adapters": list(self.adapters),
            "lora_scale": self.lora_scale,
            "tokens": list(self.tokens),
            "finetuned_unet": self.finetuned_unet,
        }


# ---- resolving a spec: all I/O and validation, nothing touched ----------------------------
@dataclass
class _Plan:
    loras: list[tuple[str, dict | Path]] = field(default_factory=list)  # label, tensors or file
    trained: TrainedWeights | None = None


def _resolve(models, spec: AdapterSpec, cache: DownloadCache, weights_dir: Path, work: Path):
    check_spec(spec)
    plan = _Plan()
    unet = models.base.unet
    if spec.replicate_weights:
        label = "replicate_weights"
        path = cache.fetch(spec.replicate_weights, label)
        kind = sniff(path)
        if kind == "tar":
            plan.trained = read_trained_tar(path, work / "trained", label)
            if plan.trained.lora is not None:
                state = plan.trained.lora
                if is_old_format(state):
                    state = convert_old_lora(state, unet, f"{label}: lora.safetensors")
                    plan.loras.append((label, state))
                else:
                    plan.loras.append((label, work / "trained" / "lora.safetensors"))
            if plan.trained.unet_file is not None:
                _check_unet_file(plan.trained.unet_file, unet, label)
        elif kind == "safetensors":
            plan.loras.append((label, _plain_lora(_staged(path, work), label, unet)))
        elif kind == "pickle":
            load_safetensors(path, label)  # raises the "never unpickled" message
        else:
            raise LoraError(f"{label}: the file is neither a tar nor a .safetensors LoRA")
    if spec.lora_name:
        label = f"lora_name={spec.lora_name!r}"
        path = weights_dir / NAMED_LORAS[spec.lora_name]
        if not path.is_file():
            raise LoraError(
                f"{label}: {path} is missing; run `python -m sdxl weights download` to fetch it"
            )
        plan.loras.append((label, _plain_lora(path, label, unet)))
    if spec.lora_id:
        label = f"lora_id={spec.lora_id!r}"
        folder = lora_dir(weights_dir)
        path = folder / f"{spec.lora_id}.safetensors"
        if not path.is_file():
            raise LoraError(f"{label}: no such LoRA (looked for {spec.lora_id}.safetensors)")
        plan.loras.append((label, _plain_lora(path, label, unet)))
    return plan


def _staged(path: Path, work: Path) -> Path:
    """The fetched file under a .safetensors name (diffusers reads LoRA metadata from it)."""
    staged = work / "replicate_weights.safetensors"
    try:
        os.link(path, staged)
    except OSError:
        shutil.copyfile(path, staged)
    return staged


def _plain_lora(path: Path, label: str, unet) -> dict[str, torch.Tensor] | Path:
    """A checked LoRA file: its path (diffusers loads it, with the alphas in its metadata),
    or, for the old attention-processor layout, the converted tensors."""
    if path.stat().st_size > MAX_LORA_BYTES:
        raise LoraError(f"{label}: the LoRA file is larger than {MAX_LORA_BYTES} bytes")
    state = load_safetensors(path, label)
    if not state:
        raise LoraError(f"{label}: the file holds no tensors")
    check_tensors(state, label)
    if is_old_format(state):
        return convert_old_lora(state, unet, label)
    return path


def _check_unet_file(path: Path, unet, label: str) -> None:
    own = unet.state_dict()
    for key, (dtype, shape) in safetensors_shapes(path, f"{label}: unet.safetensors").items():
        target = own.get(key)
        if target is None:
            raise TrainedWeightsError(
                f"{label}: unet.safetensors has {key[:120]!r}, which the SDXL UNet does not have"
            )
        if dtype is None or tuple(target.shape) != shape:
            raise TrainedWeightsError(
                f"{label}: unet.safetensors has {key[:120]!r} as {dtype} {shape}; the UNet "
                f"needs a float tensor of shape {tuple(target.shape)}"
            )


_lock = threading.Lock()
_broken: list[str] = []  # set when the shared models could not be put back


@contextmanager
def adapters_applied(
    models,
    spec: AdapterSpec,
    *,
    cache: DownloadCache | None = None,
    weights_dir: Path | None = None,
) -> Iterator[Applied]:
    """Apply `spec` to the shared models for the body of the `with`, then undo it all."""
    if _broken:
        raise RuntimeError(
            "the shared models could not be restored after an earlier request's trained weights "
            f"({_broken[0]}); restart the predictor"
        )
    if spec.empty:
        yield Applied()
        return
    if weights_dir is None:
        weights_dir = Path(models.base.name_or_path).parent
    cache = cache or default_cache()
    locked = False
    try:
        locked = _lock.acquire(blocking=False)
        if not locked:
            raise RuntimeError("trained weights are already applied (one request at a time)")
        with tempfile.TemporaryDirectory(prefix="sdxl-trained-", dir=_work_root(cache)) as tmp:
            plan = _resolve(models, spec, cache, weights_dir, Path(tmp))
            if any_lora(models):
                log.warning("LoRA layers left over from an earlier request: unloading them")
                models.base.unload_lora_weights()
            session = Session(models)
            try:
                yield _apply(session, plan, spec.lora_scale)
            finally:
                _restore(session)
    finally:
        if locked:
            _lock.release()


def _apply(session: Session, plan: _Plan, scale: float) -> Applied:
    applied = Applied(lora_scale=scale)
    trained = plan.trained
    if trained is not None and trained.embeddings:
        session.add_tokens(trained.tokens, trained.embeddings)
        applied.tokens = trained.tokens
    if trained is not None and trained.unet_file is not None:
        session.finetune(trained.unet_file)
        applied.finetuned_unet = True
    session.load_loras(plan.loras, scale)
    applied.adapters = [label for label, _state in plan.loras]
    applied.special_params = dict(trained.special_params) if trained else {}
    log.info(
        "trained weights active: LoRA %s (scale %g), fine-tuned UNet: %s, new tokens %s; "
        "LoRA and fine-tune apply to the base UNet only, the refiner's UNet runs unchanged, "
        "new tokens reach the refiner through the shared text_encoder_2",
        applied.adapters or "none",
        scale,
        "yes" if applied.finetuned_unet else "no",
        applied.tokens or "none",
    )
    return applied


def _restore(session: Session) -> None:
    # A second interruption arriving while restoring: every step is idempotent, so try again.
    for attempt in range(3):
        try:
            session.restore()
            return
        except BaseException as err:
            if attempt == 2:
                log.exception("could not restore the shared models after trained weights")
                _broken.append(f"{type(err).__name__}: {err}")
                raise


def _work_root(cache: DownloadCache) -> str:
    root = cache.settings.cache_dir / "work"
    root.mkdir(parents=True, exist_ok=True)
    return str(root)
