"""sdxl.weights.download: a fake Hub over a temp folder, and the real HfHub against no network.

Nothing here reaches the internet: the fake serves local bytes, the HfHub tests use offline mode,
a closed loopback port, or an in-process httpx2 MockTransport.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx2
import pytest
from huggingface_hub import constants, set_client_factory
from huggingface_hub.utils._http import default_client_factory, hf_request_event_hook

from sdxl.config import BASE_DIR, MODEL_UPSCALERS, REFINER_DIR, UPSCALERS_DIR
from sdxl.weights import download
from sdxl.weights.download import (
    CONTROL_MANIFESTS,
    CORE_MANIFEST,
    IP_ADAPTER_MANIFESTS,
    MANIFEST,
    RECORD_NAME,
    SDXL_BASE,
    STAGING_NAME,
    DownloadError,
    HfHub,
    HubUnreachable,
    RemoteFile,
    WeightFile,
    download_weights,
    file_digest,
    main,
    manifest_for,
)

# The layout the loaders read and sdxl/builders/tiny.py writes (26 files; no fp16 suffixes).
_TOK = ("merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json")
EXPECTED_LAYOUT = {
    f"{BASE_DIR}/{p}"
    for p in (
        "model_index.json",
        "scheduler/scheduler_config.json",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "text_encoder_2/config.json",
        "text_encoder_2/model.safetensors",
        *(f"tokenizer/{n}" for n in _TOK),
        *(f"tokenizer_2/{n}" for n in _TOK),
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
    )
} | {
    f"{REFINER_DIR}/{p}"
    for p in (
        "model_index.json",
        "scheduler/scheduler_config.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
    )
}
_SAFETY = ("config.json", "model.safetensors", "preprocessor_config.json")
EXPECTED_LAYOUT |= {f"safety_checker/{n}" for n in _SAFETY} | {"loras/offset.safetensors"}
# The trainer's helpers (BLIP's captions, CLIPSeg's masks), with their processors' files.
_BLIP = ("config.json", "model.safetensors", "preprocessor_config.json", "special_tokens_map.json")
_BLIP += ("tokenizer.json", "tokenizer_config.json", "vocab.txt")
_CLIPSEG = ("config.json", "model.safetensors", "preprocessor_config.json")
_CLIPSEG += ("special_tokens_map.json", "tokenizer_config.json", "vocab.json", "merges.txt")
EXPECTED_LAYOUT |= {f"train/blip/{n}" for n in _BLIP} | {f"train/clipseg/{n}" for n in _CLIPSEG}
# The hires fix's ESRGAN upscalers, by the names the upscaler inputs offer.
EXPECTED_LAYOUT |= {f"{UPSCALERS_DIR}/{name}.safetensors" for name in MODEL_UPSCALERS}
# The control models of `--control full` (the default): ControlNets and the depth annotator.
_CONTROLNET = ("config.json", "diffusion_pytorch_model.safetensors")
_ANNOTATOR = ("config.json", "model.safetensors", "preprocessor_config.json")
CONTROL_LAYOUT = {
    "full": {f"controlnet/{m}/{n}" for m in ("canny", "depth", "union") for n in _CONTROLNET}
    | {f"annotators/depth/{n}" for n in _ANNOTATOR},
    "small": {f"controlnet/{m}/{n}" for m in ("canny-small", "depth-small") for n in _CONTROLNET}
    | {f"annotators/depth/{n}" for n in _ANNOTATOR},
    "none": set(),
}
# h94's IP-Adapters of `--ip-adapter all` (the default), in the hub's layout under ip_adapter/.
IP_ADAPTER_LAYOUT = {
    "all": {
        "ip_adapter/models/image_encoder/config.json",
        "ip_adapter/models/image_encoder/model.safetensors",
        "ip_adapter/sdxl_models/ip-adapter_sdxl_vit-h.safetensors",
        "ip_adapter/sdxl_models/ip-adapter-plus_sdxl_vit-h.safetensors",
        "ip_adapter/sdxl_models/ip-adapter-plus-face_sdxl_vit-h.safetensors",
    },
    "none": set(),
}
CORE_LAYOUT = set(EXPECTED_LAYOUT)
EXPECTED_LAYOUT |= CONTROL_LAYOUT["full"] | IP_ADAPTER_LAYOUT["all"]


class Interrupted(Exception):
    """Stands in for a dropped connection or Ctrl-C in the middle of a run."""


class FakeHub:
    """Serves FOLDER/<repo_id>/<path>; .safetensors act as LFS files (sha256), others git sha1."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.fetches: list[tuple[str, str]] = []
        self.corrupt: set[tuple[str, str]] = set()  # (repo_id, path) served with a byte flipped
        self.fail_on: int | None = None  # the n-th fetch (1-based) raises Interrupted

    def info(self, repo_id: str, revision: str, paths: Sequence[str]) -> dict[str, RemoteFile]:
        found = {}
        for path in paths:
            file = self.folder / repo_id / path
            if file.is_file():
                data = file.read_bytes()
                if path.endswith(".safetensors"):
                    found[path] = RemoteFile(len(data), sha256=hashlib.sha256(data).hexdigest())
                else:
                    blob = b"blob %d\0" % len(data) + data
                    found[path] = RemoteFile(len(data), git_sha1=hashlib.sha1(blob).hexdigest())
        return found

    def fetch(self, repo_id: str, revision: str, path: str, staging_dir: Path) -> Path:
        self.fetches.append((repo_id, path))
        if self.fail_on == len(self.fetches):
            raise Interrupted(path)
        data = bytearray((self.folder / repo_id / path).read_bytes())
        if (repo_id, path) in self.corrupt:
            data[0] ^= 0xFF
        staged = staging_dir / path
        staged.parent.mkdir(parents=True, exist_ok=True)
        staged.write_bytes(bytes(data))
        return staged


