"""Batching helpers: length-grouped micro-batches and a bounded content-hash cache.

Sorting texts by token length before batching cuts padding (a batch pads to its longest
member); a token budget per forward pass (:func:`token_budget_batches`) keeps each batch's
padded size near its real one, so short texts share a pass in large numbers and long ones in
small. The cache makes a repeated prompt or image cost one hash instead of one forward pass.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from monitor.files import sha256_hex

Rows = npt.NDArray[np.float32]


def length_grouped_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of at most ``batch_size``, each of similar lengths."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]


def token_budget_batches(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Indices in ascending length (ties in input order), cut into batches whose padded size,
    count x longest length, stays within ``max_tokens``; a longer text goes alone."""
    if max_tokens < 1:
        raise ValueError("max_tokens must be positive")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        # Ascending order: the newcomer is the batch's longest, so it sets the padded width.
        if current and (len(current) + 1) * lengths[i] > max_tokens:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def content_key(data: bytes | str) -> str:
    return sha256_hex(data)  # the package's one content hash


class EmbeddingCache:
    """A thread-safe LRU map from content hash to an embedding row; size 0 disables it."""

    def __init__(self, max_items: int) -> None:
        self.max_items = max_items
        self._rows: OrderedDict[str, Rows] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, key: str) -> Rows | None:
        with self._lock:
            row = self._rows.get(key)
            if row is None:
                self.misses += 1
                return None
            self._rows.move_to_end(key)
            self.hits += 1
            return row

    def put(self, key: str, row: Rows) -> None:
        if self.max_items == 0:
            return
        with self._lock:
            self._rows[key] = row
            self._rows.move_to_end(key)
            while len(self._rows) > self.max_items:
                self._rows.popitem(last=False)


def encode_with_cache(
    keys: Sequence[str], dim: int, cache: EmbeddingCache, compute: Callable[[list[int]], Rows]
) -> Rows:
    """Rows for every key: cached ones looked up, each distinct missing key computed once.

    ``compute`` gets the input positions to embed (one per distinct missing key) and returns
    their rows in that order.
    """
    out = np.empty((len(keys), dim), dtype=np.float32)
    first_position: dict[str, int] = {}
    waiting: dict[str, list[int]] = {}
    for position, key in enumerate(keys):
        if key in waiting:
            waiting[key].append(position)
            continue
        row = cache.get(key)
        if row is not None:
            out[position] = row
        else:
            first_position[key] = position
            waiting[key] = [position]
    if waiting:
        todo = list(waiting)
        rows = compute([first_position[key] for key in todo])
        for key, row in zip(todo, rows, strict=True):
            out[waiting[key]] = row
            cache.put(key, row.copy())
    return out
