"""The Replicate API's calls that change trainings and destinations: a model created for the
caller, a training created (its destination the caller's own, its input checked, an uploaded
archive copied so that it outlives the upload's expiry) and queued, a training cancelled. A
training's tar names its web UI files after its destination and version unless its input
gives a `name` (`webui_name`)."""

from __future__ import annotations

import re

from sdxl.http.auth import Caller
from sdxl.http.replicate.catalogue import Version
from sdxl.http.replicate.training_inputs import check_training_input, data_uri_file
from sdxl.inputs.surface import InvalidInputs, Problem
from sdxl.runtime.kinds import TRAINING
from sdxl.runtime.runtime import JobRuntime
from sdxl.runtime.stored_inputs import own_file_id
from sdxl.runtime.webhooks import check_webhook
from sdxl.store.tables import ANY, new_id
from sdxl.train.options import FILE_INPUTS

NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,99}")  # a model's name, as Replicate allows them
VISIBILITIES = ("public", "private")
MISSING_DESTINATION = "The specified training destination does not exist"


def webui_name(owner: str, model: str, version: str) -> str:
    """`<owner>-<model>-<the version's first 8 characters>`: the web UI files of two versions,
    or of two destinations, differ; cut to the 100 characters a `name` may have."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "-", f"{owner}-{model}")[:91].strip("._-")
    return f"{stem}-{version[:8]}" if stem else version[:8]


class DestinationMissing(LookupError):
    """The destination is not a model of the caller's (Replicate's 404)."""


class NotYours(PermissionError):
    """A model created under another owner than the caller's name (Replicate's 403)."""


class Trainings:
    def __init__(self, runtime: JobRuntime):
        self.store = runtime.store
        self.runtime = runtime

    def create_model(self, body: dict, tenant: str, admin: bool) -> dict | None:
        """The caller's new destination model (None: owner/name exists); InvalidInputs names
        the fields at fault, NotYours an owner that is not the caller's name."""
        problems = []
        owner, name = body.get("owner"), body.get("name")
        visibility, hardware = body.get("visibility", "private"), body.get("hardware", "gpu")
        if not (isinstance(owner, str) and NAME.fullmatch(owner.lower())):
            problems.append(Problem("owner", "must be your account's name (the API key's tenant)"))
        if not (isinstance(name, str) and NAME.fullmatch(name)):
            problems.append(
                Problem("name", "must be lowercase letters, digits, '-', '_' or '.' (at most 100)")
            )
        if visibility not in VISIBILITIES:
            problems.append(Problem("visibility", "must be public or private"))
        if not isinstance(hardware, str):
            problems.append(Problem("hardware", "must be a string such as gpu"))
        description = body.get("description")
        if description is not None and not isinstance(description, str):
            problems.append(Problem("description", "must be a string"))
        if problems:
            raise InvalidInputs(problems)
        if owner != tenant and not admin:
            raise NotYours(owner)
        row = dict(owner=owner, name=name, visibility=visibility, hardware=hardware[:64])
        row.update(description=description, tenant=tenant if owner == tenant else owner)
        return self.store.destinations.create(row)

    def create(self, version: Version, body: dict, origin: str, who: Caller, origins) -> dict:
        """Store and queue `who`'s training of `version`; DestinationMissing, InvalidInputs,
        StoreFull (SDXL_MAX_TRAININGS_PER_KEY)."""
        destination = body.get("destination")
        owner, _, name = destination.partition("/") if isinstance(destination, str) else ("",) * 3
        scope = ANY if who.admin else who.tenant
        if not (owner and name) or self.store.destinations.get(owner, name, scope) is None:
            raise DestinationMissing(destination)
        problems: list[Problem] = []
        given = {}
        try:
            given = check_training_input(body.get("input"))
        except InvalidInputs as err:
            problems += err.problems
        problems += check_webhook(body.get("webhook"), body.get("webhook_events_filter"))
        if problems:
            raise InvalidInputs(problems)
        training_id = new_id()  # the id of the version it makes, too
        given.setdefault("name", webui_name(owner, name, training_id))
        kept = {
            name: key
            for name in FILE_INPUTS
            if name in given
            and (key := self._keep_file(training_id, name, given[name], scope, origins))
        }
        return self.runtime.create_training(
            {
                "id": training_id,
                "model": version.model,
                "version": version.id,
                "destination": f"{owner}/{name}",
                "input": given,
                "webhook": body.get("webhook"),
                "webhook_events_filter": body.get("webhook_events_filter"),
                "origin": origin,
                "tenant": who.tenant,
                "input_files": kept,
            }
        )

    def _keep_file(self, training_id: str, name: str, source: str, tenant, origins) -> str | None:
        """Where a file input waits for the training: a copy of the caller's upload or the
        bytes of a data URI, in the files backend; None for an http(s) URL (fetched when the
        training is prepared, under the usual rules)."""
        key = f"trainings/{training_id}/{name}"
        if source[:5].lower() == "data:":
            try:
                self.store.blobs.put(key, data_uri_file(source, name))
            except ValueError as err:
                raise InvalidInputs([Problem(f"input.{name}", str(err))]) from None
            return key
        file_id = own_file_id(source, origins)
        if file_id is None:
            return None
        row = self.store.files.get(file_id, tenant)
        if row is None:
            detail = f"the file {file_id} is not on this server (expired or never uploaded)"
            raise InvalidInputs([Problem(f"input.{name}", f"{name}: {detail}; upload it again")])
        self.store.blobs.put_file(key, self.store.blobs.path(row["key"]))
        return key

    def cancel(self, training_id: str) -> None:
        self.runtime.cancel(TRAINING, training_id)