def remote_bytes(entry: WeightFile) -> bytes:
    """Distinct content per remote file; the 'weights' are a few KB of binary."""
    seed = f"{entry.repo_id}/{entry.remote}".encode()
    if entry.remote.endswith(".safetensors"):
        return hashlib.sha256(seed).digest() * 128 + seed
    return json.dumps({"source": seed.decode()}).encode()


@pytest.fixture
def hub(tmp_path: Path) -> FakeHub:
    optional = (*CONTROL_MANIFESTS.values(), *IP_ADAPTER_MANIFESTS.values())
    for entry in {e for files in optional for e in files} | set(MANIFEST):
        file = tmp_path / "remote" / entry.repo_id / entry.remote
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(remote_bytes(entry))
    return FakeHub(tmp_path / "remote")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "weights"


def quiet(_: str) -> None:
    pass


def test_manifest_is_exactly_the_layout() -> None:
    assert {e.local for e in MANIFEST} == EXPECTED_LAYOUT
    assert len({e.local for e in MANIFEST}) == len(MANIFEST)
    fp16 = {e.remote for e in MANIFEST if ".fp16." in e.remote}
    assert fp16 == {
        "diffusion_pytorch_model.fp16.safetensors",  # the canny and depth ControlNets
        "text_encoder/model.fp16.safetensors",
        "text_encoder_2/model.fp16.safetensors",
        "unet/diffusion_pytorch_model.fp16.safetensors",
    }
    # The VAE comes from the fp16-fix repo, never from the base repo.
    vae = [e for e in MANIFEST if e.local.startswith(f"{BASE_DIR}/vae/")]
    assert {e.repo_id for e in vae} == {"madebyollin/sdxl-vae-fp16-fix"}
    assert not [e for e in MANIFEST if e.repo_id == SDXL_BASE and e.remote.startswith("vae")]


def test_git_blob_sha1_matches_git(tmp_path: Path) -> None:
    file = tmp_path / "hello"
    file.write_bytes(b"hello\n")
    # `printf 'hello\n' | git hash-object --stdin`
    assert file_digest(file, "sha1") == "sha1:ce013625030ba8dba906f756967f9e9ca394464a"
    assert file_digest(file, "sha256") == "sha256:" + hashlib.sha256(b"hello\n").hexdigest()


