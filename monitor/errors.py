"""The one exception tree of mllm-monitor.

Every error the project raises on purpose is a :class:`MonitorError`, so callers (the CLI, the
HTTP layer) can map them to exit codes and 4xx answers by class, never by message::

    MonitorError
    ├── ConfigError                 settings file or environment is invalid
    ├── InvalidInputError           data handed to the monitor is unusable (also a ValueError)
    │   ├── EmbeddingError          embedding arrays: empty, NaN/inf, wrong shape, not normalised
    │   ├── ImageDecodeError        an image is corrupt, too large, a bomb, or of a refused format
    │   ├── ImageFetchError         an image URL is refused (host, address) or cannot be fetched
    │   ├── PayloadTooLargeError    a request body or batch over its configured limit
    │   └── UnknownRecordError      a late reference names a record the monitor never kept
    ├── InboxFullError              the durable inbox is at its configured depth (retry later)
    ├── ClientGoneError             a sidecar client went away before its request was complete
    ├── TooManyWindowsError         a range to backfill holds more windows than allowed
    ├── EncoderError                an encoder cannot be loaded or run (model missing, bad config)
    ├── ReferenceStoreError         a reference store is missing, corrupt, or built otherwise
    │   └── FingerprintMismatchError  the store was built with another encoder
    ├── EstimatorError              an estimator cannot produce a number
    │   ├── CheckpointError         a CLUB weights file cannot be read or does not fit
    │   └── CalibrationError        a null distribution cannot support what was asked of it
    └── StorageError                the database cannot do what was asked
        ├── DatabaseUnavailableError  bad URL, unreachable server, refused credentials
        └── SchemaMismatchError     the database is at another Alembic revision than the code

Exceptions carry context as attributes (``field``, ``path``) besides their message, and code that
wraps a lower-level exception chains it with ``raise ... from exc``.

The CLI turns any of them into one error line and an exit code by class: ConfigError 2, every
other MonitorError 1 (an OSError too); anything else is a bug, exit 3 (monitor/cli.py).
"""

from __future__ import annotations

from pathlib import Path


class MonitorError(Exception):
    """Root of every error raised on purpose by mllm-monitor."""


class ConfigError(MonitorError):
    """The settings (TOML file or MLLM_MONITOR_* environment) are invalid.

    ``problems`` lists one ``"dotted.key: what is wrong"`` line per problem found.
    """

    def __init__(
        self, message: str, *, problems: list[str] | None = None, path: Path | None = None
    ) -> None:
        self.problems = list(problems or [])
        self.path = path
        if self.problems:
            message = message + "\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(message)


class InvalidInputError(MonitorError, ValueError):
    """Data handed to the monitor cannot be used; ``field`` names the offending input."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        super().__init__(message)


class EmbeddingError(InvalidInputError):
    """An embedding array is empty, non-finite, of the wrong shape or not L2-normalised."""


class EstimatorError(MonitorError):
    """An estimator cannot produce a number from what it was given."""


class CheckpointError(EstimatorError):
    """A CLUB weights file is missing, unreadable, or does not fit the expected dimensions."""

    def __init__(self, message: str, *, path: Path | None = None) -> None:
        self.path = path
        super().__init__(message)


class CalibrationError(EstimatorError):
    """A null distribution cannot support the request (too few trials for the alpha, ...)."""


class ImageDecodeError(InvalidInputError):
    """An image cannot be decoded safely: corrupt, truncated, too large, or a refused format."""


class EncoderError(MonitorError):
    """An encoder cannot be loaded or run: missing model files, unknown kind, bad settings."""


class StorageError(MonitorError):
    """The database cannot do what was asked."""


class DatabaseUnavailableError(StorageError):
    """The database URL is invalid, the server unreachable, or the credentials refused."""


class SchemaMismatchError(StorageError):
    """The database schema is at another Alembic revision than this code expects.

    ``current`` and ``expected`` are revision ids (``current`` is None for an empty database);
    the message names the command that fixes it.
    """

    def __init__(self, message: str, *, current: str | None, expected: str | None) -> None:
        self.current = current
        self.expected = expected
        super().__init__(message)


class ReferenceStoreError(MonitorError):
    """A reference store cannot be built or loaded; ``path`` names the offending file."""

    def __init__(self, message: str, *, path: Path | None = None) -> None:
        self.path = path
        super().__init__(message)


class FingerprintMismatchError(ReferenceStoreError):
    """Embeddings from one encoder were offered to a store built with another."""


class ImageFetchError(InvalidInputError):
    """An image URL is refused (scheme, host not allowed, private address) or its fetch failed."""


class PayloadTooLargeError(InvalidInputError):
    """A request body, or a batch in it, is over its configured limit."""


class UnknownRecordError(InvalidInputError):
    """A late reference names a record that is neither waiting in the inbox nor embedded."""


class ClientGoneError(MonitorError):
    """A sidecar client went away before its request body was complete (an ordinary event:
    counted as an aborted exchange, never an error of the monitor)."""


class InboxFullError(MonitorError):
    """The durable inbox holds its configured maximum; nothing was written.

    ``retry_after`` is the number of seconds the client should wait before retrying."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class TooManyWindowsError(MonitorError):
    """A range with more windows to compute than --max-windows allows (a usage error)."""

    def __init__(self, stream: str, count: int, cap: int) -> None:
        super().__init__(
            f"the range has {count:,} windows of stream {stream!r} to compute, more than "
            f"--max-windows {cap:,} (default: [scheduler] max_catch_up): narrow --since/--until, "
            f"or pass --max-windows {count} to compute them all"
        )
        self.count = count
