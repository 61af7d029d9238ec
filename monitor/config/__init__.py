"""The settings tree: one TOML file plus ``MLLM_MONITOR_*`` environment overrides.

This package is the only reader of files and environment variables for settings; everything else
receives a :class:`Settings` (or a part of it) as an argument. Its modules: ``settings`` (the
tree and its loader), the sections by subject (``service``, ``encoders``, ``traffic``,
``detection``), ``redaction`` (secrets masked for display) and ``_types`` (what the sections
share); import the names from ``monitor.config``.

Where the file comes from, first match wins: the path given by the caller (``--config``), the
``MLLM_MONITOR_CONFIG`` variable, ``./mllm-monitor.toml`` if it exists, else embedded defaults.
Environment overrides beat the file: nested keys are joined by ``__``, so
``MLLM_MONITOR_DATABASE__URL`` sets ``[database] url``. Unknown keys are errors, so a typo is
reported instead of silently ignored; that includes environment variables: any
``MLLM_MONITOR_*`` variable that names no setting is an error, except the few that are not
settings (:data:`NON_SETTING_VARIABLES`).

Numbers must be finite (``inf`` and ``nan`` are refused everywhere) and durations at most
:data:`MAX_DURATION`, so later arithmetic on them cannot overflow.
"""

from monitor.config._types import (
    MAX_DURATION,
    MAX_INTEGER,
    NAME_PATTERN,
    Duration,
    Section,
    format_duration,
    parse_duration,
)
from monitor.config.detection import AlertSettings, WindowSettings
from monitor.config.encoders import (
    IMAGE_MAX_BYTES,
    IMAGE_MAX_PIXELS,
    EncoderSettings,
    ImageEncoderSettings,
    ReferenceStoreSettings,
    TextEncoderSettings,
)
from monitor.config.redaction import SECRET_MASK, is_secret_key, mask_url, redact
from monitor.config.service import (
    ComputeSettings,
    DatabaseSettings,
    RetentionSettings,
    SchedulerSettings,
    ServerSettings,
    WorkerSettings,
)
from monitor.config.settings import (
    CONFIG_PATH_ENV,
    DEFAULT_CONFIG_FILE,
    ENV_PREFIX,
    KUBERNETES_SERVICE_VARIABLE,
    NON_SETTING_VARIABLES,
    RENAMED_SECTIONS,
    Settings,
    load_settings,
    resolve_config_path,
    unknown_environment_variables,
)
from monitor.config.traffic import (
    IngestSettings,
    OtlpSettings,
    ProxySettings,
    ReferenceModelSettings,
    RelaySettings,
    StreamSettings,
)

__all__ = [
    "CONFIG_PATH_ENV",
    "DEFAULT_CONFIG_FILE",
    "ENV_PREFIX",
    "IMAGE_MAX_BYTES",
    "IMAGE_MAX_PIXELS",
    "KUBERNETES_SERVICE_VARIABLE",
    "MAX_DURATION",
    "MAX_INTEGER",
    "NAME_PATTERN",
    "NON_SETTING_VARIABLES",
    "RENAMED_SECTIONS",
    "SECRET_MASK",
    "AlertSettings",
    "ComputeSettings",
    "DatabaseSettings",
    "Duration",
    "EncoderSettings",
    "ImageEncoderSettings",
    "IngestSettings",
    "OtlpSettings",
    "ProxySettings",
    "ReferenceModelSettings",
    "ReferenceStoreSettings",
    "RelaySettings",
    "RetentionSettings",
    "SchedulerSettings",
    "Section",
    "ServerSettings",
    "Settings",
    "StreamSettings",
    "TextEncoderSettings",
    "WindowSettings",
    "WorkerSettings",
    "format_duration",
    "is_secret_key",
    "load_settings",
    "mask_url",
    "parse_duration",
    "redact",
    "resolve_config_path",
    "unknown_environment_variables",
]