def test_full_download_lands_every_file(hub: FakeHub, root: Path) -> None:
    lines: list[str] = []
    paths = download_weights(root, hub, log=lines.append)
    assert paths == [root / e.local for e in MANIFEST]
    for entry in MANIFEST:
        assert (root / entry.local).read_bytes() == remote_bytes(entry), entry.local
    assert len(hub.fetches) == len(MANIFEST)
    assert sum(line.startswith("fetched ") for line in lines) == len(MANIFEST)
    assert not (root / STAGING_NAME).exists()  # staging is cleaned up after a full run
    record = json.loads((root / RECORD_NAME).read_text())
    assert set(record) == EXPECTED_LAYOUT


def test_second_run_fetches_and_hashes_nothing(
    hub: FakeHub, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    download_weights(root, hub, log=quiet)
    hashed: list[Path] = []
    real_digest = download.file_digest
    monkeypatch.setattr(download, "file_digest", lambda p, k: hashed.append(p) or real_digest(p, k))
    hub.fetches.clear()
    lines: list[str] = []
    download_weights(root, hub, log=lines.append)
    assert hub.fetches == []
    assert hashed == []  # size + mtime unchanged: the record vouches, no rehash
    assert lines == [f"already present {e.local}" for e in MANIFEST]


def test_weights_copied_in_by_hand_are_verified_not_fetched(hub: FakeHub, root: Path) -> None:
    for entry in MANIFEST:
        (root / entry.local).parent.mkdir(parents=True, exist_ok=True)
        (root / entry.local).write_bytes(remote_bytes(entry))
    download_weights(root, hub, log=quiet)
    assert hub.fetches == []
    assert set(json.loads((root / RECORD_NAME).read_text())) == EXPECTED_LAYOUT


def test_changed_file_is_detected_and_fetched_again(hub: FakeHub, root: Path) -> None:
    download_weights(root, hub, log=quiet)
    target = next(e for e in MANIFEST if e.local == f"{BASE_DIR}/unet/config.json")
    path = root / target.local
    data = bytearray(path.read_bytes())
    data[-2] ^= 0x01  # same size, different content
    path.write_bytes(bytes(data))
    hub.fetches.clear()
    download_weights(root, hub, log=quiet)
    assert hub.fetches == [(target.repo_id, target.remote)]
    assert path.read_bytes() == remote_bytes(target)


def test_corrupt_fetch_raises_and_leaves_nothing_in_place(hub: FakeHub, root: Path) -> None:
    bad = next(
        e for e in MANIFEST if e.local == f"{REFINER_DIR}/unet/diffusion_pytorch_model.safetensors"
    )
    hub.corrupt.add((bad.repo_id, bad.remote))
    with pytest.raises(DownloadError) as err:
        download_weights(root, hub, log=quiet)
    message = str(err.value)
    assert bad.local in message and "sha256" in message and "\n" not in message
    assert not (root / bad.local).exists()
    assert not (root / STAGING_NAME / bad.repo_id / bad.remote).exists()  # staged copy deleted


def test_interrupted_run_resumes_with_only_the_missing_files(hub: FakeHub, root: Path) -> None:
    hub.fail_on = 3
    with pytest.raises(Interrupted):
        download_weights(root, hub, log=quiet)
    done = [e for e in MANIFEST if (root / e.local).exists()]
    assert done == list(MANIFEST[:2])
    hub.fail_on = None
    hub.fetches.clear()
    download_weights(root, hub, log=quiet)
    assert hub.fetches == [(e.repo_id, e.remote) for e in MANIFEST[2:]]
    for entry in MANIFEST:
        assert (root / entry.local).read_bytes() == remote_bytes(entry)


def test_missing_remote_file_is_a_clear_404_before_any_fetch(hub: FakeHub, root: Path) -> None:
    missing = WeightFile(SDXL_BASE, "unet/no_such_file.safetensors", f"{BASE_DIR}/unet/x", "main")
    with pytest.raises(DownloadError) as err:
        download_weights(root, hub, manifest=(*MANIFEST, missing), log=quiet)
    assert "unet/no_such_file.safetensors" in str(err.value) and "404" in str(err.value)
    assert hub.fetches == []


class DeadHub(FakeHub):
    def info(self, repo_id: str, revision: str, paths: Sequence[str]) -> dict[str, RemoteFile]:
        raise HubUnreachable("https://hub.invalid", "Name or service not known")


def test_unreachable_hub_message(tmp_path: Path, root: Path) -> None:
    with pytest.raises(DownloadError) as err:
        download_weights(root, DeadHub(tmp_path), log=quiet)
    message = str(err.value)
    assert "https://hub.invalid" in message and "nothing was downloaded" in message
    assert f"python -m sdxl weights tiny {root}" in message


def test_unreachable_hub_is_fine_when_everything_was_verified(hub: FakeHub, root: Path) -> None:
    download_weights(root, hub, log=quiet)
    dead = DeadHub(hub.folder)
    assert download_weights(root, dead, log=quiet) == [root / e.local for e in MANIFEST]
    (root / MANIFEST[0].local).write_bytes(b"changed")  # now the record no longer vouches
    with pytest.raises(DownloadError, match="cannot reach"):
        download_weights(root, dead, log=quiet)


# --- the real HfHub, with no network ---------------------------------------------------------


def go_online(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    """Undo conftest's HF_HUB_OFFLINE (huggingface_hub read it at import) for one test.

    huggingface_hub's own side requests (its agent registry) go to its import-time endpoint,
    so that is pointed at `endpoint` too: nothing may reach the real hub.
    """
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)


class Attempts:
    """Every TCP connection the process tries and every pause it asks for, while it runs:
    failing fast is trying once (or not at all) and never waiting to retry."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.connects: list = []
        self.sleeps: list[float] = []
        real_connect, real_sleep = socket.socket.connect, time.sleep

        def connect(sock, address):
            self.connects.append(address)
            return real_connect(sock, address)

        def sleep(seconds: float) -> None:
            self.sleeps.append(seconds)
            real_sleep(seconds)

        monkeypatch.setattr(socket.socket, "connect", connect)
        monkeypatch.setattr(time, "sleep", sleep)


def run_main(root: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(str(root))
    return code, capsys.readouterr().err


def test_main_offline_mode_fails_fast(
    root: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Set only after import, as a user would in a long-lived process; the port is closed in case.
    go_online(monkeypatch, "http://127.0.0.1:9")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    attempts = Attempts(monkeypatch)
    code, err = run_main(root, capsys)
    assert code == 1 and attempts.connects == [] and attempts.sleeps == []  # not even tried
    assert err.count("\n") == 1 and err.startswith("error: cannot reach the Hugging Face Hub")
    assert "HF_HUB_OFFLINE" in err and "nothing was downloaded" in err
    assert "python -m sdxl weights tiny" in err
    assert not root.exists()


def test_main_unreachable_endpoint_fails_fast(
    root: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Closed loopback ports (9 is "discard"); HF_ENDPOINT is set after import, as a user might.
    go_online(monkeypatch, "http://127.0.0.1:10")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    attempts = Attempts(monkeypatch)
    code, err = run_main(root, capsys)
    assert code == 1 and attempts.sleeps == []  # no retry with backoff
    # One probe of the endpoint, refused: nothing more (":10" is huggingface_hub's own side
    # request to its import-time endpoint, see go_online).
    assert attempts.connects.count(("127.0.0.1", 9)) == 1
    assert set(attempts.connects) <= {("127.0.0.1", 9), ("127.0.0.1", 10)}
    assert err.count("\n") == 1 and "http://127.0.0.1:9" in err and "refused" in err
    assert "nothing was downloaded" in err and "Traceback" not in err
    assert not root.exists()


COMMIT = "c" * 40
MODEL_JSON = b'{"_class_name": "UNet2DConditionModel"}\n'
MODEL_WEIGHTS = bytes(range(256)) * 40  # 10 KB


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class MockServer:
    """The hub's HTTP API as huggingface_hub's client sees it, for repo org/repo at COMMIT."""

    def __init__(self) -> None:
        self.files = {"unet/config.json": MODEL_JSON, "unet/m.fp16.safetensors": MODEL_WEIGHTS}
        self.info_error: httpx2.Response | None = None  # answer model_info with this instead
        self.cut_after: int | None = None  # a file GET sends this many bytes, then the line dies
        self.requests: list[str] = []  # "METHOD path [range]"

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        path, ranged = request.url.path, request.headers.get("Range")
        self.requests.append(f"{request.method} {path} {ranged}")
        if path == "/api/models/org/repo/revision/main":
            ok = httpx2.Response(200, json={"id": "org/repo", "sha": COMMIT})
            return ok if self.info_error is None else self.info_error
        if path == f"/api/models/org/repo/paths-info/{COMMIT}":
            return httpx2.Response(200, json=[self.tree_entry(p) for p in self.files])
        name = path.removeprefix(f"/org/repo/resolve/{COMMIT}/")
        if name not in self.files:
            return httpx2.Response(404, headers={"X-Error-Code": "EntryNotFound"})
        start = 0 if ranged is None else int(ranged.removeprefix("bytes=").rstrip("-"))
        body = self.files[name][start:]
        return httpx2.Response(206 if start else 200, content=self.stream(body))

    def tree_entry(self, path: str) -> dict:
        data = self.files[path]
        entry = {"type": "file", "path": path, "size": len(data), "oid": git_sha1(data)}
        if path.endswith(".safetensors"):  # LFS: oid is the pointer's, the content has a sha256
            sha256 = hashlib.sha256(data).hexdigest()
            entry |= {"oid": "0" * 40, "lfs": {"size": len(data), "oid": sha256, "pointerSize": 1}}
        return entry

    def stream(self, body: bytes) -> Iterator[bytes]:
        if self.cut_after is None:
            yield body
            return
        yield body[: self.cut_after]
        raise Interrupted("connection lost")


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[MockServer]:
    """Route huggingface_hub's shared HTTP client to a MockServer for one test."""
    mock = MockServer()
    go_online(monkeypatch, "https://hub.test")
    set_client_factory(
        lambda: httpx2.Client(
            transport=httpx2.MockTransport(mock),
            event_hooks={"request": [hf_request_event_hook]},
            follow_redirects=True,
        )
    )
    try:
        yield mock
    finally:
        set_client_factory(default_client_factory)


def test_hfhub_reads_lfs_sha256_and_git_blob_sha1_at_one_commit(server: MockServer) -> None:
    found = HfHub(endpoint="https://hub.test").info("org/repo", "main", list(server.files))
    assert found == {
        "unet/config.json": RemoteFile(len(MODEL_JSON), git_sha1=git_sha1(MODEL_JSON)),
        "unet/m.fp16.safetensors": RemoteFile(
            len(MODEL_WEIGHTS), sha256=hashlib.sha256(MODEL_WEIGHTS).hexdigest()
        ),
    }
    assert f"POST /api/models/org/repo/paths-info/{COMMIT} None" in server.requests


def test_hfhub_download_end_to_end(server: MockServer, root: Path) -> None:
    manifest = (
        WeightFile("org/repo", "unet/config.json", "base/unet/config.json", "main"),
        WeightFile("org/repo", "unet/m.fp16.safetensors", "base/unet/m.safetensors", "main"),
    )
    hub = HfHub(endpoint="https://hub.test")
    paths = download_weights(root, hub, manifest=manifest, log=quiet)
    assert [p.read_bytes() for p in paths] == [MODEL_JSON, MODEL_WEIGHTS]
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) == [
        RECORD_NAME,
        "base/unet/config.json",
        "base/unet/m.safetensors",
    ]
    server.requests.clear()
    download_weights(root, HfHub(endpoint="https://hub.test"), manifest=manifest, log=quiet)
    assert not [r for r in server.requests if "/resolve/" in r]  # nothing downloaded again


