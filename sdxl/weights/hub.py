"""The Hugging Face Hub as a file source: metadata with hashes, resumable downloads.

huggingface_hub 2.4's `hf_hub_download` restarts an interrupted file from zero and retries for
minutes on a dead network, so `HfHub.fetch` streams into a `.incomplete` file itself, resumes
it with an HTTP Range request and never retries: the next run carries on.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx2  # huggingface_hub's HTTP client; its TransportError means "cannot reach the hub"
from huggingface_hub import HfApi, constants, hf_hub_url
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status
from huggingface_hub.utils import tqdm as hf_tqdm

PROBE_TIMEOUT_S = 5.0  # the first request to each repo: bounds the wait on a dead network


class DownloadError(Exception):
    """A download failed; str() is one line meant for the user."""


class HubUnreachable(DownloadError):
    """The hub cannot be reached at all: offline mode, DNS failure, refused or timed out."""

    def __init__(self, endpoint: str, reason: str) -> None:
        super().__init__(f"cannot reach {endpoint}: {reason}")
        self.endpoint, self.reason = endpoint, reason


@dataclass(frozen=True)
class RemoteFile:
    """What the hub says a file is: LFS files carry a sha256, small files their git blob sha1."""

    size: int
    sha256: str | None = None
    git_sha1: str | None = None

    @property
    def digest(self) -> str:
        """The expected digest as 'kind:hex' (only the size when the hub gave no hash)."""
        if self.sha256 is not None:
            return f"sha256:{self.sha256}"
        if self.git_sha1 is not None:
            return f"sha1:{self.git_sha1}"
        return f"size:{self.size}"


class Hub(Protocol):
    """Where the files come from. Failures raise DownloadError (HubUnreachable when offline)."""

    def info(self, repo_id: str, revision: str, paths: Sequence[str]) -> dict[str, RemoteFile]:
        """Metadata of those of `paths` that exist; missing ones are left out."""
        ...

    def fetch(self, repo_id: str, revision: str, path: str, staging_dir: Path) -> Path:
        """Download `path` under `staging_dir`, resuming a partial download; return its path."""
        ...


class HfHub:
    """The Hugging Face Hub, through huggingface_hub's client. Nothing in here retries.

    `info` probes each repo with `model_info(timeout=...)` first, so an unreachable hub fails
    within `timeout` s (PROBE_TIMEOUT_S, or HF_HUB_ETAG_TIMEOUT when set; DNS failures and refused
    connections fail at once). The probe pins `revision` to a commit for the paths-info call and
    the downloads. `fetch` does not use hf_hub_download: in huggingface_hub 2.4 that deletes its
    partial file on failure and retries stalled requests for minutes. Here a stalled read fails
    after HF_HUB_DOWNLOAD_TIMEOUT s and the next run resumes from the partial file.
    """

    def __init__(
        self, endpoint: str | None = None, token: str | None = None, timeout: float | None = None
    ) -> None:
        if endpoint is None:  # read now: huggingface_hub reads HF_ENDPOINT once, at import
            endpoint = os.environ.get("HF_ENDPOINT", constants.ENDPOINT)
        self.endpoint = endpoint.rstrip("/")
        self.token = token
        if timeout is None:
            set_by_env = "HF_HUB_ETAG_TIMEOUT" in os.environ
            timeout = constants.HF_HUB_ETAG_TIMEOUT if set_by_env else PROBE_TIMEOUT_S
        self.timeout = float(timeout)
        self._api = HfApi(endpoint=self.endpoint, token=token)
        self._commits: dict[tuple[str, str], str] = {}

    def info(self, repo_id: str, revision: str, paths: Sequence[str]) -> dict[str, RemoteFile]:
        with self._translated(repo_id, revision, repo_id):
            commit = self._api.model_info(repo_id, revision=revision, timeout=self.timeout).sha
            commit = revision if commit is None else commit
            files = self._api.get_paths_info(repo_id, list(paths), revision=commit)
        self._commits[(repo_id, revision)] = commit
        return {
            f.path: RemoteFile(f.size, sha256=f.lfs.sha256)
            if f.lfs is not None
            else RemoteFile(f.size, git_sha1=f.blob_id)
            for f in files
            if isinstance(f, RepoFile)
        }

    def fetch(self, repo_id: str, revision: str, path: str, staging_dir: Path) -> Path:
        part = staging_dir / f"{path}.incomplete"
        part.parent.mkdir(parents=True, exist_ok=True)
        have = part.stat().st_size if part.exists() else 0
        commit = self._commits.get((repo_id, revision), revision)
        url = hf_hub_url(repo_id, path, revision=commit, endpoint=self.endpoint)
        headers = {**build_hf_headers(token=self.token), "Accept-Encoding": "identity"}
        if have > 0:
            headers["Range"] = f"bytes={have}-"
        timeout = httpx2.Timeout(constants.HF_HUB_DOWNLOAD_TIMEOUT, connect=self.timeout)
        with (
            self._translated(repo_id, revision, f"{repo_id}/{path}"),
            get_session().stream("GET", url, headers=headers, timeout=timeout) as response,
        ):
            if response.status_code != 416:  # 416: nothing left to send, the partial is whole
                hf_raise_for_status(response)
                _write(response, part, have if response.status_code == 206 else 0, path)
        return part

    @contextmanager
    def _translated(self, repo_id: str, revision: str, where: str) -> Iterator[None]:
        """Refuse in offline mode; turn huggingface_hub's errors into one-line DownloadErrors."""
        # huggingface_hub reads HF_HUB_OFFLINE once, at import; read it again now.
        offline = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
        if constants.is_offline_mode() or str(offline).upper() in constants.ENV_VARS_TRUE_VALUES:
            raise HubUnreachable(self.endpoint, "HF_HUB_OFFLINE is set; unset it to go online")
        try:
            yield
        except (HfHubHTTPError, OfflineModeIsEnabled, httpx2.TransportError) as err:
            raise self._translate(err, repo_id, revision, where) from err

    def _translate(self, err: Exception, repo_id: str, revision: str, where: str) -> DownloadError:
        if not isinstance(err, HfHubHTTPError):
            lines = [line for line in str(err).splitlines() if line.strip()]
            return HubUnreachable(self.endpoint, lines[0] if lines else type(err).__name__)
        status = err.response.status_code
        login = "log in (`hf auth login` or HF_TOKEN)"
        if isinstance(err, GatedRepoError):
            return DownloadError(
                f"{repo_id} is gated (HTTP {status}): accept its terms at "
                f"{self.endpoint}/{repo_id}, {login}, then re-run"
            )
        if isinstance(err, RepositoryNotFoundError):
            return DownloadError(
                f"repository {repo_id} was not found on {self.endpoint} or needs a login "
                f"(HTTP {status}); check the name, or {login}"
            )
        if isinstance(err, RevisionNotFoundError):
            return DownloadError(f"revision {revision!r} of {repo_id} not found (HTTP {status})")
        if isinstance(err, RemoteEntryNotFoundError):
            return DownloadError(f"{where} was not found on {self.endpoint} (HTTP {status})")
        if status in (401, 403):
            return DownloadError(f"{self.endpoint} refused {where} (HTTP {status}); {login}")
        later = "; try again later" if status in (408, 429) or status >= 500 else ""
        return DownloadError(f"{self.endpoint} answered HTTP {status} for {where}{later}")


def _write(response: httpx2.Response, part: Path, offset: int, name: str) -> None:
    """Stream the body into `part` from byte `offset` (0: start over), with a progress bar."""
    length = response.headers.get("Content-Length")
    total = None if length is None else int(length) + offset
    with (
        part.open("ab" if offset > 0 else "wb") as out,
        hf_tqdm(total=total, initial=offset, unit="B", unit_scale=True, desc=name) as bar,
    ):
        for chunk in response.iter_bytes():
            out.write(chunk)
            bar.update(len(chunk))
