"""What AUTOMATIC1111's clients read at start and in their settings pages: the options (with the
checkpoint, the served model), the model list, and the lists this server has nothing in
(scripts, VAEs, upscalers, ...), each answered with honest, empty content."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi import Request as HttpRequest
from fastapi.responses import JSONResponse

from sdxl.http.bodies import json_object
from sdxl.http.errors import InvalidRequest
from sdxl.http.settings import Settings
from sdxl.inputs.surface import Problem

EMPTY_LISTS = (
    "sd-vae",
    "loras",
    "upscalers",
    "latent-upscale-modes",
    "hypernetworks",
    "face-restorers",
    "realesrgan-models",
    "extensions",
    "script-info",
)
REFRESH = ("refresh-checkpoints", "refresh-vae", "refresh-loras", "refresh-embeddings")


class OptionsApi:
    def __init__(self, settings: Settings):
        self.settings = settings

    def options(self) -> dict:
        return {
            "sd_model_checkpoint": self.settings.model_name,
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
        routes = APIRouter()
        names = self.settings.model_names

        @routes.get("/options")
        def get_options() -> dict:
            return self.options()

        @routes.post("/options", summary="Accepts the options as they are; the model is fixed")
        async def set_options(http: HttpRequest) -> JSONResponse:
            wanted = await json_object(http, '{"sd_model_checkpoint": "sdxl"}')
            current = self.options()
            problems = []
            for key, value in wanted.items():
                if key == "sd_model_checkpoint" and value not in names:
                    problems.append(
                        Problem(
                            key,
                            f"model {str(value)[:100]!r} not found; this server has "
                            f"{', '.join(names)}",
                        )
                    )
                elif key != "sd_model_checkpoint" and key in current and value != current[key]:
                    problems.append(Problem(key, f"{key} cannot be changed on this server"))
            if problems:
                raise InvalidRequest(problems)
            return JSONResponse(None)

        @routes.get("/sd-models")
        def sd_models() -> list[dict]:
            return [
                {
                    "title": name,
                    "model_name": name,
                    "hash": None,
                    "sha256": None,
                    "filename": name,
                    "config": None,
                }
                for name in names
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

        for name in EMPTY_LISTS:
            routes.add_api_route(f"/{name}", _empty, methods=["GET"], name=name)
        for name in REFRESH:
            routes.add_api_route(f"/{name}", _null, methods=["POST"], name=name)
        return routes


def _empty() -> list:
    return []


def _null() -> JSONResponse:
    return JSONResponse(None)