def test_hfhub_resumes_from_the_byte_where_it_stopped(server: MockServer, root: Path) -> None:
    manifest = (
        WeightFile("org/repo", "unet/m.fp16.safetensors", "base/unet/m.safetensors", "main"),
    )
    hub = HfHub(endpoint="https://hub.test")
    server.cut_after = 3000
    with pytest.raises(Interrupted):
        download_weights(root, hub, manifest=manifest, log=quiet)
    part = root / STAGING_NAME / "org/repo/unet/m.fp16.safetensors.incomplete"
    assert part.read_bytes() == MODEL_WEIGHTS[:3000]
    assert not (root / "base/unet/m.safetensors").exists()
    server.cut_after = None
    download_weights(root, hub, manifest=manifest, log=quiet)
    assert (root / "base/unet/m.safetensors").read_bytes() == MODEL_WEIGHTS
    assert f"GET /org/repo/resolve/{COMMIT}/unet/m.fp16.safetensors bytes=3000-" in server.requests


@pytest.mark.parametrize(
    ("status", "headers", "expected"),
    [
        (403, {"X-Error-Code": "GatedRepo"}, "org/repo is gated"),
        (401, {}, "needs a login"),
        (404, {"X-Error-Code": "RepoNotFound"}, "repository org/repo was not found"),
    ],
)
def test_hfhub_gated_401_404_are_clear(
    server: MockServer, status: int, headers: dict[str, str], expected: str
) -> None:
    server.info_error = httpx2.Response(status, headers=headers)
    with pytest.raises(DownloadError) as err:
        HfHub(endpoint="https://hub.test").info("org/repo", "main", ["unet/config.json"])
    assert not isinstance(err.value, HubUnreachable)
    assert expected in str(err.value) and f"HTTP {status}" in str(err.value)
    assert "\n" not in str(err.value)


