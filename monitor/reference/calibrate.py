"""Null calibration of a reference store: what pure ID windows of each size look like.

Thin glue: read the store's embeddings, run :func:`~monitor.reference.window_stats.
calibrate_arrays` (the pure part: comparison / pool split, nulls per term and count, the
rules for sizes and trials), record the store's OOD flag rate, and write ``calibration.json``
into the store. Live windows read these nulls through :func:`~monitor.reference.assess.
assess_window`, computing their values with the same :class:`WindowStatistics`.

The window-vs-comparison JSDs use the ``balanced`` mode by default (why: the docstring of
:mod:`monitor.estimators.rjsd`); the mode is recorded so live windows use the same one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from monitor.estimators.calibration import MAX_POOL_FRACTION
from monitor.estimators.rjsd import DEFAULT_JSD_MODE, JSDMode
from monitor.reference.assess import bound_null, null_for
from monitor.reference.store import CALIBRATION, ReferenceStore, write_store_json
from monitor.reference.window_stats import DEFAULT_WINDOW_SIZES, calibrate_arrays, store_arrays

__all__ = ["DEFAULT_WINDOW_SIZES", "bound_null", "calibrate_store", "null_for"]


def calibrate_store(
    store: ReferenceStore,
    *,
    window_sizes: Sequence[int] | None = None,
    trials: int | None = None,
    comparison_fraction: float = 0.5,
    seed: int = 0,
    mode: JSDMode = DEFAULT_JSD_MODE,
    false_alarm_rate: float = 0.01,
    hysteresis: tuple[int, int] = (2, 3),
    max_pool_fraction: float = MAX_POOL_FRACTION,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Calibrate ``store`` and write its ``calibration.json``; see ``calibrate_arrays``."""
    data = calibrate_arrays(
        store_arrays(store),
        window_sizes=window_sizes,
        trials=trials,
        comparison_fraction=comparison_fraction,
        seed=seed,
        mode=mode,
        false_alarm_rate=false_alarm_rate,
        hysteresis=hysteresis,
        max_pool_fraction=max_pool_fraction,
        progress=progress,
    )
    tpr = store.ood.get("tpr")
    data["ood_flag_rate"] = 1.0 - float(tpr) if tpr is not None else None
    data["created_at"] = datetime.now(UTC).isoformat()
    write_store_json(store, CALIBRATION, data, calibrated=True)
    return data
