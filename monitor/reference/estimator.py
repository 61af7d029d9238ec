"""The CLUB estimator that belongs to a reference store: trained on its pairs, or imported.

Training uses the store's ID pairs (x, reference answer) and (x, model answer) together, so
one network estimates both I(x; y) and I(x; y_hat), as EMI needs. The file is written into
the store (``estimator.pt``) with the encoder fingerprints, and recorded in its manifest.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from monitor.errors import CheckpointError, ReferenceStoreError
from monitor.estimators.club import CLUB, EpochReport, load_club, save_club, train_club
from monitor.reference.store import ESTIMATOR, ReferenceStore, file_sha256, update_manifest


def train_store_estimator(
    store: ReferenceStore,
    *,
    hidden: int = 500,
    epochs: int = 200,
    batch_size: int = 256,
    lr: float = 1e-3,
    patience: int = 10,
    seed: int = 0,
    on_epoch: Callable[[EpochReport], None] | None = None,
) -> CLUB:
    if "reference" not in store.kinds:
        raise ReferenceStoreError(
            f"reference store {store.name!r} has no reference answers: CLUB trains on "
            "(x, reference) pairs; add `reference` to the manifest lines"
        )
    x = store.embeddings("query")
    with_reference = store.rows_of("reference")
    pairs_x = np.concatenate([x[with_reference], x])
    pairs_y = np.concatenate([store.embeddings("reference"), store.embeddings("response")])
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
    )
    _attach(store, model, source="trained")
    return model


def import_store_estimator(store: ReferenceStore, path: Path) -> CLUB:
    """Register an external CLUB state dict, checking its dims against the store's."""
    x_dim, y_dim = store.manifest["dims"]["query"], store.manifest["dims"]["response"]
    model = load_club(path)
    if (model.x_dim, model.y_dim) != (x_dim, y_dim):
        raise CheckpointError(
            f"{path} holds a CLUB for x_dim={model.x_dim}, y_dim={model.y_dim}, but store "
            f"{store.name!r} has query dim {x_dim} and answer dim {y_dim}",
            path=path,
        )
    _attach(store, model, source=f"imported from {path}")
    return model


def load_store_estimator(store: ReferenceStore) -> CLUB:
    if not store.manifest.get("estimator"):
        raise ReferenceStoreError(
            f"reference store {store.name!r} has no estimator: run `mllm-monitor estimator "
            "train` or `mllm-monitor estimator import`"
        )
    return load_club(
        store.path / ESTIMATOR,
        x_dim=store.manifest["dims"]["query"],
        y_dim=store.manifest["dims"]["response"],
    )


def _attach(store: ReferenceStore, model: CLUB, *, source: str) -> None:
    model.metadata.update(
        {"encoders": store.manifest["encoders"], "store": store.name, "source": source}
    )
    with tempfile.TemporaryDirectory(dir=store.path) as tmp:
        staged = Path(tmp) / ESTIMATOR
        save_club(model, staged)
        digest = file_sha256(staged)
        staged.replace(store.path / ESTIMATOR)
    update_manifest(
        store,
        files={ESTIMATOR: digest},
        estimator={
            "source": source,
            "x_dim": model.x_dim,
            "y_dim": model.y_dim,
            "hidden": model.hidden,
            "version": digest[:12],
            "attached_at": datetime.now(UTC).isoformat(),
        },
    )