def test_every_file_is_fetched_at_a_pinned_commit():
    """Never a branch: an upstream change must not alter what a build loads (but for the
    repositories whose commit could not be found where this was written, listed apart)."""
    from sdxl.weights.download import BRANCH_PINNED, PINNED

    assert {"Comfy-Org/Real-ESRGAN_repackaged"} == BRANCH_PINNED
    every = {e for choice in CONTROL_MANIFESTS for e in manifest_for(choice)}
    for entry in every:
        if entry.repo_id in BRANCH_PINNED:
            assert entry.revision == "main", entry.source
            continue
        assert re.fullmatch(r"[0-9a-f]{40}", entry.revision), entry.source
        assert entry.revision == PINNED[entry.repo_id]
    assert {entry.repo_id for entry in every} == set(PINNED)


# --- the control models: `weights download --control full|small|none` ------------------------


@pytest.mark.parametrize("choice", ["full", "small", "none"])
def test_each_control_choice_fetches_its_models_and_the_rest(hub, root, choice) -> None:
    manifest = manifest_for(choice, ip_adapter="none")
    assert manifest[: len(CORE_MANIFEST)] == CORE_MANIFEST
    assert {e.local for e in manifest} == CORE_LAYOUT | CONTROL_LAYOUT[choice]
    download_weights(root, hub, manifest=manifest, log=quiet)
    landed = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()} - {RECORD_NAME}
    assert landed == CORE_LAYOUT | CONTROL_LAYOUT[choice]


