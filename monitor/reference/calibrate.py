"""Null calibration of a reference store: what pure ID windows of each size look like.

The store's records are split once into a comparison set and a disjoint pool (DESIGN section
4). For each window-size bucket, pseudo-windows drawn from the pool go through the same
statistics a live window does: the JSD terms against the comparison set, and the
scale-adjusted bound, once per combination of available terms (with or without images,
with or without live references). Live windows are later compared with the same comparison
set, and their p-values and thresholds read from these nulls.

The window-vs-comparison JSDs use the ``balanced`` mode by default: the comparison set is far
larger than a window, and the paper's raw-covariance mixture would then be almost the
comparison set alone, measuring an entropy difference more than a shift (a shifted window of
40 against 1,500 ID records was not significant in paper mode, p = 0.10, and is in balanced
mode). The mode is recorded so live windows use the same one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np

from monitor.errors import CalibrationError
from monitor.estimators.calibration import NullDistribution, null_distributions, split_reference
from monitor.estimators.emi import emid_upper_bound
from monitor.estimators.rjsd import JSDMode, ReferenceJSD, representation_jsd
from monitor.reference.store import (
    CALIBRATION,
    ReferenceStore,
    file_sha256,
    update_manifest,
    write_json_atomic,
)

DEFAULT_WINDOW_SIZES = (50, 100, 200, 500)


def bound_key(*, visual: bool, live_references: bool) -> str:
    """Name of the bound's null for a window with these terms available."""
    return (
        f"bound[{'visual' if visual else 'no_visual'},{'live' if live_references else 'no_live'}]"
    )


def calibrate_store(
    store: ReferenceStore,
    *,
    window_sizes: Sequence[int] = DEFAULT_WINDOW_SIZES,
    trials: int = 200,
    comparison_fraction: float = 0.5,
    seed: int = 0,
    mode: JSDMode = "balanced",
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    n = len(store.ids)
    comparison, pool = split_reference(n, max(1, round(n * comparison_fraction)), seed=seed)
    usable = [w for w in sorted(set(window_sizes)) if 2 <= w <= len(pool)]
    if not usable:
        raise CalibrationError(
            f"store {store.name!r} has {n} records: a pool of {len(pool)} cannot hold windows of "
            f"sizes {list(window_sizes)}; add ID records or calibrate smaller windows"
        )
    by_record = {kind: _by_record(store, kind) for kind in store.kinds}
    has_image, has_reference = store.has_image, store.has_reference
    comparison_rows = {"image": comparison[has_image[comparison]], "prompt": comparison}
    refs = {
        kind: ReferenceJSD(by_record[kind][rows], mode=mode)
        for kind, rows in comparison_rows.items()
        if kind in by_record and rows.size
    }
    out_id = None
    if "reference" in by_record:
        both = comparison[has_reference[comparison]]
        out_id = representation_jsd(by_record["response"][both], by_record["reference"][both])

    def statistics(idx: np.ndarray) -> dict[str, float | None]:
        window = pool[idx]
        values: dict[str, float | None] = {"visual": None, "text": None, "output_live": None}
        images = window[has_image[window]]
        if "image" in refs and len(images) >= 2:
            values["visual"] = refs["image"](by_record["image"][images])
        values["text"] = refs["prompt"](by_record["prompt"][window])
        answered = window[has_reference[window]]
        if "reference" in by_record and len(answered) >= 2:
            values["output_live"] = representation_jsd(
                by_record["response"][answered], by_record["reference"][answered]
            )
        for visual in (True, False):
            for live in (True, False):
                bound = emid_upper_bound(
                    values["visual"] if visual else None,
                    values["text"],
                    out_id,
                    values["output_live"] if live else None,
                )
                complete = (not visual or values["visual"] is not None) and (
                    not live or values["output_live"] is not None
                )
                values[bound_key(visual=visual, live_references=live)] = (
                    bound.value if complete else None
                )
        return values

    buckets: dict[str, dict[str, Any]] = {}
    for step, size in enumerate(usable):
        nulls = null_distributions(
            statistics, pool_size=len(pool), window_size=size, trials=trials, seed=seed + size
        )
        buckets[str(size)] = {name: null.to_dict() for name, null in nulls.items()}
        if progress:
            progress(step + 1, len(usable))
    data = {
        "seed": seed,
        "trials": trials,
        "window_sizes": usable,
        "jsd_mode": mode,
        "comparison": comparison.tolist(),
        "output_id": out_id,
        "nulls": buckets,
        "created_at": datetime.now(UTC).isoformat(),
    }
    path = store.path / CALIBRATION
    write_json_atomic(path, data)
    update_manifest(store, files={CALIBRATION: file_sha256(path)}, calibrated=True)
    return data


def null_for(calibration: dict[str, Any], statistic: str, n: int) -> NullDistribution | None:
    """The null of ``statistic`` for a window of n records: the largest bucket <= n (the
    conservative choice, since small windows have larger JSDs), or the smallest bucket."""
    sizes = sorted(int(s) for s in calibration["nulls"])
    fitting = [s for s in sizes if s <= n]
    bucket = str(fitting[-1] if fitting else sizes[0])
    data = calibration["nulls"][bucket].get(statistic)
    return NullDistribution.from_dict(data) if data else None


def _by_record(store: ReferenceStore, kind: str) -> np.ndarray:
    """Rows of ``kind`` indexed by record position (zeros where a record has none)."""
    rows: np.ndarray = store.embeddings(kind)
    positions = store.rows_of(kind)
    if len(positions) == len(store.ids):
        return rows
    full = np.zeros((len(store.ids), rows.shape[1]), dtype=np.float32)
    full[positions] = rows
    return full
