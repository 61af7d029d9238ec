"""The relay on loopback: a fake OpenAI upstream, the relay, and a central records API (the
real one on SQLite, or a recording one with scripted answers)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from monitor.ingest.app import create_app
from monitor.metrics import MonitorMetrics
from tests.integration.ingest.proxy_support import make_settings, serve, sqlite_repository, wait_for
from tests.integration.relay.relay_support import (
    CENTRAL_TOKEN,
    RecordingCentral,
    fake_upstream,
    relay_settings,
    running_relay,
    spool_segments,
)


def _closed_port_url() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    return f"http://127.0.0.1:{port}"


def test_sampled_exchanges_arrive_in_the_central_inbox(tmp_path: Path) -> None:
    repository = sqlite_repository(tmp_path)
    central_settings = make_settings("sqlite://", server={"token": CENTRAL_TOKEN})
    metrics = MonitorMetrics(CollectorRegistry(), ["default"])
    central = create_app(central_settings, repository, metrics)
    with (
        fake_upstream() as upstream_url,
        serve(central) as central_url,
        running_relay(relay_settings(upstream_url, central_url, batch_size=3)) as relay,
    ):
        answers = [relay.chat(f"question {i}") for i in range(7)]
        assert [a.status_code for a in answers] == [200] * 7
        wait_for(lambda: repository.inbox_depth() == 7, what="seven records in the central inbox")
        entries = repository.claim("test", limit=100)
        assert {e.record.id for e in entries} == {a.json()["id"] for a in answers}
        assert {e.record.response for e in entries} == {f"echo: question {i}" for i in range(7)}
        wait_for(lambda: relay.value("mllm_monitor_relay_records_total", outcome="forwarded") == 7)
        assert relay.value("mllm_monitor_relay_spool_records") == 0
        assert relay.value("mllm_monitor_relay_last_forward_timestamp_seconds") > 0


def test_429_and_503_are_retried_until_nothing_is_lost() -> None:
    central = RecordingCentral(
        [(429, {"retry-after": "0"}), (503, {"retry-after": "0"}), (429, {}), (503, {})]
    )
    with (
        fake_upstream() as upstream_url,
        serve(central.app) as central_url,
        running_relay(relay_settings(upstream_url, central_url)) as relay,
    ):
        ids = [relay.chat(f"q{i}").json()["id"] for i in range(5)]
        wait_for(lambda: sorted(central.ids()) == sorted(ids), what="all five forwarded")
        assert relay.value("mllm_monitor_relay_retries_total", reason="too_many_requests") == 2
        assert relay.value("mllm_monitor_relay_retries_total", reason="unavailable") == 2
        assert relay.lost("rejected") == relay.lost("spool_full") == 0
        assert len(central.ids()) == 5  # each once


def test_central_down_clients_still_answered_and_the_spool_stays_bounded() -> None:
    with (
        fake_upstream() as upstream_url,
        running_relay(
            relay_settings(upstream_url, _closed_port_url(), spool_max_records=3, batch_size=2)
        ) as relay,
    ):
        answers = [relay.chat(f"q{i}") for i in range(8)]
        assert [a.status_code for a in answers] == [200] * 8
        assert all(a.json()["choices"][0]["message"]["content"] for a in answers)
        wait_for(lambda: relay.lost("spool_full") == 5, what="five dropped on a full spool")
        assert relay.value("mllm_monitor_relay_spool_records") == 3
        assert relay.value("mllm_monitor_relay_records_total", outcome="spooled") == 3
        wait_for(lambda: relay.value("mllm_monitor_relay_retries_total", reason="connection") > 1)
        ready = __import__("httpx").get(f"{relay.url}/readyz")
        assert ready.status_code == 200 and ready.json()["ready"] is True


def test_a_disk_spool_is_forwarded_after_a_restart(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    with fake_upstream() as upstream_url:
        down = _closed_port_url()
        with running_relay(relay_settings(upstream_url, down, spool_dir=str(spool))) as relay:
            ids = [relay.chat(f"q{i}").json()["id"] for i in range(4)]
            wait_for(lambda: relay.value("mllm_monitor_relay_spool_records") == 4)
        assert spool_segments(spool), "the spool is on disk after the relay stopped"
        central = RecordingCentral()
        with (
            serve(central.app) as central_url,
            running_relay(relay_settings(upstream_url, central_url, spool_dir=str(spool))) as relay,
        ):
            assert relay.value("mllm_monitor_relay_spool_records") in (0, 4)
            wait_for(lambda: sorted(central.ids()) == sorted(ids), what="forwarded after restart")
            wait_for(lambda: not spool_segments(spool), what="acknowledged segments deleted")


def test_a_refused_record_is_dropped_and_counted_not_retried_forever() -> None:
    central = RecordingCentral()
    central.refuse_prompt = "poison"
    with (
        fake_upstream() as upstream_url,
        serve(central.app) as central_url,
        running_relay(relay_settings(upstream_url, central_url, flush_interval="300ms")) as relay,
    ):
        good = [relay.chat(f"fine {i}").json()["id"] for i in range(5)]
        relay.chat("poison pill")
        wait_for(lambda: relay.lost("rejected") == 1, what="the poison record counted rejected")
        wait_for(lambda: sorted(central.ids()) == sorted(good), what="the others forwarded")
        requests = central.requests
        time.sleep(0.5)
        assert central.requests == requests, "nothing is sent again"
        assert relay.value("mllm_monitor_relay_spool_records") == 0


def test_a_wrong_token_drops_the_batch_counted() -> None:
    central = RecordingCentral()
    with (
        fake_upstream() as upstream_url,
        serve(central.app) as central_url,
        running_relay(relay_settings(upstream_url, central_url, token="wrong")) as relay,
    ):
        for i in range(3):
            relay.chat(f"q{i}")
        wait_for(lambda: relay.lost("rejected") == 3, what="three rejected")
        assert central.records == []
        requests = central.requests
        time.sleep(0.3)
        assert central.requests == requests