def test_the_default_is_full_and_the_union_model_is_xinsirs_promax() -> None:
    assert manifest_for() == MANIFEST
    union = {e.local: e for e in MANIFEST if e.local.startswith("controlnet/union/")}
    assert {e.repo_id for e in union.values()} == {"xinsir/controlnet-union-sdxl-1.0"}
    assert union["controlnet/union/config.json"].remote == "config_promax.json"
    weights = union["controlnet/union/diffusion_pytorch_model.safetensors"]
    assert weights.remote == "diffusion_pytorch_model_promax.safetensors"
    annotator = {e.repo_id for e in MANIFEST if e.local.startswith("annotators/")}
    assert annotator == {"depth-anything/Depth-Anything-V2-Small-hf"}  # Apache-2.0, not Base


def test_every_control_file_is_safetensors_or_json() -> None:
    for entry in {e for files in CONTROL_MANIFESTS.values() for e in files}:
        assert entry.remote.endswith((".safetensors", ".json")), entry.source
        assert entry.local.endswith((".safetensors", ".json")), entry.local
    fp16 = {
        e.remote for files in CONTROL_MANIFESTS.values() for e in files if "diffusers/" in e.repo_id
    }
    assert fp16 == {"config.json", "diffusion_pytorch_model.fp16.safetensors"}


