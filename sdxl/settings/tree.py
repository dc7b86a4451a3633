"""The settings tree: every SDXL_* variable, one field each, in a group per concern.

`load_settings()` reads the environment once, at start, and checks every variable before
anything loads (one SettingsError names each that cannot be used). The objects the code is
handed are built from the groups: `Runtime` (`runtime.build()`), `Caps` and `FetchSettings`
(`engine.caps.build()`, `fetch.build()`), the engine's, the API server's and the trainings'
settings (`EngineSettings.from_group`, `Settings.from_groups`, `TrainSettings.from_group`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict

from sdxl import logs
from sdxl.config import (
    DEFAULT_WEIGHTS_DIR,
    DTYPES,
    MAX_IMAGES,
    MAX_PIXELS,
    MAX_PROMPT_CHARS,
    PROMPT_SYNTAXES,
)
from sdxl.settings import (
    COMPILE_BACKENDS,
    DEVICES,
    SWITCHES,
    Caps,
    FetchSettings,
    LocalFiles,
    Runtime,
    SettingsError,
    checks,
    parse_shapes,
)
from sdxl.settings.specs import (
    Choice,
    Flag,
    Folder,
    Folders,
    Group,
    Number,
    Text,
    seconds,
    setting,
    size,
)
from sdxl.settings.store_group import StoreGroup

Int = int | None


class RuntimeGroup(Group):
    TITLE = "Weights and device"
    weights_dir: Annotated[Path, Folder()] = setting(
        "SDXL_WEIGHTS_DIR", Path(DEFAULT_WEIGHTS_DIR), "the weights root"
    )
    dtype: Annotated[str, Choice(DTYPES)] = setting(
        "SDXL_DTYPE",
        "auto",
        "auto: float16 on CUDA, bfloat16 on a CPU with it natively, else float32",
    )
    device: Annotated[str, Choice(DEVICES)] = setting(
        "SDXL_DEVICE", "auto", "auto: CUDA where torch sees a GPU, else the CPU"
    )
    channels_last: Annotated[str, Choice(SWITCHES)] = setting(
        "SDXL_CHANNELS_LAST", "auto", "UNets and VAE in channels-last layout (auto: on with CUDA)"
    )
    fuse_qkv: Annotated[str, Choice(SWITCHES)] = setting(
        "SDXL_FUSE_QKV", "auto", "one projection for Q, K, V (auto: on with CUDA)"
    )
    warmup: Annotated[str, Choice(SWITCHES)] = setting(
        "SDXL_WARMUP", "auto", "one small generation at setup (auto: on with CUDA)"
    )
    tf32: Annotated[str, Choice(SWITCHES)] = setting(
        "SDXL_TF32", "auto", "TF32 matrix products for what runs in float32 (auto: on with CUDA)"
    )
    compile: Annotated[bool, Choice(("0", "1"), "0", on="1")] = setting(
        "SDXL_COMPILE", False, "1: torch.compile the UNets and the VAE decoder"
    )
    compile_shapes: Annotated[
        tuple[tuple[int, int], ...],
        Text(lambda raw, _: parse_shapes(raw), "1024x1024", kind="sizes `WxH`, comma-separated"),
    ] = setting("SDXL_COMPILE_SHAPES", ((1024, 1024),), "the sizes compiled for, `WxH,WxH`")
    compile_backend: Annotated[str, Choice(COMPILE_BACKENDS)] = setting(
        "SDXL_COMPILE_BACKEND", "inductor", "eager or aot_eager: the same graphs, no code made"
    )
    compile_cache: Annotated[Path | None, Folder()] = setting(
        "SDXL_COMPILE_CACHE", None, "the Inductor cache (unset: <SDXL_WEIGHTS_DIR>/inductor-cache)"
    )
    vae_tile_above: Annotated[int, Number(int, 1)] = setting(
        "SDXL_VAE_TILE_ABOVE", 2560 * 1024, "pixels above which the VAE decodes in tiles"
    )

    def build(self) -> Runtime:
        return Runtime(**self.model_dump())


class CapsGroup(Group):
    TITLE = "Limits of every API"
    max_steps: Annotated[int, Number(int, 1, 500)] = setting(
        "SDXL_MAX_STEPS", 500, "num_inference_steps (and refine_steps) at most"
    )
    max_pixels: Annotated[int, Number(int, 1, MAX_PIXELS)] = setting(
        "SDXL_MAX_PIXELS", MAX_PIXELS, "width x height at most (images are scaled to it)"
    )
    max_outputs: Annotated[int, Number(int, 1, MAX_IMAGES)] = setting(
        "SDXL_MAX_OUTPUTS", MAX_IMAGES, "images per request at most"
    )
    max_prompt_chars: Annotated[int, Number(int, 1, MAX_PROMPT_CHARS)] = setting(
        "SDXL_MAX_PROMPT_CHARS", MAX_PROMPT_CHARS, "characters of each prompt field at most"
    )
    local_dirs: Annotated[tuple[Path, ...], Folders()] = setting(
        "SDXL_LOCAL_WEIGHTS_DIRS",
        (),
        "folders whose files replicate_weights may name (unset: none)",
    )

    def build(self) -> Caps:
        values = self.model_dump(exclude={"local_dirs"})
        return Caps(**values, local_files=LocalFiles(dirs=self.local_dirs))


class FetchGroup(Group):
    TITLE = "Outbound fetches"
    cache_dir: Annotated[Path, Folder()] = setting(
        "SDXL_CACHE_DIR",
        lambda: FetchSettings().cache_dir,
        "where downloads are cached",
        shown="~/.cache/sdxl-cog",
    )
    max_total_bytes: Annotated[int, size()] = setting(
        "SDXL_CACHE_MAX_SIZE", 20 << 30, "the download cache, all files"
    )
    max_file_bytes: Annotated[int, size()] = setting(
        "SDXL_FETCH_MAX_SIZE", 12 << 30, "one download at most"
    )
    connect_timeout: Annotated[float, seconds(0.001)] = setting(
        "SDXL_FETCH_CONNECT_TIMEOUT", 15.0, "seconds to connect"
    )
    read_timeout: Annotated[float, seconds(0.001)] = setting(
        "SDXL_FETCH_READ_TIMEOUT", 60.0, "seconds without a byte"
    )
    deadline: Annotated[float, seconds(0.001)] = setting(
        "SDXL_FETCH_DEADLINE", 1800.0, "seconds for one whole download"
    )
    public_only: Annotated[bool, Flag(invert=True)] = setting(
        "SDXL_ALLOW_PRIVATE_URLS", True, "1: fetch private, loopback and link-local addresses too"
    )

    def build(self, local_dirs: tuple[Path, ...] = ()) -> FetchSettings:
        return FetchSettings(**self.model_dump(), local_dirs=local_dirs)


class EngineGroup(Group):
    TITLE = "Engine"
    max_seconds: Annotated[float | None, seconds(0.001)] = setting(
        "SDXL_MAX_SECONDS", None, "running time of one job (unset: no limit)"
    )
    max_resident_loras: Annotated[Int, Number(int, 0)] = setting(
        "SDXL_MAX_RESIDENT_LORAS", None, "LoRAs kept loaded (unset: 4, or 0 with SDXL_COMPILE=1)"
    )
    max_resident_lora_bytes: Annotated[int, size()] = setting(
        "SDXL_MAX_RESIDENT_LORA_BYTES", 2 << 30, "resident LoRAs' bytes"
    )
    max_resident_unets: Annotated[Int, Number(int, 0)] = setting(
        "SDXL_MAX_RESIDENT_UNETS", None, "fine-tuned UNets kept (unset: 1 on CUDA, 0 on the CPU)"
    )
    max_resident_unet_bytes: Annotated[int, size()] = setting(
        "SDXL_MAX_RESIDENT_UNET_BYTES", 12 << 30, "resident fine-tuned UNets' bytes"
    )
    max_prepared_bytes: Annotated[int, size()] = setting(
        "SDXL_MAX_PREPARED_BYTES", 12 << 30, "trained weights waiting in host memory"
    )
    prepare_workers: Annotated[int, Number(int, 1)] = setting(
        "SDXL_PREPARE_WORKERS", 2, "jobs prepared (downloads) at once"
    )
    max_resident_controlnets: Annotated[int, Number(int, 0)] = setting(
        "SDXL_MAX_RESIDENT_CONTROLNETS", 3, "control models kept on the device after their job"
    )
    max_resident_ip_adapters: Annotated[int, Number(int, 1)] = setting(
        "SDXL_MAX_RESIDENT_IP_ADAPTERS", 2, "IP-Adapters kept on the device, off the UNet"
    )
    lora_dir: Annotated[Path | None, Folder()] = setting(
        "SDXL_LORA_DIR", None, "the LoRAs requests may name (unset: <SDXL_WEIGHTS_DIR>/loras)"
    )


class HttpGroup(Group):
    TITLE = "HTTP and tenants"
    max_body_bytes: Annotated[int, Number(int, 1024)] = setting(
        "SDXL_MAX_BODY_BYTES", 20 << 20, "the largest request body but /v1/files' (bytes)"
    )
    max_upload_bytes: Annotated[int, size(1024)] = setting(
        "SDXL_MAX_UPLOAD_BYTES", 256 << 20, "the largest POST /v1/files body"
    )
    queue_size: Annotated[int, Number(int, 0)] = setting(
        "SDXL_QUEUE_SIZE", 8, "the synchronous APIs' jobs waiting on a replica"
    )
    queue_size_per_key: Annotated[Int, Number(int, 0)] = setting(
        "SDXL_QUEUE_SIZE_PER_KEY", None, "those of one tenant (unset: half with several tenants)"
    )
    public_url: Annotated[str | None, Text(checks.public_url, kind="URL")] = setting(
        "SDXL_PUBLIC_URL", None, "the origin of every URL the API returns"
    )
    served_names: Annotated[
        tuple[str, ...],
        Text(checks.served_names, checks.GUIDE_MODEL, kind="models, comma-separated"),
    ] = setting("SDXL_REPLICATE_MODELS", (checks.GUIDE_MODEL,), "owner/name[:version], ...")
    page_size: Annotated[int, Number(int, 1)] = setting(
        "SDXL_PAGE_SIZE", 100, "predictions per page of GET /v1/predictions"
    )
    webhook_secret: Annotated[
        str | None, Text(checks.webhook_secret, secret=True, kind="secret")
    ] = setting("SDXL_WEBHOOK_SECRET", None, "whsec_<base64> (unset: made once, stored)")
    model_name: Annotated[str, Text(checks.model_name, "sdxl")] = setting(
        "SDXL_MODEL_NAME", "sdxl", "the model's id on OpenAI's and AUTOMATIC1111's APIs"
    )
    model_aliases: Annotated[
        tuple[str, ...], Text(checks.model_aliases, kind="names, comma-separated")
    ] = setting("SDXL_MODEL_ALIASES", (), "other names accepted for it, comma-separated")
    openai_prompt_syntax: Annotated[str, Choice(PROMPT_SYNTAXES)] = setting(
        "SDXL_OPENAI_PROMPT_SYNTAX", "plain", "how OpenAI's API reads prompts"
    )
    log_format: Annotated[
        str, Text(lambda raw, _: logs.log_format(raw), kind="`text` \\| `json`")
    ] = setting(
        "SDXL_LOG_FORMAT", "text", "the server's log lines: text or json (one object a line)"
    )
    api_keys: Annotated[str, Text(lambda raw, _: raw, secret=True, kind="secret")] = setting(
        "SDXL_API_KEYS", "", "API keys, `key` or `name:key`, comma-separated"
    )
    api_keys_file: Annotated[str, Text(lambda raw, _: raw, kind="path")] = setting(
        "SDXL_API_KEYS_FILE", "", "a file of API keys, one or more a line"
    )
    admin_key: Annotated[str, Text(lambda raw, _: raw, secret=True, kind="secret")] = setting(
        "SDXL_ADMIN_KEY", "", "the key that sees and cancels every tenant's predictions"
    )

    def key_sources(self) -> dict[str, str]:
        """The keys' variables as `sdxl.http.auth.load_api_keys` reads them."""
        return {
            "SDXL_API_KEYS": self.api_keys,
            "SDXL_API_KEYS_FILE": self.api_keys_file,
            "SDXL_ADMIN_KEY": self.admin_key,
        }


