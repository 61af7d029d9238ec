"""The sidecar, end to end on loopback: the official openai client -> sidecar -> a real fake
upstream; what the client gets through the sidecar equals what it gets from the upstream."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest

from monitor.ingest.worker import EmbeddingWorkers
from monitor.metrics import MonitorMetrics
from monitor.store.repository import Repository
from monitor.store.types import content_sha256
from tests.integration.ingest.proxy_support import (
    API_KEY,
    FakeUpstream,
    png_data_url,
    shared_tiny_encoders,
    sidecar_over_fake,
    sqlite_repository,
    wait_for,
)

MODEL = "llava-fake"


@dataclass
class Sidecar:
    upstream: openai.OpenAI  # the client talking to the upstream directly
    proxied: openai.OpenAI  # the same client through the sidecar
    fake: FakeUpstream
    repository: Repository
    metrics: MonitorMetrics
    workers: EmbeddingWorkers


@pytest.fixture
def sidecar(tmp_path: Path) -> Iterator[Sidecar]:
    repo = sqlite_repository(tmp_path)
    # The monitor's own token is set: proxied routes must not ask for it.
    with sidecar_over_fake(repo, server={"token": "monitor-secret"}) as running:
        yield Sidecar(
            upstream=running.client(direct=True),
            proxied=running.client(),
            fake=running.upstream,
            repository=repo,
            metrics=running.metrics,
            workers=EmbeddingWorkers(
                running.settings, repo, shared_tiny_encoders(), {}, running.metrics
            ),
        )


def ask(client: openai.OpenAI, content: Any, **options: Any) -> Any:
    return client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": content}], **options
    )


def streamed(client: openai.OpenAI, content: Any, **options: Any) -> dict[str, Any]:
    parts: list[str] = []
    finish: str | None = None
    usage: Any = None
    ids: set[str] = set()
    for chunk in ask(client, content, stream=True, **options):
        ids.add(chunk.id)
        if chunk.usage is not None:
            usage = chunk.usage.model_dump()
        for choice in chunk.choices:
            parts.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    (completion_id,) = ids
    return {"content": "".join(parts), "finish": finish, "usage": usage, "id": completion_id}


def embed_all(side: Sidecar, expected: int) -> None:
    wait_for(lambda: side.repository.inbox_depth() >= expected, what="the exchange sampled")
    while side.workers.run_once("w"):
        pass


def test_non_streamed_answers_are_identical_and_sampled(sidecar: Sidecar) -> None:
    direct = ask(sidecar.upstream, "What is in the picture?")
    proxied = ask(sidecar.proxied, "What is in the picture?")
    assert proxied.choices[0].message.content == direct.choices[0].message.content
    assert proxied.choices[0].finish_reason == direct.choices[0].finish_reason == "stop"
    assert proxied.usage == direct.usage and proxied.usage is not None
    assert proxied.model == direct.model

    short = ask(sidecar.proxied, "Cut me short", max_tokens=1)
    assert short.choices[0].finish_reason == "length"

    embed_all(sidecar, 2)
    sample = sidecar.repository.get_sample(proxied.id)  # sampled under the completion id
    assert sample is not None and sample.stream == "default" and not sample.has_image
    assert sample.response_sha256 == content_sha256(proxied.choices[0].message.content)
    assert sample.model == MODEL
    assert sidecar.repository.get_sample(direct.id) is None  # direct calls are not seen


def test_streamed_answers_are_identical_and_the_assembled_answer_sampled(
    sidecar: Sidecar,
) -> None:
    options = {"stream_options": {"include_usage": True}}
    direct = streamed(sidecar.upstream, "Describe the scene in a few words", **options)
    proxied = streamed(sidecar.proxied, "Describe the scene in a few words", **options)
    assert proxied["content"] == direct["content"] == "echo: Describe the scene in a few words"
    assert proxied["finish"] == direct["finish"] == "stop"
    assert proxied["usage"] == direct["usage"] and proxied["usage"] is not None

    embed_all(sidecar, 1)
    sample = sidecar.repository.get_sample(proxied["id"])
    assert sample is not None
    assert sample.response_sha256 == content_sha256(proxied["content"])


def test_image_parts_pass_through_and_the_image_is_sampled(sidecar: Sidecar) -> None:
    content = [
        {"type": "text", "text": "What colour is the square?"},
        {"type": "image_url", "image_url": {"url": png_data_url(3)}},
    ]
    direct = ask(sidecar.upstream, content)
    proxied = ask(sidecar.proxied, content)
    assert proxied.choices[0].message.content == direct.choices[0].message.content
    assert proxied.choices[0].message.content.endswith("[with an image]")
    streamed_answer = streamed(sidecar.proxied, content)
    assert streamed_answer["content"] == direct.choices[0].message.content

    embed_all(sidecar, 2)
    for completion_id in (proxied.id, streamed_answer["id"]):
        sample = sidecar.repository.get_sample(completion_id)
        assert sample is not None and sample.has_image and "image" in sample.kinds


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, openai.BadRequestError),
        (429, openai.RateLimitError),
        (500, openai.InternalServerError),
    ],
)
def test_upstream_errors_reach_the_client_unchanged(
    sidecar: Sidecar, status: int, error: type[openai.APIStatusError]
) -> None:
    for stream in (False, True):
        with pytest.raises(error) as direct:
            ask(sidecar.upstream, f"fail:{status}", stream=stream)
        with pytest.raises(error) as proxied:
            ask(sidecar.proxied, f"fail:{status}", stream=stream)
        assert proxied.value.status_code == direct.value.status_code == status
        assert proxied.value.body == direct.value.body
        assert proxied.value.code == f"fake_{status}"
    if status == 429:
        assert proxied.value.response.headers["retry-after"] == "0"
    assert sidecar.repository.inbox_depth() == 0  # errors are not sampled


def test_the_clients_own_key_goes_upstream_and_headers_come_back(sidecar: Sidecar) -> None:
    raw = sidecar.proxied.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "hello"}]
    )
    assert raw.status_code == 200
    assert raw.headers["x-upstream"] == "fake"
    assert sidecar.fake.seen_headers[-1]["authorization"] == f"Bearer {API_KEY}"
    assert "monitor-secret" not in str(sidecar.fake.seen_headers[-1])

    wrong = openai.OpenAI(base_url=str(sidecar.proxied.base_url), api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as refused:
        ask(wrong, "hello")
    assert refused.value.status_code == 401
    assert refused.value.code == "invalid_api_key"


def test_models_and_completions_pass_through_unsampled(sidecar: Sidecar) -> None:
    assert sidecar.proxied.models.list().model_dump() == sidecar.upstream.models.list().model_dump()
    direct = sidecar.upstream.completions.create(model=MODEL, prompt="once upon")
    proxied = sidecar.proxied.completions.create(model=MODEL, prompt="once upon")
    assert proxied.model_dump() == direct.model_dump()
    routes = {
        route: sidecar.metrics.registry.get_sample_value(
            "mllm_monitor_proxy_requests_total", {"route": route}
        )
        for route in ("models", "completions", "chat_completions")
    }
    assert routes == {"models": 1, "completions": 1, "chat_completions": 0}
    assert sidecar.repository.inbox_depth() == 0
    latency = sidecar.metrics.registry.get_sample_value(
        "mllm_monitor_proxy_added_latency_seconds_count"
    )
    assert latency == 2
