"""read_window assembles a window's rows from repository chunks: every kind in sample order,
zero rows where a sample lacks the kind, a seeded subset beyond max_samples, and samples that
arrive after the count are not lost."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from monitor.pipeline import read_window, window_seed
from monitor.records import EMBEDDING_KINDS, WindowKey
from monitor.store.types import EmbeddingChunk

KEY = WindowKey("s", datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, 1, tzinfo=UTC))
DIM = 6
Sample = dict[str, np.ndarray]


class ChunkedSamples:
    """The two read methods of the repository over samples held in memory, in chunks."""

    def __init__(
        self,
        samples: Sequence[Sample],
        chunk_size: int,
        counted: int,
        scores: Sequence[float] | None = None,
    ) -> None:
        self.samples, self.chunk_size, self.counted = samples, chunk_size, counted
        self.scores = np.full(len(samples), 0.5) if scores is None else np.asarray(scores)

    def count_samples(self, stream: str, start: datetime, end: datetime) -> int:
        return self.counted

    def iter_embeddings(
        self,
        stream: str,
        start: datetime,
        end: datetime,
        *,
        kinds: Sequence[str] = EMBEDDING_KINDS,
        chunk_size: int = 0,  # the repository's batching: here fixed by the constructor
    ) -> Iterator[EmbeddingChunk]:
        for s in range(0, len(self.samples), self.chunk_size):
            part = self.samples[s : s + self.chunk_size]
            vectors, index = {}, {}
            for kind in kinds:
                at = [i for i, sample in enumerate(part) if kind in sample]
                index[kind] = np.asarray(at, dtype=np.int64)
                vectors[kind] = (
                    np.stack([part[i][kind] for i in at]).astype(np.float32)
                    if at
                    else np.zeros((0, 0), dtype=np.float32)
                )
            yield EmbeddingChunk(
                sample_ids=[f"id-{s + i}" for i in range(len(part))],
                event_times=[KEY.start + timedelta(seconds=s + i) for i in range(len(part))],
                ood_scores=self.scores[s : s + self.chunk_size],
                sampling_weights=np.ones(len(part)),
                vectors=vectors,
                index=index,
            )


def _samples(n: int) -> list[Sample]:
    rng = np.random.default_rng(4)
    samples = []
    for i in range(n):
        sample = {"prompt": rng.standard_normal(DIM), "response": rng.standard_normal(DIM)}
        if i >= 4 and i % 2 == 0:  # no image in the first chunk at all
            sample["image"] = rng.standard_normal(DIM)
        if i % 3 != 1:
            sample["reference"] = rng.standard_normal(DIM)
        samples.append(sample)
    return samples


def _expected(samples: list[Sample], chosen: np.ndarray, kind: str) -> tuple[np.ndarray, ...]:
    rows = np.zeros((len(chosen), DIM), dtype=np.float32)
    present = np.zeros(len(chosen), dtype=bool)
    for j, i in enumerate(chosen):
        if kind in samples[i]:
            v = samples[i][kind].astype(np.float32)
            rows[j], present[j] = v / np.linalg.norm(v), True
    return rows, present


@pytest.mark.parametrize(
    ("n", "counted", "max_samples"),
    [(11, 11, 100), (11, 11, 5), (11, 6, 100)],  # all; a seeded subset; more than counted
)
def test_rows_of_every_kind_in_sample_order(n: int, counted: int, max_samples: int) -> None:
    samples = _samples(n)
    data = read_window(
        ChunkedSamples(samples, chunk_size=3, counted=counted),
        KEY,
        max_samples=max_samples,
        ood_threshold=1.0,
    )
    assert data is not None and data.n == n
    chosen = np.arange(n)
    if counted > max_samples:
        rng = np.random.default_rng(window_seed(KEY))
        chosen = np.sort(rng.choice(counted, size=max_samples, replace=False))
    for kind in EMBEDDING_KINDS:
        rows, present = _expected(samples, chosen, kind)
        got = data.rows[kind]
        assert got is not None and got.dtype == np.float32
        np.testing.assert_allclose(got, rows, rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(data.present[kind], present)


def test_samples_after_the_count_without_a_kind_keep_rows_and_masks_aligned() -> None:
    """Images only in the counted samples; more arrive, text only: every kind still has one
    row per sample (zeros where absent)."""
    rng = np.random.default_rng(8)
    samples: list[Sample] = [
        {"prompt": rng.standard_normal(DIM), "image": rng.standard_normal(DIM)} for _ in range(8)
    ] + [{"prompt": rng.standard_normal(DIM)} for _ in range(4)]
    data = read_window(
        ChunkedSamples(samples, chunk_size=4, counted=8), KEY, max_samples=100, ood_threshold=1.0
    )
    assert data is not None and data.n == 12
    for kind in ("prompt", "image"):
        rows, present = _expected(samples, np.arange(12), kind)
        got = data.rows[kind]
        assert got is not None and len(got) == len(data.present[kind]) == 12
        np.testing.assert_allclose(got, rows, rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(data.present[kind], present)
    assert data.count("image") == 8 and len(data.of("image")) == 8  # type: ignore[arg-type]


def test_ood_flags_are_scores_strictly_above_the_threshold_among_scored_samples() -> None:
    """A score equal to the threshold is not flagged (the threshold is an ID score: at least TPR
    of ID scores lie at or below it); samples without a score (NaN) count for neither side."""
    scores = [0.2, 1.0, 1.5, float("nan"), 0.9, float("nan"), 1.0000001]
    samples = _samples(len(scores))
    data = read_window(
        ChunkedSamples(samples, chunk_size=3, counted=len(scores), scores=scores),
        KEY,
        max_samples=100,
        ood_threshold=1.0,
    )
    assert data is not None
    assert (data.ood_flagged, data.ood_scored) == (2, 5)
    assert data.ood_fraction == pytest.approx(2 / 5)
