"""The settings tree (:class:`Settings`) and its loader: the TOML file, the environment, and
the checks that make a typo an error."""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from monitor.config._types import NAME_PATTERN
from monitor.config.detection import AlertSettings, WindowSettings
from monitor.config.encoders import EncoderSettings, ReferenceStoreSettings
from monitor.config.redaction import redact
from monitor.config.service import (
    ComputeSettings,
    DatabaseSettings,
    RetentionSettings,
    SchedulerSettings,
    ServerSettings,
    WorkerSettings,
)
from monitor.config.traffic import (
    IngestSettings,
    OtlpSettings,
    ProxySettings,
    ReferenceModelSettings,
    RelaySettings,
    StreamSettings,
)
from monitor.errors import ConfigError

ENV_PREFIX = "MLLM_MONITOR_"
CONFIG_PATH_ENV = "MLLM_MONITOR_CONFIG"
DEFAULT_CONFIG_FILE = Path("mllm-monitor.toml")
# MLLM_MONITOR_* variables that are not settings, so the unknown-variable check lets them be:
# the config file's path, the PostgreSQL URL the test suite uses, and the demo token that
# deploy/compose.yaml reads on the host (often exported in the shell that runs the CLI too).
NON_SETTING_VARIABLES = frozenset(
    {
        CONFIG_PATH_ENV,
        "MLLM_MONITOR_TEST_POSTGRES_URL",
        "MLLM_MONITOR_SOAK_MINUTES",
        "MLLM_MONITOR_TOKEN",
    }
)
# Kubernetes injects service links for a Service named mllm-monitor (deploy/k8s) into every
# pod of its namespace: MLLM_MONITOR_SERVICE_HOST, MLLM_MONITOR_PORT_8080_TCP_ADDR, ...
KUBERNETES_SERVICE_VARIABLE = re.compile(
    r"MLLM_MONITOR_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT(_\d+_(TCP|UDP|SCTP)(_PROTO|_PORT|_ADDR)?)?)"
)


