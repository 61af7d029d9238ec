"""The reference store: the in-distribution side of every comparison, on FAISS.

build_store(records, root=..., name=..., encoders=...) -> ReferenceStore
open_store(root, name, encoders) -> ReferenceStore   (what commands and the daemon use:
    checks the encoders' fingerprints and fusion, the manifest, and every file's checksum)
load_store(root, name, expect_fingerprints=...) -> ReferenceStore   (inspection, tests)
train_store_estimator / import_store_estimator / load_store_estimator
    (weights files: monitor.reference.checkpoint.load_club / save_club)
Calibration and the statistics of windows live in :mod:`monitor.detection`.
"""

from monitor.reference.build import BuildOptions, build_store
from monitor.reference.estimator import (
    held_out_pairs,
    import_store_estimator,
    load_store_estimator,
    train_store_estimator,
)
from monitor.reference.id_records import IDRecord, read_id_records
from monitor.reference.store import (
    STORE_KINDS,
    ReferenceStore,
    encoder_fingerprints,
    fingerprint_mismatches,
    load_store,
    open_store,
)

__all__ = [
    "STORE_KINDS",
    "BuildOptions",
    "IDRecord",
    "ReferenceStore",
    "build_store",
    "encoder_fingerprints",
    "fingerprint_mismatches",
    "held_out_pairs",
    "import_store_estimator",
    "load_store",
    "load_store_estimator",
    "open_store",
    "read_id_records",
    "train_store_estimator",
]
