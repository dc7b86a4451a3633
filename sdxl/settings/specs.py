"""How each kind of setting is read: one spec per kind (number, size, seconds, choice, switch,
flag, folder, text), and `Group`, the pydantic-settings model every concern's settings are.

A field of a group is declared once, with `setting(variable, default, line)` and its spec in
`Annotated[...]`; the group reads each variable's raw text with the spec (blank is the default;
an unusable value is an error naming the variable, its value and what to write), so that the
whole environment is checked before anything loads, and the docs' table is made from the same
declarations (`sdxl.settings.show`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from sdxl.settings import SettingsError, env_choice, env_flag, env_number, parse_size


@dataclass(frozen=True)
class Number:
    """A whole number, a number, a size (`10G`, `20M`) or seconds, from `minimum` (to
    `maximum`), in the one number grammar (`sdxl.numbers`)."""

    parse: Callable[[str], Any]  # int, float or parse_size
    minimum: float
    maximum: float | None = None
    seconds: bool = False

    def read(self, env: Mapping[str, str], name: str, default: Any) -> Any:
        return env_number(env, name, self.parse, self.minimum, default, self.maximum)

    @property
    def kind(self) -> str:
        if self.parse is parse_size:
            return "size (`10G`, `20M`, bytes)"
        unit = "seconds" if self.seconds else "whole number" if self.parse is int else "number"
        top = f" to {self.maximum}" if self.maximum is not None else ""
        return f"{unit} ≥ {self.minimum}{top}"


def size(minimum: int = 1) -> Number:
    return Number(parse_size, minimum)


def seconds(minimum: float) -> Number:
    return Number(float, minimum, seconds=True)


@dataclass(frozen=True)
class Choice:
    """One of `choices`; `on` ("1" of "0"/"1") makes it a bool."""

    choices: tuple[str, ...]
    raw_default: str = ""
    on: str | None = None

    def read(self, env: Mapping[str, str], name: str, default: Any) -> Any:
        value = env_choice(env, name, self.choices, self.raw_default or str(default))
        return value if self.on is None else value == self.on

    @property
    def kind(self) -> str:
        return " \\| ".join(f"`{choice}`" for choice in self.choices)


@dataclass(frozen=True)
class Flag:
    """Yes or no: 1, true or yes is on; unset, 0, false or no is off. `invert`: the field holds
    the opposite (public_only from SDXL_ALLOW_PRIVATE_URLS)."""

    invert: bool = False

    def read(self, env: Mapping[str, str], name: str, default: Any) -> Any:
        return env_flag(env, name) != self.invert

    kind = "flag (`1`/`0`)"


@dataclass(frozen=True)
class Folder:
    """A path (unset or empty: the default); `strip`: blank is unset too."""

    strip: bool = False

    def read(self, env: Mapping[str, str], name: str, default: Any) -> Any:
        raw = env.get(name, "")
        raw = raw.strip() if self.strip else raw
        return Path(raw) if raw else default

    kind = "path"


@dataclass(frozen=True)
class Folders:
    """Paths separated by os.pathsep."""

    def read(self, env: Mapping[str, str], name: str, default: Any) -> Any:
        raw = env.get(name, "")
        return tuple(Path(p) for p in raw.split(os.pathsep) if p.strip()) or default

    kind = "paths (`:`-separated)"


@dataclass(frozen=True)
class Text:
    """Free text checked by `check(raw, variable)` (None: blank is unset); `raw_default` is
    the text an unset variable stands for. `secret`: masked wherever it is shown."""

    check: Callable[[str, str], Any] | None = None
    raw_default: str = ""
    secret: bool = False
    kind: str = "text"
    mask: Callable[[Any], Any] | None = None  # how it is shown (a URL's password hidden)

    def read(self, env: Mapping[str, str], name: str, default: Any) -> Any:
        raw = env.get(name, self.raw_default)
        if self.check is not None:
            return self.check(raw, name)
        return raw.strip() or default


Spec = Number | Choice | Flag | Folder | Folders | Text


def setting(variable: str, default: Any, line: str, shown: str = "") -> Any:
    """A field read from `variable`, `line` its one-line meaning (the docs' table); `shown`: its
    default as the docs say it, where it depends on the machine."""
    extra = {"shown": shown} if shown else None
    if callable(default):
        return Field(
            default_factory=default,
            validation_alias=variable,
            description=line,
            json_schema_extra=extra,
        )
    return Field(default, validation_alias=variable, description=line, json_schema_extra=extra)


def spec_of(field) -> Spec | None:
    return next((m for m in field.metadata if isinstance(m, Spec)), None)


class Group(BaseSettings):
    """One concern's settings, read from a mapping of raw text (the environment)."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore")
    TITLE: ClassVar[str] = ""

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, **_others):
        return (init_settings,)  # `read` hands the environment over, read once

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, env: Any) -> Any:
        values, errors = {}, []
        for field in cls.model_fields.values():
            spec = spec_of(field)
            if spec is None:
                continue
            name = str(field.validation_alias)
            try:
                values[name] = spec.read(env, name, field.get_default(call_default_factory=True))
            except (SettingsError, ValueError) as err:
                errors.append(str(err))
        if not errors:
            try:
                cls.check(env)
            except SettingsError as err:
                errors.append(str(err))
        if errors:
            raise ValueError("\n".join(errors))
        return values

    @classmethod
    def check(cls, env: Mapping[str, str]) -> None:
        """A rule across this group's variables; SettingsError when it is broken."""

    @classmethod
    def read(cls, env: Mapping[str, str] | None = None):
        """This group from `env` (os.environ by default); SettingsError names every variable
        that cannot be used."""
        env = os.environ if env is None else env
        try:
            return cls(**{k: v for k, v in env.items() if k.startswith("SDXL_")})
        except ValidationError as err:
            raise SettingsError(messages(err)) from None


def read_one(group: type[Group], attribute: str, env: Mapping[str, str] | None = None) -> Any:
    """One setting of `group`, read with its spec: for a module that needs one value where no
    caller can hand it down (the Cog predictor's process, a command's default)."""
    field = group.model_fields[attribute]
    env = os.environ if env is None else env
    default = field.get_default(call_default_factory=True)
    return spec_of(field).read(env, str(field.validation_alias), default)


def messages(err: ValidationError) -> str:
    """The messages of the specs' errors, without pydantic's wrapping."""
    found = [str(e.get("ctx", {}).get("error", e["msg"])) for e in err.errors()]
    return "\n".join(found)