class Settings(BaseSettings):
    """Every setting of the monitor (``mllm-monitor config example`` prints each, with its
    meaning)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        allow_inf_nan=False,
    )

    database: DatabaseSettings = DatabaseSettings()
    retention: RetentionSettings = RetentionSettings()
    server: ServerSettings = ServerSettings()
    encoders: EncoderSettings = EncoderSettings()
    compute: ComputeSettings = ComputeSettings()
    reference: ReferenceStoreSettings = ReferenceStoreSettings()
    proxy: ProxySettings = ProxySettings()
    relay: RelaySettings = RelaySettings()
    reference_model: ReferenceModelSettings = ReferenceModelSettings()
    streams: list[StreamSettings] = Field(default_factory=lambda: [StreamSettings()])
    windows: WindowSettings = WindowSettings()
    alerts: AlertSettings = AlertSettings()
    ingest: IngestSettings = IngestSettings()
    otlp: OtlpSettings = OtlpSettings()
    workers: WorkerSettings = WorkerSettings()
    scheduler: SchedulerSettings = SchedulerSettings()

    _source: Path | None = PrivateAttr(default=None)

    @property
    def source(self) -> Path | None:
        """The TOML file these settings were read from; None for embedded defaults."""
        return self._source

    @field_validator("streams")
    @classmethod
    def _unique_streams(cls, streams: list[StreamSettings]) -> list[StreamSettings]:
        names = [s.name for s in streams]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"stream names must be unique, repeated: {', '.join(duplicates)}")
        if not streams:
            raise ValueError("at least one [[streams]] entry is needed")
        return streams

    @model_validator(mode="after")
    def _per_stream_needs_postgres(self) -> Settings:
        if self.scheduler.leadership == "per_stream" and not self.database.is_postgresql:
            raise ValueError(
                'scheduler.leadership = "per_stream" needs PostgreSQL (several replicas on '
                'one database); with SQLite one process computes every stream: use "auto"'
            )
        return self

    @property
    def per_stream_leadership(self) -> bool:
        """Whether each stream has a leader lock of its own (see ``scheduler.leadership``)."""
        leadership = self.scheduler.leadership
        return leadership == "per_stream" or (leadership == "auto" and self.database.is_postgresql)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The TOML file arrives as init kwargs; the environment overrides it.
        return (env_settings, init_settings)

    def redacted(self) -> dict[str, Any]:
        """The settings as plain data with every secret masked, for display (see redact)."""
        redacted: dict[str, Any] = redact(self.model_dump(mode="json"))
        return redacted

    @model_validator(mode="after")
    def _otlp_streams_configured(self) -> Settings:
        names = {s.name for s in self.streams}
        named = [self.otlp.default_stream] if self.otlp.default_stream else []
        unknown = sorted((set(named) | set(self.otlp.stream_by_value.values())) - names)
        if unknown:
            raise ValueError(
                f"otlp names streams that are not configured: {', '.join(unknown)} "
                f"(configured: {', '.join(sorted(names))})"
            )
        return self

    @property
    def otlp_default_stream(self) -> str:
        """The stream of OTLP spans without the stream attribute (see ``[otlp]``)."""
        return self.otlp.default_stream or self.streams[0].name


def resolve_config_path(path: str | os.PathLike[str] | None = None) -> Path | None:
    """The file to read: explicit path, then $MLLM_MONITOR_CONFIG, then ./mllm-monitor.toml."""
    if path is not None:
        return Path(path)
    from_env = os.environ.get(CONFIG_PATH_ENV)
    if from_env:
        return Path(from_env)
    return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else None


#: Sections renamed since an earlier release: old name -> new name. A file or variable that
#: uses an old name is refused with the new one, never silently ignored (a secret in it would
#: be lost).
RENAMED_SECTIONS: dict[str, str] = {"references": "reference_model"}


def _renamed_section_problems(data: Mapping[str, Any]) -> list[str]:
    return [
        f"[{old}] is now [{new}]: rename the section (its keys are unchanged)"
        for old, new in RENAMED_SECTIONS.items()
        if old in data
    ]


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """Read, merge and validate the settings; any problem raises one :class:`ConfigError`."""
    source = resolve_config_path(path)
    data: dict[str, Any] = {}
    if source is not None:
        try:
            with source.open("rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError as exc:
            raise ConfigError(f"config file not found: {source}", path=source) from exc
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read config file {source}: {exc}", path=source) from exc
    where = f"config file {source}" if source else "settings"
    renamed = _renamed_section_problems(data)
    if renamed:
        raise ConfigError(f"invalid {where}:", problems=renamed, path=source)
    unknown = unknown_environment_variables(os.environ)
    if unknown:
        raise ConfigError(f"invalid environment for {where}:", problems=unknown, path=source)
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        raise ConfigError(
            f"invalid {where} (environment overrides included):",
            problems=[_describe(err) for err in exc.errors()],
            path=source,
        ) from exc
    except SettingsError as exc:  # a complex value (a list, a section) that is not JSON
        variable = _variable_of(str(exc))
        raise ConfigError(
            f"invalid environment for {where}:",
            problems=[f"{variable}: not valid JSON (lists and sections are given as JSON)"],
            path=source,
        ) from exc
    settings._source = source
    return settings


def unknown_environment_variables(environ: Mapping[str, str]) -> list[str]:
    """One problem line per ``MLLM_MONITOR_*`` variable that names no setting.

    Names are matched as pydantic-settings matches them (case-insensitive, sections joined by
    ``__``); :data:`NON_SETTING_VARIABLES` and Kubernetes service links are allowed.
    """
    allowed = {name.upper() for name in NON_SETTING_VARIABLES}
    problems = []
    for variable in sorted(environ):
        upper = variable.upper()
        if not upper.startswith(ENV_PREFIX) or upper in allowed:
            continue
        if KUBERNETES_SERVICE_VARIABLE.fullmatch(upper):
            continue
        path = upper[len(ENV_PREFIX) :].lower().split("__")
        if path[0] in RENAMED_SECTIONS:
            new = f"{ENV_PREFIX}{'__'.join([RENAMED_SECTIONS[path[0]], *path[1:]]).upper()}"
            problems.append(
                f"{variable}: [{path[0]}] is now [{RENAMED_SECTIONS[path[0]]}]: use {new}"
            )
            continue
        fields: dict[str, Any] | None = Settings.model_fields
        for depth, part in enumerate(path):
            if fields is None or part not in fields:
                known = sorted(fields or {})
                guess = difflib.get_close_matches(part, known, n=1)
                hint = f"; did you mean {guess[0]!r}?" if guess else ""
                where = ".".join(path[:depth]) or "the top level"
                problems.append(
                    f"{variable}: unknown setting {part!r} in {where} (environment variables "
                    f"must name a documented key{hint})"
                )
                break
            annotation = fields[part].annotation
            is_section = isinstance(annotation, type) and issubclass(annotation, BaseModel)
            fields = annotation.model_fields if is_section else None
    return problems


def _variable_of(message: str) -> str:
    match = re.search(r'field "([^"]+)"', message)
    return f"{ENV_PREFIX}{match[1].upper()}" if match else "an MLLM_MONITOR_* variable"


def _describe(err: Any) -> str:
    loc = ".".join(str(part) for part in err["loc"] if not str(part).startswith("function-"))
    message = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        message = "unknown key (check the spelling against the documented keys)"
    elif err["type"] == "string_pattern_mismatch" and err["ctx"]["pattern"] == NAME_PATTERN:
        message = (
            "must be 1 to 64 letters, digits, '_', '.', ':' or '-', starting with a letter, "
            f"digit or '_' (got {str(err['input'])[:80]!r})"
        )
    return f"{loc or '(top level)'}: {message}"
