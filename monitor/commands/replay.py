"""``mllm-monitor replay FILE --url U``: send JSONL traffic to a running monitor's records API.

For demos, load tests and incident drills. Lines are sent in batches to ``POST /v1/records``
(``{"records": [...]}``), at ``--rate`` records per second or as fast as the monitor accepts.
Delivery is exactly once:

* every record carries an id before it is sent: its own, or a stable one from its content
  (the same rule as ``backfill --from-jsonl``), so a batch sent again is the same batch;
* a 429 (inbox full) or 503 writes nothing on the server (all or nothing), so the same batch is
  sent again after ``Retry-After``; a connection error or timeout (did it arrive?) is retried
  with the same ids, and the monitor stores a record id once;
* a 400 refuses the whole batch: its records are then sent one by one, the invalid ones are
  reported with their line numbers and skipped, the others delivered.

``--shift-time`` sets each record's timestamp to the moment its batch is sent (the content id
is taken before, so reruns keep their ids).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from monitor.commands._common import ConfigOption, JsonOption, Reporter, err_console, load
from monitor.commands.backfill import content_id, read_lines
from monitor.errors import MonitorError

MAX_RETRY_WAIT = 60.0  # seconds, whatever Retry-After says
TRANSPORT_RETRIES = 5


@dataclass
class ReplaySummary:
    lines: int = 0
    invalid: int = 0  # not JSON, or refused by the monitor (400)
    sent: int = 0
    accepted: int = 0
    sampled: int = 0
    retries: int = 0  # batches sent again after a 429 / 503 / connection error
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.accepted / self.seconds if self.seconds > 0 else 0.0


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
        timeout: float = 60.0,
    ) -> None:
        import httpx

        self.endpoint = url.rstrip("/") + "/v1/records"
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.Client(timeout=timeout, headers=headers)
        self.rate = rate
        self.batch = max(1, min(batch, int(rate))) if rate > 0 else batch
        self.stream = stream
        self.shift_time = shift_time
        self.summary = ReplaySummary()

    def run(self, path: Path, reporter: Reporter) -> ReplaySummary:
        started = time.monotonic()
        pending: list[tuple[int, dict[str, Any]]] = []
        try:
            for number, line in read_lines(path):
                self.summary.lines += 1
                record = self._record(number, line)
                if record is None:
                    continue
                pending.append((number, record))
                if len(pending) >= self.batch:
                    self._send(pending, started)
                    reporter.advance(len(pending))
                    pending = []
            if pending:
                self._send(pending, started)
                reporter.advance(len(pending))
        finally:
            self.client.close()
        self.summary.seconds = time.monotonic() - started
        return self.summary

    def _invalid(self, number: int, message: str) -> None:
        self.summary.invalid += 1
        text = f"line {number}: {message}"
        if len(self.summary.errors) < 100:
            self.summary.errors.append(text)
        err_console.print(f"invalid {text}", markup=False)

    def _record(self, number: int, line: bytes) -> dict[str, Any] | None:
        try:
            obj = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            self._invalid(number, f"not JSON: {exc}")
            return None
        if not isinstance(obj, dict):
            self._invalid(number, "a record must be a JSON object")
            return None
        if obj.get("id") is None:
            obj["id"] = content_id(obj)
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
        status, body = self._post(records)
        self.summary.sent += len(records)
        if status == 202:
            self.summary.accepted += int(body.get("accepted", len(records)))
            self.summary.sampled += int(body.get("sampled", 0))
            return
        if status == 400 and len(records) > 1:
            self.summary.sent -= len(records)
            for one in numbered:  # find the bad ones; the others are delivered
                self._send([one], started)
            return
        message = _error_message(body) or f"HTTP {status}"
        if status == 400:
            self._invalid(numbered[0][0], message)
            return
        raise MonitorError(f"the monitor refused a batch (lines {numbered[0][0]}-): {message}")

    def _post(self, records: list[dict[str, Any]]) -> tuple[int, dict[str, Any]]:
        """POST one batch until it is answered for good: the same batch again after a 429,
        a 503 or a connection error."""
        import httpx

        transport_failures = 0
        while True:
            try:
                answer = self.client.post(self.endpoint, json={"records": records})
            except httpx.TransportError as exc:
                transport_failures += 1
                if transport_failures > TRANSPORT_RETRIES:
                    raise MonitorError(f"cannot reach {self.endpoint}: {exc}") from exc
                self.summary.retries += 1
                time.sleep(min(MAX_RETRY_WAIT, 0.5 * 2**transport_failures))
                continue
            if answer.status_code in (429, 503):
                self.summary.retries += 1
                time.sleep(_retry_after(answer.headers.get("Retry-After")))
                continue
            try:
                body = answer.json()
            except ValueError:
                body = {}
            return answer.status_code, body if isinstance(body, dict) else {}


def _retry_after(value: str | None) -> float:
    try:
        seconds = float(value) if value is not None else 1.0
    except ValueError:
        seconds = 1.0
    return min(MAX_RETRY_WAIT, max(0.05, seconds))


def _error_message(body: dict[str, Any]) -> str:
    error = body.get("error")
    if not isinstance(error, dict):
        return ""
    where = f"{error.get('field')}: " if error.get("field") else ""
    return f"{where}{error.get('message', '')}"


def register(app: typer.Typer) -> None:
    @app.command("replay")
    def replay(
        file: Annotated[
            Path, typer.Argument(help="JSONL traffic, one record a line.", dir_okay=False)
        ],
        url: Annotated[
            str | None,
            typer.Option(
                "--url",
                "-u",
                help="The monitor's base URL, like http://127.0.0.1:8080 (default: [server] "
                "host and port of the settings).",
            ),
        ] = None,
        rate: Annotated[
            float,
            typer.Option(min=0.0, help="Records per second (0: as fast as the monitor accepts)."),
        ] = 0.0,
        stream: Annotated[
            str | None, typer.Option("--stream", "-s", help="Stream of lines that name none.")
        ] = None,
        shift_time: Annotated[
            bool,
            typer.Option("--shift-time", help="Set each record's timestamp to when it is sent."),
        ] = False,
        token: Annotated[
            str | None,
            typer.Option("--token", help="Bearer token (default: [server] token of the settings)."),
        ] = None,
        config: ConfigOption = None,
        batch_size: Annotated[
            int, typer.Option("--batch-size", min=1, max=1000, help="Records per request.")
        ] = 100,
        as_json: JsonOption = False,
    ) -> None:
        """Send JSONL traffic to a running monitor (POST /v1/records), exactly once.

        429 / Retry-After are honoured (the same batch is sent again); invalid lines are
        reported with their line number and skipped (exit 1 at the end).
        """
        settings = load(config)
        if url is None:
            host, port = settings.server.host, settings.server.port
            url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        if token is None:
            token = settings.server.token
        if not url.startswith(("http://", "https://")):
            raise typer.BadParameter("must start with http:// or https://", param_hint="--url")
        if not file.is_file():
            raise MonitorError(f"no such file: {file}")
        replayer = Replayer(
            url, token=token, rate=rate, batch=batch_size, stream=stream, shift_time=shift_time
        )
        with Reporter(f"replaying {file.name}", None) as reporter:
            summary = replayer.run(file, reporter)
        if as_json:
            data = asdict(summary)
            data["records_per_second"] = summary.rate
            typer.echo(json.dumps(data, indent=2))
        else:
            typer.echo(
                f"{summary.lines:,} lines: {summary.accepted:,} accepted ({summary.sampled:,} "
                f"sampled), {summary.invalid:,} invalid, {summary.retries:,} retries, "
                f"{summary.seconds:.1f} s ({summary.rate:.0f} records/s)"
            )
        if summary.invalid:
            raise typer.Exit(1)
