"""Exchanges to records-API lines: what the relay spools and forwards.

    ExchangeRecords(settings).line(exchange) -> bytes | None

A line is one record of the records API as compact JSON (``id``, ``timestamp``, ``stream``,
``model``, ``messages``, ``response``): the same record the full sidecar would build, left for
the central replicas to validate (``parse_record``) and to fetch image URLs for. None: the
stream's sampling or rate cap skips the exchange, as the full sidecar's inbox would. The id is
decided here (the completion id while new, else one of the relay's own, else a random one), so
that sampling, which hashes the id, gives the same answer here and centrally, and a batch sent
twice (a retry after a lost answer, a restart) is stored once.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from monitor.config import Settings
from monitor.errors import ConfigError, InvalidInputError
from monitor.ingest.proxy_body import Exchange, assemble_json, assemble_sse, decoded, json_object
from monitor.ingest.recent_ids import RecentIds
from monitor.ingest.sampling import TokenBucket, is_sampled

# Completion ids remembered to tell a reused one (as the full sidecar does).
_RECENT_IDS = 16_384


class ExchangeRecords:
    """The stream's sampling and rate cap, and the record line of a kept exchange (thread-safe:
    the relay builds lines in a worker thread)."""

    def __init__(self, settings: Settings) -> None:
        stream = next((s for s in settings.streams if s.name == settings.proxy.stream), None)
        if stream is None:
            names = ", ".join(s.name for s in settings.streams)
            raise ConfigError(
                f"[proxy] stream {settings.proxy.stream!r} is not a configured stream ({names})"
            )
        self.stream = stream.name
        self._sample_rate = stream.sample_rate
        self._bucket = (
            TokenBucket(stream.max_records_per_second) if stream.max_records_per_second else None
        )
        self._max_sample_bytes = settings.proxy.max_sample_bytes
        self._recent_ids = RecentIds(_RECENT_IDS)

    def line(self, exchange: Exchange) -> bytes | None:
        """The exchange's record as one JSON line, or None when sampling skips it. Raises
        :class:`InvalidInputError` (or ``PayloadTooLargeError``) for an exchange that cannot
        become a record."""
        request = json_object(exchange.request_body, "request")
        messages = request.get("messages")
        if not isinstance(messages, list):
            raise InvalidInputError("the request has no messages list", field="messages")
        body = decoded(exchange.response_body, exchange.content_encoding, self._max_sample_bytes)
        if exchange.content_type.startswith("text/event-stream"):
            answer, meta = assemble_sse(body)
        else:
            answer, meta = assemble_json(body)
        completion_id = meta.get("id")
        if isinstance(completion_id, str) and completion_id:
            record_id = self._recent_ids.unique(completion_id)
        else:
            record_id = uuid.uuid4().hex
        if not is_sampled(record_id, self._sample_rate):
            return None
        if self._bucket is not None and not self._bucket.take(1):
            return None
        record: dict[str, Any] = {
            "id": record_id,
            "timestamp": exchange.received_at.isoformat(),
            "stream": self.stream,
            "model": meta.get("model") or request.get("model"),
            "messages": messages,
            "response": answer,
        }
        text = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
        try:
            return text.encode()
        except UnicodeEncodeError as exc:  # a lone surrogate, sent escaped in the JSON
            raise InvalidInputError(f"the exchange is not valid Unicode: {exc}") from exc


__all__ = ["ExchangeRecords"]
