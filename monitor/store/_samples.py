"""Samples, their embeddings, late references and raw-content retention."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import chain
from typing import Any

import numpy as np
from sqlalchemy import ColumnElement, Dialect, Row, and_, delete, func, select, update

from monitor.errors import EmbeddingError, StorageError
from monitor.records import EMBEDDING_KINDS
from monitor.store._base import ID_BATCH, Database, Streams, batched
from monitor.store._inbox import Inbox
from monitor.store.models import (
    Embedding,
    InboxItem,
    LateReference,
    RawContent,
    Sample,
    Stream,
)
from monitor.store.types import (
    EmbeddingChunk,
    LateReferenceEntry,
    NewSample,
    PurgeCounts,
    StoredSample,
    WindowLocation,
    as_utc,
    content_sha256,
)
from monitor.store.types import RawContent as RawContentData

# float16, little-endian: 2 bytes a value, whatever the machine.
BLOB_DTYPE = np.dtype("<f2")


def encode_vector(vector: np.ndarray, *, field_name: str = "embedding") -> tuple[int, bytes]:
    """(dim, float16 little-endian bytes) of a 1-d finite vector."""
    array = np.asarray(vector)
    if array.ndim != 1 or array.shape[0] == 0:
        raise EmbeddingError(
            f"{field_name}: expected a non-empty 1-d vector, got shape {array.shape}",
            field=field_name,
        )
    with np.errstate(over="ignore"):  # overflow shows up as inf, refused just below
        half = array.astype(BLOB_DTYPE)
    if not np.isfinite(half).all():
        raise EmbeddingError(f"{field_name}: NaN or infinite values", field=field_name)
    return int(array.shape[0]), half.tobytes()


def decode_vectors(blobs: Sequence[bytes], dim: int) -> np.ndarray:
    """Stacked float32 rows from float16 blobs of one dimension."""
    flat = np.frombuffer(b"".join(blobs), dtype=BLOB_DTYPE)
    if flat.size != len(blobs) * dim:
        raise StorageError(f"stored embeddings do not match their dimension {dim}")
    return flat.reshape(len(blobs), dim).astype(np.float32)


@dataclass
class _ChunkBuilder:
    kinds: tuple[str, ...]
    ids: list[str] = field(default_factory=list)
    times: list[datetime] = field(default_factory=list)
    ood: list[float] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    rows: dict[str, list[int]] = field(default_factory=dict)
    blobs: dict[str, list[bytes]] = field(default_factory=dict)
    dims: dict[str, int] = field(default_factory=dict)

    def add_sample(self, sample_id: str, event_time: datetime, ood: Any, weight: float) -> None:
        self.ids.append(sample_id)
        self.times.append(as_utc(event_time))
        self.ood.append(np.nan if ood is None else ood)
        self.weights.append(weight)

    def add_vector(self, kind: str, dim: int, blob: bytes) -> None:
        known = self.dims.setdefault(kind, dim)
        if known != dim:
            raise StorageError(f"{kind} embeddings of different dimensions ({known}, {dim})")
        self.rows.setdefault(kind, []).append(len(self.ids) - 1)
        self.blobs.setdefault(kind, []).append(blob)

    def build(self) -> EmbeddingChunk:
        vectors: dict[str, np.ndarray] = {}
        index: dict[str, np.ndarray] = {}
        for kind in self.kinds:
            if kind in self.blobs:
                vectors[kind] = decode_vectors(self.blobs[kind], self.dims[kind])
                index[kind] = np.asarray(self.rows[kind], dtype=np.int64)
            else:
                vectors[kind] = np.zeros((0, 0), dtype=np.float32)
                index[kind] = np.zeros(0, dtype=np.int64)
        return EmbeddingChunk(
            sample_ids=self.ids,
            event_times=self.times,
            ood_scores=np.asarray(self.ood, dtype=np.float64),
            sampling_weights=np.asarray(self.weights, dtype=np.float64),
            vectors=vectors,
            index=index,
        )


class Samples:
    """The samples part of the repository: embedded records, late references, raw content.

    Raw content is kept only with ``store_raw`` on, for ``raw_ttl``."""

    def __init__(
        self,
        db: Database,
        streams: Streams,
        inbox: Inbox,
        *,
        store_raw: bool = False,
        raw_ttl: timedelta = timedelta(days=7),
    ) -> None:
        self._db = db
        self._streams = streams
        self._inbox = inbox
        self._store_raw = store_raw
        self._raw_ttl = raw_ttl

    def add_samples(
        self,
        samples: Sequence[NewSample],
        *,
        ack: Sequence[int] = (),
        worker_id: str | None = None,
    ) -> int:
        """Store samples with their embeddings (and, in the same transaction, ack inbox items).

        Idempotent per sample id: a sample already stored is left as it is, so a record
        embedded twice (a lease that ran out mid-batch) is stored once. Raw content is written
        only with raw retention on. Returns how many inbox items were acknowledged.
        """
        if ack and worker_id is None:
            raise ValueError("acknowledging inbox items needs the worker_id that claimed them")
        streams = {name: self._streams.ensure(name) for name in {s.stream for s in samples}}
        now = self._db.now()
        sample_rows: list[dict[str, Any]] = []
        vector_rows: list[dict[str, Any]] = []
        raw_rows: list[dict[str, Any]] = []
        for sample in samples:
            sample_rows.append(_sample_row(sample, streams[sample.stream], now))
            for kind, vector in sample.embeddings.items():
                if kind not in EMBEDDING_KINDS:
                    raise EmbeddingError(
                        f"unknown embedding kind {kind!r} (known: {', '.join(EMBEDDING_KINDS)})",
                        field=kind,
                    )
                dim, blob = encode_vector(vector, field_name=f"{sample.id}.{kind}")
                vector_rows.append(
                    {"sample_id": sample.id, "kind": kind, "dim": dim, "vector": blob}
                )
            if self._store_raw and sample.raw is not None:
                raw_rows.append(_raw_row(sample.id, sample.raw, now, now + self._raw_ttl))
        with self._db.write("storing samples") as conn:
            # Stamped once the write lock is held, not before waiting for it: a window read
            # while this batch waited would otherwise be computed after the stamp, miss the
            # samples, and never be found stale (computed_at < created_at) -- published short
            # for good.
            stored_at = self._db.now()
            for row in sample_rows:
                row["created_at"] = stored_at
            if sample_rows:
                conn.execute(self._db.insert(Sample).on_conflict_do_nothing(), sample_rows)
            if vector_rows:
                conn.execute(self._db.insert(Embedding).on_conflict_do_nothing(), vector_rows)
            if raw_rows:
                conn.execute(self._db.insert(RawContent).on_conflict_do_nothing(), raw_rows)
            return self._inbox.ack_in(conn, ack, worker_id) if ack and worker_id is not None else 0

    def get_sample(self, sample_id: str) -> StoredSample | None:
        with self._db.read("reading a sample") as conn:
            s = conn.execute(
                select(Sample.__table__, Stream.name.label("stream_name"))
                .join(Stream, Stream.id == Sample.stream_id)
                .where(Sample.id == sample_id)
            ).first()
            if s is None:
                return None
            kinds = conn.execute(
                select(Embedding.kind).where(Embedding.sample_id == sample_id)
            ).scalars()
            return StoredSample(
                id=s.id,
                stream=s.stream_name,
                event_time=as_utc(s.event_time),
                model=s.model,
                prompt_sha256=s.prompt_sha256,
                image_sha256=s.image_sha256,
                response_sha256=s.response_sha256,
                reference_sha256=s.reference_sha256,
                has_image=s.has_image,
                has_reference=s.has_reference,
                ood_score=s.ood_score,
                sampling_weight=s.sampling_weight,
                encoder_fingerprint=s.encoder_fingerprint,
                created_at=as_utc(s.created_at),
                kinds=tuple(sorted(kinds, key=EMBEDDING_KINDS.index)),
            )

    def count_samples(self, stream: str, start: datetime, end: datetime) -> int:
        """Samples of ``stream`` with start <= event time < end."""
        with self._db.read("counting samples") as conn:
            stream_id = self._streams.find(conn, stream)
            if stream_id is None:
                return 0
            return int(
                conn.execute(
                    select(func.count())
                    .select_from(Sample)
                    .where(
                        Sample.stream_id == stream_id,
                        Sample.event_time >= as_utc(start),
                        Sample.event_time < as_utc(end),
                    )
                ).scalar_one()
            )

    def iter_embeddings(
        self,
        stream: str,
        start: datetime,
        end: datetime,
        *,
        kinds: Sequence[str] = EMBEDDING_KINDS,
        chunk_size: int = 2048,
    ) -> Generator[EmbeddingChunk, None, None]:
        """Embeddings of ``stream`` with start <= event time < end, ``chunk_size`` samples at a
        time, in (event time, id) order. Rows are streamed from the server (a server-side
        cursor on PostgreSQL): memory holds one chunk, not the range. Closing the generator early
        releases the connection."""
        wanted = tuple(dict.fromkeys(kinds))
        unknown = [k for k in wanted if k not in EMBEDDING_KINDS]
        if unknown or not wanted:
            raise ValueError(f"kinds must be among {EMBEDDING_KINDS}, got {list(kinds)}")
        if chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        with self._db.read("reading embeddings") as conn:
            stream_id = self._streams.find(conn, stream)
            if stream_id is None:
                return
            stmt = (
                select(
                    Sample.id,
                    Sample.event_time,
                    Sample.ood_score,
                    Sample.sampling_weight,
                    Embedding.kind,
                    Embedding.dim,
                    Embedding.vector,
                )
                .select_from(Sample)
                .outerjoin(
                    Embedding, and_(Embedding.sample_id == Sample.id, Embedding.kind.in_(wanted))
                )
                .where(
                    Sample.stream_id == stream_id,
                    Sample.event_time >= as_utc(start),
                    Sample.event_time < as_utc(end),
                )
                .order_by(Sample.event_time, Sample.id, Embedding.kind)
            )
            # The rows are read from the DBAPI cursor, not as SQLAlchemy Rows: 4 rows a sample,
            # and building a Row (with its type processing) per row cost most of a window's
            # read. SQLAlchemy still compiles and binds the statement (stream_results: a
            # server-side cursor on PostgreSQL) and supplies each column's result processor,
            # applied to the sample columns once per sample instead of once per row. The first
            # row is taken through SQLAlchemy: a server-side result has already fetched it into
            # its own buffer (fetchone empties that buffer without refilling it), so every
            # later row is still on the cursor.
            result = conn.execution_options(stream_results=True).execute(stmt)
            try:
                first = result.fetchone()
                if first is None:
                    return
                cursor = result.cursor
                processors = _result_processors(
                    conn.dialect, stmt.selected_columns, cursor.description
                )
                batch_size = chunk_size * len(wanted)
                batches = chain([[tuple(first)]], iter(lambda: cursor.fetchmany(batch_size), []))
                none: list[Callable[[Any], Any] | None] = [None] * len(processors)
                builder = _ChunkBuilder(wanted)
                last: str | None = None
                for batch_number, batch in enumerate(batches):
                    process = none if batch_number == 0 else processors  # Row: processed
                    sample_process = process[:4]
                    kind_of, dim_of, vector_of = process[4:]
                    for row in batch:
                        sample_id, event_time, ood, weight, kind, dim, vector = row
                        if sample_id != last:
                            if len(builder.ids) == chunk_size:
                                yield builder.build()
                                builder = _ChunkBuilder(wanted)
                            last = sample_id
                            sample_id, event_time, ood, weight = (
                                value if f is None else f(value)
                                for f, value in zip(sample_process, row[:4], strict=True)
                            )
                            builder.add_sample(sample_id, event_time, ood, weight)
                        if kind is not None:
                            builder.add_vector(
                                kind if kind_of is None else kind_of(kind),
                                dim if dim_of is None else dim_of(dim),
                                vector if vector_of is None else vector_of(vector),
                            )
                if builder.ids:
                    yield builder.build()
            finally:
                result.close()

    # -- late references --------------------------------------------------------------------

    def locate_records(self, record_ids: Sequence[str]) -> dict[str, str]:
        """Where each known record is: "sample" (embedded) or "inbox" (waiting to be).
        Unknown ids are left out. Used to accept late references for known records only."""
        found: dict[str, str] = {}
        wanted = list(dict.fromkeys(record_ids))
        with self._db.read("locating records") as conn:
            for chunk in batched(wanted, ID_BATCH):
                for record_id in conn.execute(
                    select(InboxItem.record_id).where(InboxItem.record_id.in_(chunk))
                ).scalars():
                    found[record_id] = "inbox"
                for record_id in conn.execute(
                    select(Sample.id).where(Sample.id.in_(chunk))
                ).scalars():
                    found[record_id] = "sample"
        return found

    def add_late_reference(
        self, record_id: str, text: str, *, received_at: datetime | None = None
    ) -> int:
        """Keep a reference answer that arrived after its record, until it is embedded."""
        with self._db.write("storing a late reference") as conn:
            return int(
                conn.execute(
                    self._db.insert(LateReference)
                    .values(
                        record_id=record_id,
                        text=text,
                        reference_sha256=content_sha256(text),
                        received_at=self._db.now(received_at),
                        resolved_at=None,
                    )
                    .returning(LateReference.id)
                ).scalar_one()
            )

    def add_late_references(
        self,
        references: Sequence[tuple[str, str]],
        *,
        max_per_record: int | None = None,
        received_at: datetime | None = None,
    ) -> dict[str, int]:
        """Keep (record id, text) references in one transaction, all or none.

        With ``max_per_record``, an id may hold at most that many references in all (resolved
        ones included: the bound is on rows per id, for ever): when these would take any id
        past it, nothing is stored and the result maps each such id to the number it would
        hold. An empty result means everything was stored. The count and the insert share one
        write transaction (exact on SQLite, whose writers take turns; on PostgreSQL two
        concurrent requests for one id can pass the bound by what they add together)."""
        if not references:
            return {}
        moment = self._db.now(received_at)
        adding = Counter(record_id for record_id, _ in references)
        with self._db.write("storing late references") as conn:
            if max_per_record is not None:
                held: dict[str, int] = {}
                for chunk in batched(list(adding), ID_BATCH):
                    for record_id, count in conn.execute(
                        select(LateReference.record_id, func.count())
                        .where(LateReference.record_id.in_(chunk))
                        .group_by(LateReference.record_id)
                    ).all():
                        held[record_id] = int(count)
                over = {
                    record_id: held.get(record_id, 0) + count
                    for record_id, count in adding.items()
                    if held.get(record_id, 0) + count > max_per_record
                }
                if over:
                    return over
            conn.execute(
                self._db.insert(LateReference),
                [
                    {
                        "record_id": record_id,
                        "text": text,
                        "reference_sha256": content_sha256(text),
                        "received_at": moment,
                        "resolved_at": None,
                    }
                    for record_id, text in references
                ],
            )
        return {}

    def pending_late_references(self, limit: int = 100) -> list[LateReferenceEntry]:
        """Unresolved late references whose sample is stored (ready to embed), oldest first."""
        with self._db.read("listing late references") as conn:
            rows = conn.execute(
                select(LateReference.__table__)
                .join(Sample, Sample.id == LateReference.record_id)
                .where(LateReference.resolved_at.is_(None))
                .order_by(LateReference.id)
                .limit(limit)
            ).all()
            return [_late_entry(ref) for ref in rows]

    def get_late_reference(self, ref_id: int) -> LateReferenceEntry | None:
        with self._db.read("reading a late reference") as conn:
            found = conn.execute(
                select(LateReference.__table__).where(LateReference.id == ref_id)
            ).first()
            return _late_entry(found) if found is not None else None

    def resolve_late_reference(
        self, ref_id: int, vector: np.ndarray, *, now: datetime | None = None
    ) -> WindowLocation | None:
        """Store the reference embedding on its sample and forget the text (unless raw
        retention is on). Returns where the sample falls, so its window can be recomputed;
        None when the reference or its sample is unknown."""
        dim, blob = encode_vector(vector, field_name="reference")
        with self._db.write("resolving a late reference") as conn:
            moment = self._db.now(now)  # once the lock is held: see add_samples
            ref = conn.execute(
                select(LateReference.__table__).where(LateReference.id == ref_id)
            ).first()
            if ref is None:
                return None
            sample = conn.execute(
                select(Sample.id, Sample.event_time, Stream.name)
                .join(Stream, Stream.id == Sample.stream_id)
                .where(Sample.id == ref.record_id)
            ).first()
            if sample is None:
                return None
            conn.execute(
                self._db.insert(Embedding)
                .values(sample_id=sample.id, kind="reference", dim=dim, vector=blob)
                .on_conflict_do_update(
                    index_elements=["sample_id", "kind"], set_={"dim": dim, "vector": blob}
                )
            )
            conn.execute(
                update(Sample)
                .where(Sample.id == sample.id)
                .values(has_reference=True, reference_sha256=ref.reference_sha256)
            )
            if self._store_raw and ref.text is not None:
                conn.execute(
                    self._db.insert(RawContent)
                    .values(
                        _raw_row(
                            sample.id,
                            RawContentData(reference=ref.text),
                            moment,
                            moment + self._raw_ttl,
                        )
                    )
                    .on_conflict_do_update(
                        index_elements=["sample_id"], set_={"reference": ref.text}
                    )
                )
            conn.execute(
                update(LateReference)
                .where(LateReference.id == ref_id)
                .values(text=None, resolved_at=moment)
            )
            return WindowLocation(stream=sample.name, event_time=as_utc(sample.event_time))

    # -- raw content and retention ------------------------------------------------------------

    def get_raw(self, sample_id: str) -> RawContentData | None:
        with self._db.read("reading raw content") as conn:
            raw = conn.execute(
                select(RawContent.__table__).where(RawContent.sample_id == sample_id)
            ).first()
            if raw is None:
                return None
            return RawContentData(raw.prompt, raw.response, raw.reference, raw.image)

    def purge_raw(self, now: datetime | None = None) -> PurgeCounts:
        """The retention job: delete raw content past its TTL (all of it when raw retention is
        off), and late references that found no sample within the TTL."""
        moment = self._db.now(now)
        with self._db.write("purging raw content") as conn:
            raw = delete(RawContent)
            if self._store_raw:
                raw = raw.where(RawContent.expires_at <= moment)
            raw_count = conn.execute(raw).rowcount
            orphans = conn.execute(
                delete(LateReference).where(
                    LateReference.resolved_at.is_(None),
                    LateReference.received_at <= moment - self._raw_ttl,
                )
            ).rowcount
        return PurgeCounts(raw_content=raw_count, late_references=orphans)


def _result_processors(
    dialect: Dialect, columns: Iterable[ColumnElement[Any]], description: Sequence[Sequence[Any]]
) -> list[Callable[[Any], Any] | None]:
    """Each selected column's result processor (None: the driver's value is used as it is), as
    SQLAlchemy itself would apply it to a Row: its dialect type, given the cursor's type code."""
    return [
        column.type.dialect_impl(dialect).result_processor(dialect, described[1])
        for column, described in zip(columns, description, strict=True)
    ]


