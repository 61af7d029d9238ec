"""The registry of built reference sets and estimator artifacts (metadata; files live on disk)."""

from __future__ import annotations

from sqlalchemy import select

from monitor.store._base import Database
from monitor.store.models import EstimatorArtifact, ReferenceSet
from monitor.store.types import EstimatorInfo, ReferenceSetInfo, as_utc


class Artifacts:
    """The registry of built reference sets and estimator artifacts (metadata; files live on
    disk)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def register_reference_set(self, info: ReferenceSetInfo) -> int:
        """Record a built reference store; registering the same (name, checksum) again
        updates it in place. Returns its id."""
        values = {
            "name": info.name,
            "path": info.path,
            "encoder_fingerprint": info.encoder_fingerprint,
            "checksum": info.checksum,
            "n_samples": info.n_samples,
            "n_images": info.n_images,
            "n_references": info.n_references,
            "built_at": as_utc(info.built_at),
            "registered_at": self._db.now(),
            "details": dict(info.details),
        }
        changed = {k: v for k, v in values.items() if k not in ("name", "checksum")}
        with self._db.write("registering a reference set") as conn:
            return int(
                conn.execute(
                    self._db.insert(ReferenceSet)
                    .values(**values)
                    .on_conflict_do_update(index_elements=["name", "checksum"], set_=changed)
                    .returning(ReferenceSet.id)
                ).scalar_one()
            )

    def get_reference_set(self, name: str) -> ReferenceSetInfo | None:
        """The most recently built reference set of that name."""
        with self._db.read("reading a reference set") as conn:
            row = conn.execute(
                select(ReferenceSet.__table__)
                .where(ReferenceSet.name == name)
                .order_by(ReferenceSet.built_at.desc(), ReferenceSet.id.desc())
                .limit(1)
            ).first()
            if row is None:
                return None
            return ReferenceSetInfo(
                name=row.name,
                path=row.path,
                encoder_fingerprint=row.encoder_fingerprint,
                checksum=row.checksum,
                n_samples=row.n_samples,
                n_images=row.n_images,
                n_references=row.n_references,
                built_at=as_utc(row.built_at),
                details=dict(row.details),
                id=row.id,
                registered_at=as_utc(row.registered_at),
            )

    def register_estimator(self, info: EstimatorInfo) -> int:
        """Record an estimator artifact; the same (name, version) updates it. Returns its id."""
        values = {
            "name": info.name,
            "version": info.version,
            "kind": info.kind,
            "reference_set_id": info.reference_set_id,
            "path": info.path,
            "checksum": info.checksum,
            "trained_at": as_utc(info.trained_at),
            "registered_at": self._db.now(),
            "details": dict(info.details),
        }
        changed = {k: v for k, v in values.items() if k not in ("name", "version")}
        with self._db.write("registering an estimator") as conn:
            return int(
                conn.execute(
                    self._db.insert(EstimatorArtifact)
                    .values(**values)
                    .on_conflict_do_update(index_elements=["name", "version"], set_=changed)
                    .returning(EstimatorArtifact.id)
                ).scalar_one()
            )

    def get_estimator(self, name: str, version: str | None = None) -> EstimatorInfo | None:
        """That version of the estimator, or its most recently trained one."""
        with self._db.read("reading an estimator") as conn:
            stmt = select(EstimatorArtifact.__table__).where(EstimatorArtifact.name == name)
            if version is not None:
                stmt = stmt.where(EstimatorArtifact.version == version)
            row = conn.execute(
                stmt.order_by(
                    EstimatorArtifact.trained_at.desc(), EstimatorArtifact.id.desc()
                ).limit(1)
            ).first()
            if row is None:
                return None
            return EstimatorInfo(
                name=row.name,
                version=row.version,
                kind=row.kind,
                path=row.path,
                checksum=row.checksum,
                trained_at=as_utc(row.trained_at),
                reference_set_id=row.reference_set_id,
                details=dict(row.details),
                id=row.id,
                registered_at=as_utc(row.registered_at),
            )
