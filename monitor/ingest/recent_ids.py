"""Completion ids the sidecar has seen recently: a reused one gets an id of the sidecar's own.

    RecentIds(size).unique(completion_id)   the id itself while new, else ``<id>~<8 hex>``
    RecentIds(size).own(completion_id)      always ``<id>~<8 hex>`` (remembered)

Shared by the full sidecar's sampler and the relay's, so that an upstream that reuses ids
(``chatcmpl-CONSTANT``) never merges two exchanges into one sample.
"""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict


class RecentIds:
    """A bounded memory of completion ids: a new one is used as it is, a repeated one gets a
    random suffix (thread-safe: sampling threads call it)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def unique(self, completion_id: str) -> str:
        with self._lock:
            if completion_id not in self._seen:
                self._remember(completion_id)
                return completion_id
        return self.own(completion_id)

    def own(self, completion_id: str) -> str:
        """An id of the sidecar's own for an exchange whose completion id is taken."""
        own = f"{completion_id}~{secrets.token_hex(4)}"
        with self._lock:
            self._remember(own)
        return own

    def _remember(self, key: str) -> None:
        self._seen[key] = None
        if len(self._seen) > self._size:
            self._seen.popitem(last=False)


__all__ = ["RecentIds"]