def _sample_row(sample: NewSample, stream_id: int, now: datetime) -> dict[str, Any]:
    return {
        "id": sample.id,
        "stream_id": stream_id,
        "event_time": as_utc(sample.event_time),
        "model": sample.model,
        "prompt_sha256": sample.prompt_sha256,
        "image_sha256": sample.image_sha256,
        "response_sha256": sample.response_sha256,
        "reference_sha256": sample.reference_sha256,
        "has_image": sample.has_image,
        "has_reference": sample.has_reference,
        "ood_score": sample.ood_score,
        "sampling_weight": sample.sampling_weight,
        "encoder_fingerprint": sample.encoder_fingerprint,
        "created_at": now,
    }


def _raw_row(
    sample_id: str, raw: RawContentData, now: datetime, expires: datetime
) -> dict[str, Any]:
    return {
        "sample_id": sample_id,
        "prompt": raw.prompt,
        "response": raw.response,
        "reference": raw.reference,
        "image": raw.image,
        "stored_at": now,
        "expires_at": expires,
    }


def _late_entry(ref: Row[Any]) -> LateReferenceEntry:
    return LateReferenceEntry(
        id=ref.id,
        record_id=ref.record_id,
        text=ref.text,
        reference_sha256=ref.reference_sha256,
        received_at=as_utc(ref.received_at),
        resolved_at=as_utc(ref.resolved_at) if ref.resolved_at is not None else None,
    )
