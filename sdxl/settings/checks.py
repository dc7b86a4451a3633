"""The checks of the settings that are text (URLs, model names, job kinds, the webhook secret):
each takes the raw value and its variable and returns the value, or raises SettingsError
naming both and what to write."""

from __future__ import annotations

from urllib.parse import urlsplit

from sdxl.settings import SettingsError

CLAIMED_KINDS = ("predictions", "trainings")  # SDXL_JOB_KINDS' values: what a replica claims
# The model the Replicate guide calls, with the version id it uses.
GUIDE_MODEL = "stability-ai/sdxl:39ed52f2a78e934b3ba6e2a89f5b1c712de7dfea535525255b1aa35c5565e08b"


def public_url(raw: str, variable: str = "SDXL_PUBLIC_URL") -> str | None:
    raw = raw.strip().rstrip("/")
    if not raw:
        return None
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
        raise SettingsError(
            f"{variable}={raw!r} is not valid; give the server's public origin, such as "
            "https://sdxl.example.com (clients treat only https: output URLs as files)"
        )
    return raw


def served_names(raw: str, variable: str = "SDXL_REPLICATE_MODELS") -> tuple[str, ...]:
    names = tuple(part.strip() for part in raw.split(",") if part.strip())
    for name in names:
        model = name.partition(":")[0]
        owner, slash, model_name = model.partition("/")
        if not (owner and slash and model_name) or "/" in model_name or " " in name:
            raise SettingsError(
                f"{variable} has {name!r}; list models as owner/name or "
                "owner/name:version, comma-separated"
            )
    if not names:
        raise SettingsError(f"{variable} is empty; name at least one owner/name")
    return names


def model_name(raw: str, variable: str = "SDXL_MODEL_NAME") -> str:
    name = raw.strip()
    if not name or "/" in name or not name.isprintable() or " " in name:
        raise SettingsError(
            f"{variable} has {raw!r}; a model name is one word without '/' (e.g. sdxl)"
        )
    return name


def model_aliases(raw: str, variable: str = "SDXL_MODEL_ALIASES") -> tuple[str, ...]:
    return tuple(model_name(name, variable) for name in raw.split(",") if name.strip())


def job_kinds(raw: str, variable: str = "SDXL_JOB_KINDS") -> tuple[str, ...]:
    kinds = tuple(dict.fromkeys(part.strip() for part in raw.split(",") if part.strip()))
    wrong = [kind for kind in kinds if kind not in CLAIMED_KINDS]
    if wrong or not kinds:
        raise SettingsError(
            f"{variable}={raw!r}: list what this replica takes from the shared queue, "
            "predictions, trainings or both (predictions,trainings)"
        )
    return kinds


def webhook_secret(raw: str, variable: str = "SDXL_WEBHOOK_SECRET") -> str | None:
    secret = raw.strip() or None
    if secret is not None and (not secret.startswith("whsec_") or secret.count("_") != 1):
        raise SettingsError(
            f"{variable} must look like whsec_<base64> (one underscore), as Replicate's secrets do"
        )
    return secret


def masked_url(url: str | None) -> str | None:
    """A database URL with its password replaced by ***."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()
