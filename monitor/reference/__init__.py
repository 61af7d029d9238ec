"""The reference store: the in-distribution side of every comparison, on FAISS.

build_store(records, root=..., name=..., encoders=...) -> ReferenceStore
load_store(root, name, expect_fingerprints=...) -> ReferenceStore
train_store_estimator / import_store_estimator / load_store_estimator
calibrate_store(store, window_sizes=..., trials=...) and null_for(calibration, term, n)
"""

from monitor.reference.build import BuildOptions, build_store
from monitor.reference.calibrate import bound_key, calibrate_store, null_for
from monitor.reference.estimator import (
    import_store_estimator,
    load_store_estimator,
    train_store_estimator,
)
from monitor.reference.manifest import ManifestRecord, read_manifest
from monitor.reference.store import KINDS, ReferenceStore, load_store

__all__ = [
    "KINDS",
    "BuildOptions",
    "ManifestRecord",
    "ReferenceStore",
    "bound_key",
    "build_store",
    "calibrate_store",
    "import_store_estimator",
    "load_store",
    "load_store_estimator",
    "null_for",
    "read_manifest",
    "train_store_estimator",
]