class TrainGroup(Group):
    TITLE = "Trainings"
    max_images: Annotated[int, Number(int, 1)] = setting(
        "SDXL_MAX_TRAIN_IMAGES", 1000, "images in one training archive"
    )
    max_bytes: Annotated[int, size()] = setting(
        "SDXL_MAX_TRAIN_ARCHIVE_BYTES", 2 << 30, "a training archive, uncompressed"
    )
    gradient_checkpointing: Annotated[str, Choice(SWITCHES)] = setting(
        "SDXL_TRAIN_GRADIENT_CHECKPOINTING", "auto", "recompute activations (auto: on CUDA)"
    )


class CogGroup(Group):
    TITLE = "Cog"
    ready_timeout: Annotated[float, seconds(1.0)] = setting(
        "SDXL_READY_TIMEOUT", 1800.0, "seconds `python -m sdxl predict` waits for its server"
    )


GROUPS = {
    "runtime": RuntimeGroup,
    "caps": CapsGroup,
    "fetch": FetchGroup,
    "engine": EngineGroup,
    "store": StoreGroup,
    "http": HttpGroup,
    "train": TrainGroup,
    "cog": CogGroup,
}


class SettingsTree(BaseModel):
    """Every group, read together."""

    model_config = ConfigDict(frozen=True)
    runtime: RuntimeGroup
    caps: CapsGroup
    fetch: FetchGroup
    engine: EngineGroup
    store: StoreGroup
    http: HttpGroup
    train: TrainGroup
    cog: CogGroup


def load_settings(env: Mapping[str, str] | None = None) -> SettingsTree:
    """Every setting from `env` (os.environ by default), read once; one SettingsError names
    every variable that cannot be used."""
    groups, errors = {}, []
    for name, group in GROUPS.items():
        try:
            groups[name] = group.read(env)
        except SettingsError as err:
            errors.append(str(err))
    if errors:
        raise SettingsError("\n".join(errors))
    return SettingsTree(**groups)
