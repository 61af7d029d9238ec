"""The reference store: the in-distribution side of every comparison, on FAISS.

build_store(records, root=..., name=..., encoders=...) -> ReferenceStore
open_store(root, name, encoders) -> ReferenceStore   (what commands and the daemon use:
    checks the encoders' fingerprints and fusion, the manifest, and every file's checksum)
load_store(root, name, expect_fingerprints=...) -> ReferenceStore   (inspection, tests)
train_store_estimator / import_store_estimator / load_store_estimator
    (weights files: monitor.reference.checkpoint.load_club / save_club)
calibrate_store(store, window_sizes=..., trials=...) and null_for(calibration, term, n)
WindowStatistics (every term of a window, live and in calibration) and assess_window
"""

from monitor.reference.assess import WindowAssessment, assess_window, bound_null, null_for
from monitor.reference.build import BuildOptions, build_store
from monitor.reference.calibrate import calibrate_store
from monitor.reference.estimator import (
    held_out_pairs,
    import_store_estimator,
    load_store_estimator,
    train_store_estimator,
)
from monitor.reference.manifest import ManifestRecord, read_manifest
from monitor.reference.store import (
    KINDS,
    ReferenceStore,
    encoder_fingerprints,
    fingerprint_mismatches,
    load_store,
    open_store,
)
from monitor.reference.window_stats import (
    TESTED_TERMS,
    IDArrays,
    WindowStatistics,
    calibrate_arrays,
)

__all__ = [
    "KINDS",
    "TESTED_TERMS",
    "BuildOptions",
    "IDArrays",
    "ManifestRecord",
    "ReferenceStore",
    "WindowAssessment",
    "WindowStatistics",
    "assess_window",
    "bound_null",
    "build_store",
    "calibrate_arrays",
    "calibrate_store",
    "encoder_fingerprints",
    "fingerprint_mismatches",
    "held_out_pairs",
    "import_store_estimator",
    "load_store",
    "load_store_estimator",
    "null_for",
    "open_store",
    "read_manifest",
    "train_store_estimator",
]
