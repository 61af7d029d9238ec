"""JSONL traffic sent to a running monitor's records API, exactly once (``replay``).

Lines are sent in batches to ``POST /v1/records`` (``{"records": [...]}``), at ``rate``
records per second or as fast as the monitor accepts:

* every record carries an id before it is sent: its own, or a stable one from its content
  (:func:`~monitor.backfill.lines.content_id`), so a batch sent again is the same batch;
* a 429 (inbox full) or 503 writes nothing on the server (all or nothing), so the same batch is
  sent again after ``Retry-After`` (capped at :data:`MAX_RETRY_WAIT`); a connection error or
  no answer within ``timeout`` (did it arrive?) is retried with the same ids, and the monitor
  stores a record id once. At most ``max_retries`` times in a row, each handed to ``notify``;
  then the run stops, saying why;
* a 400 refuses the whole batch: its records are then sent one by one, the invalid ones are
  counted and handed to ``notify`` with their line numbers and skipped, the others delivered;
  a 413 (over the monitor's body limit) splits the batch in halves, down to one record, which
  is then invalid;
* answers are read strictly: a 202 must carry the records API's JSON counts, a 5xx is "the
  server failed", anything else stops the run naming the status and the start of the body.

``shift_time`` sets each record's timestamp to the moment its batch is sent (the content id
is taken before, so reruns keep their ids).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from monitor.backfill import Notify, ProgressCallback, no_notice, no_progress
from monitor.backfill.lines import content_id, load_line, read_lines
from monitor.errors import InvalidInputError, MonitorError

MAX_RETRY_WAIT = 60.0  # seconds, whatever Retry-After says
DEFAULT_MAX_RETRIES = 5
DEFAULT_TIMEOUT = 30.0  # seconds for one request, from sending to the end of the answer
MAX_ANSWER_BYTES = 1 << 20  # the records API answers a few hundred bytes
_SHOWN = 200  # characters of an unexpected answer quoted in an error


@dataclass
class ReplaySummary:
    lines: int = 0
    invalid: int = 0  # not JSON, or refused by the monitor (400)
    sent: int = 0
    accepted: int = 0
    sampled: int = 0
    duplicates: int = 0  # ids the monitor had already (a rerun)
    retries: int = 0  # batches sent again after a 429 / 503 / connection error or timeout
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.accepted / self.seconds if self.seconds > 0 else 0.0


class _NoAnswerError(Exception):
    """No whole answer within the request's time, or a connection error: retried."""


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def start(self) -> str:
        """The start of the body, for an error message (escaped by the CLI's error line)."""
        text = self.body[: 4 * _SHOWN].decode("utf-8", "replace")
        text = text if len(text) <= _SHOWN else text[:_SHOWN] + "..."
        return repr(text) if text else "an empty body"

    def json_object(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            return None
        return data if isinstance(data, dict) else None


class Replayer:
    def __init__(
        self,
        url: str,
        *,
        token: str,
        rate: float,
        batch: int,
        stream: str | None,
        shift_time: bool,
        timeout: float = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        max_line_bytes: int | None = None,
        notify: Notify = no_notice,
    ) -> None:
        import httpx

        self.endpoint = url.rstrip("/") + "/v1/records"
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        # httpx's timeout bounds each step (connect, each read); `timeout` also bounds the
        # whole request, so a server that trickles its answer cannot hold the run.
        self.client = httpx.Client(timeout=timeout, headers=headers, follow_redirects=False)
        self.timeout = timeout
        self.max_retries = max_retries
        self.max_line_bytes = max_line_bytes
        self.rate = rate
        self.batch = max(1, min(batch, int(rate))) if rate > 0 else batch
        self.stream = stream
        self.shift_time = shift_time
        self.notify = notify  # each invalid line and each retry, as it happens
        self.summary = ReplaySummary()

    def run(self, path: Path, progress: ProgressCallback = no_progress) -> ReplaySummary:
        """Send the file; ``progress`` counts the records sent (the total is unknown)."""
        started = time.monotonic()
        what, done = f"replaying {path.name}", 0
        progress(what, done, None)
        pending: list[tuple[int, dict[str, Any]]] = []
        try:
            for number, line in read_lines(path, self.max_line_bytes):
                self.summary.lines += 1
                record = self._record(number, line)
                if record is None:
                    continue
                pending.append((number, record))
                if len(pending) >= self.batch:
                    self._send(pending, started)
                    done += len(pending)
                    progress(what, done, None)
                    pending = []
            if pending:
                self._send(pending, started)
                done += len(pending)
                progress(what, done, None)
        finally:
            self.client.close()
        self.summary.seconds = time.monotonic() - started
        return self.summary

    def _invalid(self, number: int, message: str) -> None:
        self.summary.invalid += 1
        text = f"line {number}: {message}"
        if len(self.summary.errors) < 100:
            self.summary.errors.append(text)
        self.notify(f"invalid {text}")

    def _record(self, number: int, line: bytes) -> dict[str, Any] | None:
        try:
            obj = load_line(line)
            if obj.get("id") is None:
                obj["id"] = content_id(obj)
        except InvalidInputError as exc:
            self._invalid(number, str(exc))
            return None
        except (ValueError, RecursionError) as exc:  # content_id of an odd object
            self._invalid(number, f"unusable record: {exc}")
            return None
        if self.stream is not None and obj.get("stream") is None:
            obj["stream"] = self.stream
        return obj

    def _pace(self, started: float) -> None:
        if self.rate <= 0:
            return
        due = started + self.summary.sent / self.rate
        wait = due - time.monotonic()
        if wait > 0:
            time.sleep(wait)

    def _send(self, numbered: list[tuple[int, dict[str, Any]]], started: float) -> None:
        self._pace(started)
        records = [record for _, record in numbered]
        if self.shift_time:
            stamp = datetime.now(UTC).isoformat().replace("+00:00", "Z")
            for record in records:
                record["timestamp"] = stamp
        answer = self._post(records)
        first = numbered[0][0]
        lines = f"line {first}" if len(numbered) == 1 else f"lines {first}-{numbered[-1][0]}"
        if answer.status == 202:
            accepted, sampled, duplicates = _counts(answer, len(records), lines)
            self.summary.sent += len(records)
            self.summary.accepted += accepted
            self.summary.sampled += sampled
            self.summary.duplicates += duplicates
            return
        body = answer.json_object()
        if answer.status == 400 and body is not None:
            if len(records) > 1:
                for one in numbered:  # find the bad ones; the others are delivered
                    self._send([one], started)
                return
            self.summary.sent += 1
            self._invalid(first, _error_message(body) or "refused (HTTP 400)")
            return
        detail = (_error_message(body) if body is not None else "") or answer.start()
        if answer.status == 413:  # over the monitor's body limit: halves, down to one record
            if len(records) > 1:
                half = len(numbered) // 2
                self._send(numbered[:half], started)
                self._send(numbered[half:], started)
                return
            self.summary.sent += 1
            self._invalid(first, f"too large for the monitor (HTTP 413): {detail}")
            return
        if answer.status >= 500:
            raise MonitorError(
                f"the server failed (HTTP {answer.status}) on {lines} at {self.endpoint}: {detail}"
            )
        raise MonitorError(
            f"{self.endpoint} refused {lines} with HTTP {answer.status}: {detail}"
            + (" (--token?)" if answer.status in (401, 403) else "")
        )

    def _post(self, records: list[dict[str, Any]]) -> Answer:
        """POST one batch until it is answered for good: the same batch again after a 429,
        a 503, a connection error or no answer in time, at most ``max_retries`` times."""
        retries = 0
        payload = json.dumps({"records": records}, ensure_ascii=False).encode("utf-8")
        while True:
            try:
                answer = self._request(payload)
            except _NoAnswerError as exc:
                problem = str(exc)
                wait = min(MAX_RETRY_WAIT, 0.5 * 2**retries)
            else:
                if answer.status not in (429, 503):
                    return answer
                why = "inbox full" if answer.status == 429 else "unavailable"
                problem = f"{self.endpoint} answered HTTP {answer.status} ({why})"
                wait = _retry_after(answer.headers.get("retry-after"))
            if retries >= self.max_retries:
                raise MonitorError(
                    f"{problem}; gave up after {retries} retries (--max-retries {self.max_retries})"
                )
            retries += 1
            self.summary.retries += 1
            self.notify(f"{problem}: retry {retries} of {self.max_retries} in {wait:.1f} s")
            time.sleep(wait)

    def _request(self, payload: bytes) -> Answer:
        """One POST and its whole answer, within ``timeout`` seconds and MAX_ANSWER_BYTES."""
        import httpx

        deadline = time.monotonic() + self.timeout
        headers = {"Content-Type": "application/json"}
        try:
            with self.client.stream("POST", self.endpoint, content=payload, headers=headers) as r:
                body = bytearray()
                for chunk in r.iter_bytes():
                    body += chunk
                    if len(body) > MAX_ANSWER_BYTES:
                        raise MonitorError(
                            f"{self.endpoint} answered HTTP {r.status_code} with over "
                            f"{MAX_ANSWER_BYTES:,} bytes: not the records API"
                        )
                    if time.monotonic() > deadline:
                        raise _NoAnswerError(
                            f"no whole answer from {self.endpoint} within {self.timeout:g} s "
                            "(--timeout)"
                        )
                return Answer(r.status_code, dict(r.headers), bytes(body))
        except httpx.TimeoutException as exc:
            raise _NoAnswerError(
                f"no answer from {self.endpoint} within {self.timeout:g} s (--timeout)"
            ) from exc
        except httpx.TransportError as exc:
            raise _NoAnswerError(
                f"cannot reach {self.endpoint}: {exc or type(exc).__name__}"
            ) from exc


def _counts(answer: Answer, sent: int, lines: str) -> tuple[int, int, int]:
    """accepted, sampled, duplicates of a 202, or an error: a 202 without the records API's
    counts is not an acknowledgement (the records may not be anywhere)."""
    body = answer.json_object()
    values = [body.get(k) if body is not None else None for k in ("accepted", "sampled")]
    duplicates = body.get("duplicates", 0) if body is not None else 0
    numbers = [*values, duplicates]
    if not all(type(v) is int and v >= 0 for v in numbers) or not (
        values[1] <= values[0] <= sent  # type: ignore[operator]
    ):
        raise MonitorError(
            f"HTTP 202 for {lines} without the records API's counts (accepted, sampled): "
            f"{answer.start()}; is the URL a mllm-monitor?"
        )
    return int(values[0]), int(values[1]), int(duplicates)  # type: ignore[arg-type]


def _retry_after(value: str | None) -> float:
    try:
        seconds = float(value) if value is not None else 1.0
    except ValueError:
        seconds = 1.0
    if seconds != seconds:  # NaN
        seconds = 1.0
    return min(MAX_RETRY_WAIT, max(0.05, seconds))


def _error_message(body: dict[str, Any] | None) -> str:
    error = body.get("error") if body is not None else None
    if not isinstance(error, dict):
        return ""
    where = f"{error.get('field')}: " if error.get("field") else ""
    return f"{where}{error.get('message', '')}"


def same_server(url: str, host: str, port: int) -> bool:
    """True when ``url`` names the configured server itself: its host and port (a server bound
    to every address is its own on loopback)."""
    import httpx

    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError):
        return False
    target = (parsed.host or "").lower().strip("[]")
    configured = host.lower().strip("[]")
    default = 443 if parsed.scheme == "https" else 80
    if (parsed.port or default) != port:
        return False
    loopback = {"127.0.0.1", "::1", "localhost"}
    everywhere = {"0.0.0.0", "::", ""}
    return target == configured or (target in loopback and configured in loopback | everywhere)