def test_a_bad_control_choice_is_a_clear_error(root, capsys) -> None:
    with pytest.raises(
        DownloadError, match="'medium' is not a choice: use one of full, small, none"
    ):
        manifest_for("medium")
    assert main(str(root), control="medium") == 1
    assert "--control 'medium' is not a choice" in capsys.readouterr().err
    assert not root.exists()


def test_the_command_line_offers_the_choices_and_refuses_others(capsys) -> None:
    from sdxl.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["weights", "download"]).control == "full"
    assert parser.parse_args(["weights", "download", "d", "--control", "small"]).control == "small"
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["weights", "download", "--control", "medium"])
    assert exit_.value.code == 2
    assert "invalid choice: 'medium'" in capsys.readouterr().err


# --- h94's IP-Adapters: `weights download --ip-adapter all|none` -----------------------------


@pytest.mark.parametrize("choice", ["all", "none"])
def test_each_ip_adapter_choice_fetches_its_files_and_the_rest(hub, root, choice) -> None:
    manifest = manifest_for("none", ip_adapter=choice)
    assert manifest[: len(CORE_MANIFEST)] == CORE_MANIFEST
    assert {e.local for e in manifest} == CORE_LAYOUT | IP_ADAPTER_LAYOUT[choice]
    download_weights(root, hub, manifest=manifest, log=quiet)
    landed = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()} - {RECORD_NAME}
    assert landed == CORE_LAYOUT | IP_ADAPTER_LAYOUT[choice]


def test_the_default_is_all_from_h94_at_one_commit_in_the_hubs_layout() -> None:
    ip = [e for e in MANIFEST if e.local.startswith("ip_adapter/")]
    assert {e.local for e in ip} == IP_ADAPTER_LAYOUT["all"]
    assert {(e.repo_id, e.revision) for e in ip} == {
        ("h94/IP-Adapter", "018e402774aeeddd60609b4ecdb7e298259dc729")
    }
    for entry in ip:  # the hub's own paths: diffusers' load_ip_adapter reads the folder as is
        assert entry.local == f"ip_adapter/{entry.remote}"
        assert entry.remote.endswith((".safetensors", ".json")), entry.source
    # The ViT-H encoder the sdxl_models/*vit-h* adapters fit, never sdxl_models' ViT-bigG one.
    assert not [e for e in ip if e.remote.startswith("sdxl_models/image_encoder")]


def test_a_bad_ip_adapter_choice_is_a_clear_error(root, capsys) -> None:
    with pytest.raises(DownloadError, match="'some' is not a choice: use one of all, none"):
        manifest_for(ip_adapter="some")
    assert main(str(root), ip_adapter="some") == 1
    assert "--ip-adapter 'some' is not a choice" in capsys.readouterr().err
    assert not root.exists()


def test_the_command_line_offers_the_ip_adapter_choices_and_refuses_others(capsys) -> None:
    from sdxl.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["weights", "download"]).ip_adapter == "all"
    args = parser.parse_args(["weights", "download", "d", "--ip-adapter", "none"])
    assert (args.ip_adapter, args.control) == ("none", "full")
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["weights", "download", "--ip-adapter", "some"])
    assert exit_.value.code == 2
    assert "invalid choice: 'some'" in capsys.readouterr().err
