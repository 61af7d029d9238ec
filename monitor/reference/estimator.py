"""The CLUB estimator that belongs to a reference store: trained on its pairs, or imported.

Where this departs from the paper (which fits CLUB once on (x, y) pairs of its own data):

* One network is trained on the store's (x, reference answer) and (x, model answer) pairs
  together, so it estimates both I(x; y) and I(x; y_hat), as EMI needs.
* Early stopping holds out whole records (both pairs of a record on the same side; the bare
  :func:`~monitor.estimators.club.train_club` would split per pair).
* A seeded ``id_holdout_fraction`` of the records with a reference is never trained on (nor
  early-stopped on): EMI(ID) computed on those positions (``store.estimator_holdout``) is
  out of sample. Without it EMI(ID) would be evaluated on the training data, including the
  calibration comparison set, and be biased towards the fit. An imported estimator was
  trained elsewhere: every record with a reference counts as held out (we cannot know more).

The weights file is written into the store (``estimator.pt``) with the encoder fingerprints,
and recorded in its manifest with its sha256; it is verified again each time it is loaded.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from monitor.errors import CheckpointError, ReferenceStoreError
from monitor.estimators.club import CLUB, EpochReport, train_club
from monitor.files import file_sha256
from monitor.protocols import StoreView
from monitor.reference.checkpoint import load_club, load_club_bytes, save_club
from monitor.reference.store import ESTIMATOR, ReferenceStore, read_verified, update_manifest

DEFAULT_ID_HOLDOUT = 0.2


def train_store_estimator(
    store: ReferenceStore,
    *,
    hidden: int = 500,
    epochs: int = 200,
    batch_size: int = 256,
    lr: float = 1e-3,
    patience: int = 10,
    seed: int = 0,
    id_holdout_fraction: float = DEFAULT_ID_HOLDOUT,
    on_epoch: Callable[[EpochReport], None] | None = None,
) -> CLUB:
    """Train CLUB on the store's ID pairs, except a held-out fraction of records (EMI(ID))."""
    if "reference" not in store.kinds:
        raise ReferenceStoreError(
            f"reference store {store.name!r} has no reference answers: CLUB trains on "
            "(x, reference) pairs; add `reference` to the manifest lines"
        )
    if not 0.0 <= id_holdout_fraction < 1.0:
        raise ReferenceStoreError(
            f"id_holdout_fraction must lie in [0, 1), got {id_holdout_fraction}"
        )
    with_reference = store.rows_of("reference")
    held = held_out_records(with_reference, id_holdout_fraction, seed)
    train = np.ones(len(store.ids), dtype=bool)
    train[held] = False
    x = store.embeddings("query")
    reference_rows = train[with_reference]
    pairs_x = np.concatenate([x[with_reference][reference_rows], x[train]])
    pairs_y = np.concatenate(
        [store.embeddings("reference")[reference_rows], store.embeddings("response")[train]]
    )
    groups = np.concatenate([with_reference[reference_rows], np.flatnonzero(train)])
    model = train_club(
        pairs_x,
        pairs_y,
        hidden=hidden,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        patience=patience,
        seed=seed,
        on_epoch=on_epoch,
        groups=groups,
    )
    _attach(
        store,
        model,
        source="trained",
        id_holdout=held,
        notes={"id_holdout_fraction": id_holdout_fraction},
    )
    return model


def held_out_records(candidates: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A seeded ``fraction`` of the ``candidates`` record positions, sorted."""
    count = round(len(candidates) * fraction)
    chosen = np.random.default_rng(seed).permutation(np.asarray(candidates))[:count]
    held: np.ndarray = np.sort(chosen).astype(np.intp)
    return held


def held_out_pairs(store: StoreView) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, model answer, reference) rows of the records the store's CLUB was not trained on:
    what EMI(ID) is computed from, out of sample. Raises when there are fewer than 2 (a store
    trained with ``id_holdout_fraction=0``, or without references)."""
    held = store.estimator_holdout
    if "reference" not in store.kinds or len(held) < 2:
        raise ReferenceStoreError(
            f"reference store {store.name!r} has {len(held)} held-out ID records with a "
            "reference: EMI(ID) needs at least 2; retrain with `mllm-monitor estimator train`"
        )
    reference_rows = np.full(len(store.ids), -1, dtype=np.intp)
    reference_rows[store.rows_of("reference")] = np.arange(len(store.rows_of("reference")))
    if (reference_rows[held] < 0).any():
        raise ReferenceStoreError(
            f"reference store {store.name!r}: held-out records without a reference"
        )
    x = store.embeddings("query")[held]
    y_hat = store.embeddings("response")[held]
    y = store.embeddings("reference")[reference_rows[held]]
    return x, y_hat, y


def import_store_estimator(store: ReferenceStore, path: Path) -> CLUB:
    """Register an external CLUB weights file, checking its dims and recorded encoders."""
    x_dim, y_dim = store.manifest["dims"]["query"], store.manifest["dims"]["response"]
    model = load_club(path)
    if (model.x_dim, model.y_dim) != (x_dim, y_dim):
        raise CheckpointError(
            f"{path} holds a CLUB for x_dim={model.x_dim}, y_dim={model.y_dim}, but store "
            f"{store.name!r} has query dim {x_dim} and answer dim {y_dim}",
            path=path,
        )
    recorded = model.metadata.get("encoders")
    built = store.manifest["encoders"]
    if recorded is not None and recorded != built:
        raise CheckpointError(
            f"{path} was trained on embeddings of encoders {recorded!r}, but store "
            f"{store.name!r} was built with {built!r}; train an estimator for this store "
            "with `mllm-monitor estimator train`",
            path=path,
        )
    with_reference: np.ndarray = (
        store.rows_of("reference") if "reference" in store.kinds else np.empty(0, np.intp)
    )
    source = f"imported from {path}" + ("" if recorded else " (encoders not recorded)")
    _attach(store, model, source=source, id_holdout=with_reference)
    return model


def load_store_estimator(store: StoreView) -> CLUB:
    """The store's CLUB, its file verified against the manifest's sha256 as it is read."""
    if not store.manifest.get("estimator"):
        raise ReferenceStoreError(
            f"reference store {store.name!r} has no estimator: run `mllm-monitor estimator "
            "train` or `mllm-monitor estimator import`"
        )
    path = store.path / ESTIMATOR
    data = read_verified(path, store.manifest["files"].get(ESTIMATOR))
    return load_club_bytes(
        data,
        source=path,
        x_dim=store.manifest["dims"]["query"],
        y_dim=store.manifest["dims"]["response"],
    )


def _attach(
    store: ReferenceStore,
    model: CLUB,
    *,
    source: str,
    id_holdout: np.ndarray,
    notes: dict[str, Any] | None = None,
) -> None:
    model.metadata.update(
        {"encoders": store.manifest["encoders"], "store": store.name, "source": source}
    )
    with tempfile.TemporaryDirectory(prefix=".estimator-", dir=store.path) as tmp:
        staged = Path(tmp) / ESTIMATOR
        save_club(model, staged)
        digest = file_sha256(staged)
        update_manifest(
            store,
            staged={ESTIMATOR: staged},
            estimator={
                "source": source,
                "x_dim": model.x_dim,
                "y_dim": model.y_dim,
                "hidden": model.hidden,
                "version": digest[:12],
                "attached_at": datetime.now(UTC).isoformat(),
                "id_holdout": [int(p) for p in id_holdout],
                **(notes or {}),
            },
        )
