"""Every SDXL_* variable against the behaviour it had before the settings tree.

tests/data/settings-v1.json was written by the hand-parsed settings (the seven `from_env`
functions and the module-level reads) before the tree replaced them: for each variable, raw
values and what they gave, the value (its repr) or the error (its type and message). The
settings tree (`sdxl.settings.tree.load_settings`) must give exactly the same, so that no
operator sees a change; the old entry points (`Runtime.from_env`, ...) are now built on it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from sdxl import cli
from sdxl.engine.engine_settings import EngineSettings
from sdxl.http.server_settings import Settings
from sdxl.settings import Runtime, SettingsError
from sdxl.settings.show import effective, markdown, table_in
from sdxl.settings.tree import load_settings
from sdxl.train.train_settings import TrainSettings

pytestmark = pytest.mark.timeout(60)

ROWS = json.loads((Path(__file__).parent / "data" / "settings-v1.json").read_text())
VARIABLES = sorted({row[0] for row in ROWS})
# Where each variable's value lands in the objects the code is handed.
WHERE = {
    "SDXL_OPENAI_PROMPT_SYNTAX": "openai_prompt_syntax",
    "SDXL_READY_TIMEOUT": "ready_timeout",
    "SDXL_LOG_FORMAT": "log_format",
}


def _read(env: dict[str, str]) -> dict[str, object]:
    """Every setting `env` gives, by variable: the tree read once, and the objects the code is
    handed built from it."""
    tree = load_settings(env)
    return {
        "runtime": tree.runtime.build(),
        "engine": EngineSettings.from_group(tree.engine, tree.caps, tree.fetch),
        "server": Settings.from_groups(tree.http, tree.store, 1),
        "train": TrainSettings.from_group(tree.train),
        "openai_prompt_syntax": tree.http.openai_prompt_syntax,
        "ready_timeout": tree.cog.ready_timeout,
        "log_format": tree.http.log_format,
    }


PATHS = {
    "SDXL_WEIGHTS_DIR": "runtime.weights_dir",
    "SDXL_DTYPE": "runtime.dtype",
    "SDXL_DEVICE": "runtime.device",
    "SDXL_CHANNELS_LAST": "runtime.channels_last",
    "SDXL_FUSE_QKV": "runtime.fuse_qkv",
    "SDXL_WARMUP": "runtime.warmup",
    "SDXL_TF32": "runtime.tf32",
    "SDXL_COMPILE": "runtime.compile",
    "SDXL_COMPILE_SHAPES": "runtime.compile_shapes",
    "SDXL_COMPILE_BACKEND": "runtime.compile_backend",
    "SDXL_VAE_TILE_ABOVE": "runtime.vae_tile_above",
    "SDXL_MAX_SECONDS": "engine.max_seconds",
    "SDXL_MAX_RESIDENT_LORAS": "engine.max_resident_loras",
    "SDXL_MAX_RESIDENT_LORA_BYTES": "engine.max_resident_lora_bytes",
    "SDXL_MAX_RESIDENT_UNETS": "engine.max_resident_unets",
    "SDXL_MAX_RESIDENT_UNET_BYTES": "engine.max_resident_unet_bytes",
    "SDXL_MAX_PREPARED_BYTES": "engine.max_prepared_bytes",
    "SDXL_PREPARE_WORKERS": "engine.prepare_workers",
    "SDXL_MAX_RESIDENT_CONTROLNETS": "engine.max_resident_controlnets",
    "SDXL_MAX_RESIDENT_IP_ADAPTERS": "engine.max_resident_ip_adapters",
    "SDXL_LORA_DIR": "engine.lora_dir",
    "SDXL_MAX_STEPS": "engine.caps.max_steps",
    "SDXL_MAX_PIXELS": "engine.caps.max_pixels",
    "SDXL_MAX_OUTPUTS": "engine.caps.max_outputs",
    "SDXL_MAX_PROMPT_CHARS": "engine.caps.max_prompt_chars",
    "SDXL_LOCAL_WEIGHTS_DIRS": "engine.fetch.local_dirs",
    "SDXL_CACHE_DIR": "engine.fetch.cache_dir",
    "SDXL_CACHE_MAX_SIZE": "engine.fetch.max_total_bytes",
    "SDXL_FETCH_MAX_SIZE": "engine.fetch.max_file_bytes",
    "SDXL_FETCH_CONNECT_TIMEOUT": "engine.fetch.connect_timeout",
    "SDXL_FETCH_READ_TIMEOUT": "engine.fetch.read_timeout",
    "SDXL_FETCH_DEADLINE": "engine.fetch.deadline",
    "SDXL_ALLOW_PRIVATE_URLS": "engine.fetch.public_only",
    "SDXL_MAX_BODY_BYTES": "server.max_body_bytes",
    "SDXL_MAX_UPLOAD_BYTES": "server.max_upload_bytes",
    "SDXL_QUEUE_SIZE": "server.queue_size",
    "SDXL_QUEUE_SIZE_PER_KEY": "server.queue_size_per_key",
    "SDXL_PUBLIC_URL": "server.public_url",
    "SDXL_STATE_DIR": "server.state_dir",
    "SDXL_DATABASE_URL": "server.database_url",
    "SDXL_FILES_DIR": "server.files_dir",
    "SDXL_PREDICTION_TTL": "server.store.ttl_s",
    "SDXL_MAX_STORED_PREDICTIONS": "server.store.max_predictions",
    "SDXL_MAX_STORED_BYTES": "server.store.max_bytes",
    "SDXL_MAX_QUEUED_PREDICTIONS": "server.store.max_queued",
    "SDXL_MAX_QUEUED_PER_KEY": "server.store.max_queued_per_tenant",
    "SDXL_MAX_TRAININGS_PER_KEY": "server.store.max_trainings_per_tenant",
    "SDXL_MAX_STORED_BYTES_PER_KEY": "server.store.max_bytes_per_tenant",
    "SDXL_REPLICATE_MODELS": "server.served_names",
    "SDXL_PAGE_SIZE": "server.page_size",
    "SDXL_WEBHOOK_SECRET": "server.webhook_secret",
    "SDXL_REPLICA_TIMEOUT": "server.replica_timeout_s",
    "SDXL_STORE_POLL_S": "server.store_poll_s",
    "SDXL_JOB_KINDS": "server.job_kinds",
    "SDXL_MODEL_NAME": "server.model_name",
    "SDXL_MODEL_ALIASES": "server.model_aliases",
    "SDXL_MAX_TRAIN_IMAGES": "train.archive.max_images",
    "SDXL_MAX_TRAIN_ARCHIVE_BYTES": "train.archive.max_bytes",
    "SDXL_TRAIN_GRADIENT_CHECKPOINTING": "train.gradient_checkpointing",
    **WHERE,
}


def _shown(value: object) -> str:
    return repr(value).replace(str(Path.home()), "~")


def _outcome(variable: str, raw: str) -> tuple[str, str]:
    try:
        value: object = _read({variable: raw})
    except Exception as err:  # the error is what is compared
        # SDXL_LOG_FORMAT's was a ValueError; the tree's errors are all SettingsError (a
        # ValueError too), with the same message
        kind = "ValueError" if variable == "SDXL_LOG_FORMAT" and type(err) is SettingsError else ""
        return "error", f"{kind or type(err).__name__}: {err}"
    for name in PATHS[variable].split("."):
        value = value[name] if isinstance(value, dict) else getattr(value, name)
    return "value", _shown(value)


def test_the_inventory_names_every_variable():
    assert set(PATHS) == set(VARIABLES)


@pytest.mark.parametrize("variable", VARIABLES)
def test_each_variable_reads_as_before(variable):
    rows = [row for row in ROWS if row[0] == variable]
    assert rows
    differ = [
        (raw, (kind, text), _outcome(variable, raw))
        for _, raw, kind, text in rows
        if _outcome(variable, raw) != (kind, text)
    ]
    assert not differ, differ


def test_the_docs_table_is_the_trees():
    """docs/operations.md's settings tables are `python -m sdxl settings --markdown`'s."""
    page = (Path(__file__).parent.parent / "docs" / "operations.md").read_text()
    assert table_in(page) == markdown(), "run python -m sdxl settings --markdown into the page"
    documented = set(re.findall(r"^\| `(SDXL_\w+)` \|", markdown(), flags=re.M))
    assert set(PATHS) <= documented


def test_every_unusable_variable_is_named_before_anything_loads():
    env = {"SDXL_MAX_STEPS": "0", "SDXL_DTYPE": "half", "SDXL_QUEUE_SIZE": "many"}
    with pytest.raises(SettingsError) as caught:
        load_settings(env)
    lines = str(caught.value).splitlines()
    assert len(lines) == 3
    assert any(line.startswith("SDXL_MAX_STEPS='0' is not valid") for line in lines)
    assert any(line.startswith("SDXL_DTYPE='half' is not valid") for line in lines)
    assert any(line.startswith("SDXL_QUEUE_SIZE='many' is not valid") for line in lines)


def test_the_effective_settings_mask_secrets():
    env = {
        "SDXL_DATABASE_URL": "postgresql+psycopg://sdxl:hunter2@db/sdxl",
        "SDXL_FILES_DIR": "/shared/files",
        "SDXL_API_KEYS": "alice:key-one",
        "SDXL_ADMIN_KEY": "admin-key",
        "SDXL_WEBHOOK_SECRET": "whsec_c2VjcmV0",
        "SDXL_MAX_STORED_BYTES": "20G",
    }
    shown = effective(load_settings(env))
    for secret in ("hunter2", "key-one", "admin-key", "c2VjcmV0"):
        assert secret not in shown
    lines = set(shown.splitlines())
    assert "SDXL_DATABASE_URL=postgresql+psycopg://sdxl:***@db/sdxl" in lines
    assert "SDXL_API_KEYS=***" in lines
    assert f"SDXL_MAX_STORED_BYTES={20 << 30}" in lines
    assert "SDXL_FILES_DIR=/shared/files" in lines


def test_the_settings_command_refuses_an_unusable_environment(capsys, monkeypatch):
    monkeypatch.setenv("SDXL_PREPARE_WORKERS", "0")
    assert cli.main(["settings"]) == 2
    assert "SDXL_PREPARE_WORKERS='0' is not valid" in capsys.readouterr().err


def test_an_empty_environment_gives_the_objects_defaults():
    """The tree's defaults and the settings objects' own (what tests and callers build
    directly) are the same values."""
    tree = load_settings({})
    assert EngineSettings.from_tree(tree) == EngineSettings()
    assert Settings.from_groups(tree.http, tree.store) == Settings()
    assert TrainSettings.from_group(tree.train) == TrainSettings()
    assert tree.runtime.build() == Runtime(weights_dir=Path("weights"), dtype="auto")
