"""What AUTOMATIC1111's clients read at start and in their settings pages: the options (with the
checkpoint: the served model, or one of the caller's trained models), the model list, the VAE
list, and the lists this server has nothing in (scripts, hypernetworks, ...), each answered with
honest, empty content; the LoRAs the caller may name (`sdxl.adapters.library`: never a server
path).

A1111's options are the whole server's; here each caller (API key's tenant) has its own, kept
in this replica's memory: `POST /options` with `sd_model_checkpoint`, `CLIP_stop_at_last_layers`
or `sd_vae` sets them for the caller's next requests, and a request's `override_settings` sets
them for that request only (for the caller's next ones too with
`override_settings_restore_afterwards: false`, as A1111 keeps them). What each key does and
which are refused: `settings`."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from fastapi import APIRouter
from fastapi import Request as HttpRequest
from fastapi.responses import JSONResponse

from sdxl.adapters.library import LoraLibrary
from sdxl.http.a1111 import settings as a1111_settings
from sdxl.http.a1111.settings import CHECKPOINT, CLIP_LAYERS, HONOURED, VAE
from sdxl.http.auth import caller_of
from sdxl.http.bodies import json_object
from sdxl.http.errors import InvalidRequest
from sdxl.http.server_settings import Settings
from sdxl.http.shapes import A1111Route
from sdxl.http.trained import TrainedModels
from sdxl.inputs.surface import Problem

EMPTY_LISTS = (
    "hypernetworks",
    "face-restorers",
    "realesrgan-models",
    "extensions",
    "script-info",
)
REFRESH = ("refresh-checkpoints", "refresh-vae", "refresh-embeddings")


class OptionsApi:
    def __init__(
        self, settings: Settings, trained: TrainedModels, loras: LoraLibrary | None = None
    ):
        self.settings = settings
        self.trained = trained
        self.loras = loras  # the LoRAs <lora:name:w> may name, per caller
        self._chosen: dict[str, dict] = {}  # caller -> the settings it set (else the defaults)

    def for_request(self, http: HttpRequest, body: dict) -> Applied:
        """The settings a request runs with: its override_settings over the caller's; a 422
        for a key that is not a setting here or a value it cannot have."""
        override = a1111_settings.override_settings(body)
        fixed = self._fixed(http)
        problems = a1111_settings.settings_problems(
            override, fixed, self.settings.model_name, "override_settings."
        )
        if problems:
            raise InvalidRequest(problems)
        model, tar = self.checkpoint(http, override)
        if override and body.get("override_settings_restore_afterwards") is False:
            self._set(override, http)  # A1111 keeps them as the options
        wanted = {**self._chosen.get(caller_of(http), {}), **override}
        return Applied(model, tar, a1111_settings.clip_skip(wanted))

    def checkpoint(self, http: HttpRequest, override: dict) -> tuple[str, str | None]:
        """(name, trained weights) of the model a request runs: its override_settings'
        checkpoint, else the caller's chosen one (weights None: the served model);
        InvalidRequest for an unknown one."""
        name = override.get(CHECKPOINT)
        if name is None:
            name = self._chosen.get(caller_of(http), {}).get(CHECKPOINT)
        if name is None or name in self.settings.model_names:
            return self.settings.model_name, None
        tar = self.trained.weights(name, http)
        if tar is None:
            raise InvalidRequest([self._unknown(CHECKPOINT, name, http)])
        return name, tar

    def _unknown(self, key: str, value, http: HttpRequest) -> Problem:
        names = [*self.settings.model_names, *self.trained.names(http)]
        return Problem(
            key, f"model {str(value)[:100]!r} not found; this server has {', '.join(names)}"
        )

    def options(self, http: HttpRequest) -> dict:
        chosen = self._chosen.get(caller_of(http), {})
        return {
            CHECKPOINT: chosen.get(CHECKPOINT, self.settings.model_name),
            "sd_checkpoint_hash": None,
            VAE: chosen.get(VAE, "Automatic"),
            CLIP_LAYERS: chosen.get(CLIP_LAYERS, 1),
            "samples_format": "png",
            "live_previews_enable": True,
            "show_progress_every_n_steps": 5,
            "eta_ancestral": 1.0,
            "add_model_hash_to_info": False,
            "add_model_name_to_info": True,
            "add_version_to_infotext": True,
        }

    def _fixed(self, http: HttpRequest) -> dict:
        """The options that cannot change here, with their values."""
        return {k: v for k, v in self.options(http).items() if k not in HONOURED}

    def router(self) -> APIRouter:
        routes = APIRouter(route_class=A1111Route)
        names = self.settings.model_names

        @routes.get("/options")
        def get_options(http: HttpRequest) -> dict:
            return self.options(http)

        @routes.post(
            "/options",
            summary="Sets the caller's checkpoint, CLIP_stop_at_last_layers and sd_vae; the "
            "other options are fixed",
        )
        async def set_options(http: HttpRequest) -> JSONResponse:
            wanted = await json_object(http, '{"sd_model_checkpoint": "sdxl"}')
            return JSONResponse(await asyncio.to_thread(self._set, wanted, http))

        @routes.get("/sd-models")
        def sd_models(http: HttpRequest) -> list[dict]:
            return [
                {
                    "title": name,
                    "model_name": name,
                    "hash": None,
                    "sha256": None,
                    "filename": name,
                    "config": None,
                }
                for name in [*names, *self.trained.names(http)]
            ]

        @routes.get("/sd-vae", summary="The VAEs sd_vae may name besides Automatic and None")
        def sd_vae() -> list[dict]:
            return a1111_settings.vae_listing(self.settings.model_name)

        @routes.get("/scripts")
        def scripts() -> dict:
            return {"txt2img": [], "img2img": []}

        @routes.get("/embeddings")
        def embeddings() -> dict:
            return {"loaded": {}, "skipped": {}}

        @routes.get("/cmd-flags")
        def cmd_flags() -> dict:
            return {"api": True, "nowebui": True, "api_auth": None, "listen": False}

        @routes.get("/memory")
        def memory() -> dict:
            return {"ram": {"error": "not reported"}, "cuda": {"error": "not reported"}}

        @routes.get("/loras", summary="The LoRAs the caller's <lora:name:weight> tags may name")
        async def loras(http: HttpRequest) -> list[dict]:
            if self.loras is None:
                return []
            return await asyncio.to_thread(self.loras.listing, caller_of(http))

        @routes.post("/refresh-loras", summary="Reads SDXL_LORA_DIR again")
        def refresh_loras() -> JSONResponse:
            if self.loras is not None:
                self.loras.refresh()
            return JSONResponse(None)

        for name in EMPTY_LISTS:
            routes.add_api_route(f"/{name}", _empty, methods=["GET"], name=name)
        for name in REFRESH:
            routes.add_api_route(f"/{name}", _null, methods=["POST"], name=name)
        return routes

    def _set(self, wanted: dict, http: HttpRequest) -> None:
        problems = a1111_settings.settings_problems(
            wanted, self._fixed(http), self.settings.model_name, ""
        )
        checkpoint = wanted.get(CHECKPOINT)
        if (
            checkpoint is not None
            and checkpoint not in self.settings.model_names
            and self.trained.weights(checkpoint, http) is None
        ):
            problems.append(self._unknown(CHECKPOINT, checkpoint, http))
        if problems:
            raise InvalidRequest(problems)
        chosen = {**self._chosen.get(caller_of(http), {})}
        chosen.update({key: wanted[key] for key in HONOURED if wanted.get(key) is not None})
        if CLIP_LAYERS in chosen:
            chosen[CLIP_LAYERS] = a1111_settings.whole_layers(chosen[CLIP_LAYERS])
        if chosen.get(CHECKPOINT) in self.settings.model_names:
            del chosen[CHECKPOINT]  # the served model: the default
        self._chosen[caller_of(http)] = chosen


@dataclass(frozen=True)
class Applied:
    """The settings one request runs with."""

    model: str  # the checkpoint's name, as infotexts and info write it
    trained_tar: str | None  # its trained weights (None: the served model)
    clip_skip: int | None  # diffusers' clip_skip (None: SDXL's usual encoding)


def _empty() -> list:
    return []


def _null() -> JSONResponse:
    return JSONResponse(None)
