"""The engine as the HTTP APIs see it: loading in the background, stopping on SIGTERM.

Nothing here knows HTTP or torch: the engine imports torch in its loading thread, so the
server binds its port at once and answers /health while the model loads.
"""

from __future__ import annotations

import logging
import time
from enum import StrEnum

from sdxl.engine import Engine, EngineState

log = logging.getLogger(__name__)

STOPPING = "the server is stopping; retry (another replica, or this one once back, takes it)"


class ServerStatus(StrEnum):
    """What /health reports."""

    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"  # the load failed, or the models can no longer be trusted
    DRAINING = "draining"  # stopping: no new requests, only the running job finishes


class Service:
    def __init__(self, engine: Engine):
        self.engine = engine
        self._draining = False

    def lora_check(self, tenant: str | None):
        """The check every API's boundary runs on a request's LoRAs for `tenant` (pass it to
        `check_fields`): an unknown name, a trainer's tar in `loras` or a stack over the
        per-request bound is a 422 at once, not a prediction that fails later."""
        return self.engine.lora_check(tenant)

    def start_loading(self) -> None:
        self.engine.start_loading()

    @property
    def status(self) -> ServerStatus:
        state = self.engine.state
        if state in (EngineState.LOAD_FAILED, EngineState.BROKEN):
            return ServerStatus.FAILED
        if self._draining:
            return ServerStatus.DRAINING
        return ServerStatus.LOADING if state == EngineState.LOADING else ServerStatus.READY

    @property
    def reason(self) -> str | None:
        """Why the status is failed."""
        if self.engine.state == EngineState.BROKEN:
            return self.engine.broken_message()
        return self.engine.reason

    def begin_drain(self) -> None:
        """Stop: take no new work and let only the running job finish. Stored predictions
        this process claimed and did not start go back to the store's queue (for another
        replica or the next start), and so does a running training, at its next step, with a
        checkpoint; synchronous requests still waiting are answered 503."""
        if not self._draining:
            self._draining = True
            counts = self.engine.counts()
            handed_back = self.engine.drain(STOPPING)
            log.info(
                "stopping: %d running will finish, %d waiting handed back, %d training stops at "
                "its next step (handed back from its checkpoint); new requests get 503",
                counts["running"],
                handed_back,
                counts["training"],
            )

    @property
    def drained(self) -> bool:
        return self._draining and self.engine.idle

    def wait_idle(self) -> None:
        """Block until no job is queued or running (or the engine can run none)."""
        while self.engine.state == EngineState.READY and not self.engine.idle:
            time.sleep(0.1)

    def health(self) -> dict:
        counts = self.engine.counts()
        report = {
            "status": self.status,
            "running": counts["running"],
            "queued": counts["queued"] + counts["preparing"] + counts["ready"],
        }
        if self.status == ServerStatus.FAILED:
            report["error"] = self.reason
        return report
