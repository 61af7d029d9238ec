"""kNN OOD scores of live records: each record's query row x against its stream's reference
store.

    OodScorer(settings, stores)
        .scores(records, queries)   one score per record, None where its stream has no store

``stores`` maps stream names (or reference-store names, as ``[[streams]] reference`` names
them) to loaded reference stores; a stream without one, or whose store holds no ``query`` rows,
gets no score. Pure: the stores are in memory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from monitor.config import Settings
from monitor.records import TrafficRecord
from monitor.reference.store import ReferenceStore


class OodScorer:
    """The reference store of each stream, and the kNN OOD score of records against it."""

    def __init__(self, settings: Settings, stores: Mapping[str, ReferenceStore]) -> None:
        self._stores = _stores_by_stream(settings, stores)

    def scores(self, records: Sequence[TrafficRecord], queries: np.ndarray) -> list[float | None]:
        """The kNN OOD score of each record's x (``queries``, one row per record, in order)."""
        scores: list[float | None] = [None] * len(records)
        by_stream: dict[str, list[int]] = {}
        for i, record in enumerate(records):
            by_stream.setdefault(record.stream, []).append(i)
        for stream, positions in by_stream.items():
            store = self._stores.get(stream)
            if store is None or "query" not in store.kinds:
                continue
            for position, score in zip(
                positions, store.knn_scores(queries[positions]), strict=True
            ):
                scores[position] = float(score)
        return scores


def _stores_by_stream(
    settings: Settings, stores: Mapping[str, ReferenceStore]
) -> dict[str, ReferenceStore]:
    """Stores keyed by stream, whether given by stream name or by reference-store name."""
    found: dict[str, ReferenceStore] = {}
    for stream in settings.streams:
        store = stores.get(stream.name) or stores.get(stream.reference)
        if store is not None:
            found[stream.name] = store
    return found


__all__ = ["OodScorer"]
