"""What AUTOMATIC1111's clients read at start and in their settings pages: the options (with the
checkpoint: the served model, or one of the caller's trained models), the model list, and the
lists this server has nothing in (scripts, VAEs, upscalers, ...), each answered with honest,
empty content; the LoRAs the caller may name (`sdxl.adapters.library`: never a server path).

A1111's options are the whole server's; here each caller (API key's tenant) has its own
checkpoint, kept in this replica's memory: `POST /options` with `sd_model_checkpoint` chooses
it for the caller's next requests, and a request's `override_settings.sd_model_checkpoint`
chooses it for that request only."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi import Request as HttpRequest
from fastapi.responses import JSONResponse

from sdxl.adapters.library import LoraLibrary
from sdxl.http.auth import caller_of
from sdxl.http.bodies import json_object
from sdxl.http.errors import InvalidRequest
from sdxl.http.server_settings import Settings
from sdxl.http.shapes import A1111Route
from sdxl.http.trained import TrainedModels
from sdxl.inputs.surface import Problem

EMPTY_LISTS = (
    "sd-vae",
    "upscalers",
    "latent-upscale-modes",
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
        self._chosen: dict[str, str] = {}  # caller -> its trained model (else the served one)

    def checkpoint(self, http: HttpRequest, body: dict | None = None) -> tuple[str, str | None]:
        """(name, trained weights) of the model a request runs: its override_settings'
        checkpoint, else the caller's chosen one (weights None: the served model);
        InvalidRequest for an unknown one."""
        override = (body or {}).get("override_settings")
        name = override.get("sd_model_checkpoint") if isinstance(override, dict) else None
        if name is None:
            name = self._chosen.get(caller_of(http))
        if name is None or name in self.settings.model_names:
            return self.settings.model_name, None
        tar = self.trained.weights(name, http)
        if tar is None:
            raise InvalidRequest([self._unknown("sd_model_checkpoint", name, http)])
        return name, tar

    def _unknown(self, key: str, value, http: HttpRequest) -> Problem:
        names = [*self.settings.model_names, *self.trained.names(http)]
        return Problem(
            key, f"model {str(value)[:100]!r} not found; this server has {', '.join(names)}"
        )

    def options(self, http: HttpRequest) -> dict:
        chosen = self._chosen.get(caller_of(http), self.settings.model_name)
        return {
            "sd_model_checkpoint": chosen,
            "sd_checkpoint_hash": None,
            "sd_vae": "Automatic",
            "CLIP_stop_at_last_layers": 1,
            "samples_format": "png",
            "live_previews_enable": True,
            "show_progress_every_n_steps": 5,
            "eta_ancestral": 1.0,
            "add_model_hash_to_info": False,
            "add_model_name_to_info": True,
            "add_version_to_infotext": True,
        }

    def router(self) -> APIRouter:
        routes = APIRouter(route_class=A1111Route)
        names = self.settings.model_names

        @routes.get("/options")
        def get_options(http: HttpRequest) -> dict:
            return self.options(http)

        @routes.post(
            "/options", summary="Chooses the caller's checkpoint; the other options are fixed"
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
        current = self.options(http)
        problems, chosen = [], None
        for key, value in wanted.items():
            if key == "sd_model_checkpoint":
                if value in self.settings.model_names:
                    chosen = ""
                elif self.trained.weights(value, http) is not None:
                    chosen = value
                else:
                    problems.append(self._unknown(key, value, http))
            elif key in current and value != current[key]:
                problems.append(Problem(key, f"{key} cannot be changed on this server"))
        if problems:
            raise InvalidRequest(problems)
        if chosen == "":
            self._chosen.pop(caller_of(http), None)
        elif chosen is not None:
            self._chosen[caller_of(http)] = chosen


def _empty() -> list:
    return []


def _null() -> JSONResponse:
    return JSONResponse(None)
