"""Claimed inbox records to samples: decode images, embed, score OOD.

    SampleEmbedder(settings, encoders, ood)
        .prepare(inbox_id, record)   the record as it will be embedded, its image decoded
        .embed(work)                 samples, and the records that could not be embedded
        .embed_texts(texts)          text rows (late references), under the same lock
    embed_records(encoders, records, images)   one batch embedded as the reference build does
    sample_fingerprint(encoders)               the encoder fingerprint stored with each sample

Images are decoded safely, in :mod:`monitor.embedding.images`; prompts, answers, references and
images are embedded exactly as the reference build embeds ID records (:func:`embed_records`);
each query x is scored against its stream's reference store (:mod:`monitor.ingest.ood_scoring`).
Encoders are shared by all workers of the process and called under one lock (tokenizers are
not safe to share between threads, and torch already uses every core for one batch); the other
workers meanwhile decode, score and write. Nothing here reads or writes the database.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image

from monitor.config import Settings
from monitor.embedding import EncoderSet, decode_image, fuse, image_limits_from_settings
from monitor.errors import EncoderError, InvalidInputError
from monitor.ingest.ood_scoring import OodScorer
from monitor.records import TrafficRecord
from monitor.store.types import NewSample

Rows = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class PreparedRecord:
    """An inbox record ready to embed: as it will be embedded, with its decoded image."""

    inbox_id: int
    record: TrafficRecord
    image: Image.Image | None


def sample_fingerprint(encoders: EncoderSet) -> str:
    """The encoder fingerprint stored with each sample: image and text encoders together."""
    image = encoders.image.fingerprint if encoders.image is not None else "none"
    return f"{image}+{encoders.text.fingerprint}"


class SampleEmbedder:
    """Embeds prepared records into samples with one encoder set, shared under a lock."""

    def __init__(self, settings: Settings, encoders: EncoderSet, ood: OodScorer) -> None:
        self.encoders = encoders
        self.fingerprint = sample_fingerprint(encoders)
        self._ood = ood
        self._image_limits = image_limits_from_settings(settings.encoders.image)
        self._encode_lock = threading.Lock()

    def prepare(self, inbox_id: int, record: TrafficRecord) -> PreparedRecord:
        """The record as it will be embedded and its decoded image (InvalidInputError, such as
        ImageDecodeError, when it cannot be embedded)."""
        if record.image is None:
            if record.image_url is not None:
                raise InvalidInputError(
                    "the record's image URL was never fetched", field="image_url"
                )
            return PreparedRecord(inbox_id, record, None)
        if self.encoders.image is None:
            # A text-only deployment ignores images; the sample says it has none.
            return PreparedRecord(inbox_id, dataclasses.replace(record, image=None), None)
        return PreparedRecord(
            inbox_id, record, decode_image(record.image, limits=self._image_limits)
        )

    def embed(self, work: Sequence[PreparedRecord]) -> tuple[list[NewSample], dict[int, str]]:
        """Samples for ``work``, and the reason of each inbox id that could not be embedded.

        Batched; when the batch fails, each record alone, so one bad record is moved aside and
        the others are stored."""
        if not work:
            return [], {}
        try:
            return self._embed_together(work), {}
        except InvalidInputError as exc:
            if len(work) == 1:
                return [], {work[0].inbox_id: f"{type(exc).__name__}: {exc}"}
        samples: list[NewSample] = []
        failed: dict[int, str] = {}
        for item in work:
            try:
                samples.extend(self._embed_together([item]))
            except InvalidInputError as exc:
                failed[item.inbox_id] = f"{type(exc).__name__}: {exc}"
        return samples, failed

    def embed_texts(self, texts: Sequence[str]) -> Rows:
        """Text rows from the text encoder (a late reference is embedded as a reference)."""
        with self._encode_lock:
            return self.encoders.text.encode_texts(list(texts))

    def _embed_together(self, work: Sequence[PreparedRecord]) -> list[NewSample]:
        records = [item.record for item in work]
        with self._encode_lock:
            rows = embed_records(self.encoders, records, [item.image for item in work])
        ood = self._ood.scores(records, rows["query"])
        cursors = dict.fromkeys(("image", "response", "reference"), 0)
        samples: list[NewSample] = []
        for i, record in enumerate(records):
            embeddings: dict[str, np.ndarray] = {"prompt": rows["prompt"][i]}
            for kind, present in (
                ("image", work[i].image is not None),
                ("response", record.response is not None),
                ("reference", record.reference is not None),
            ):
                if present:
                    embeddings[kind] = rows[kind][cursors[kind]]
                    cursors[kind] += 1
            samples.append(
                NewSample.from_record(
                    record,
                    embeddings,
                    encoder_fingerprint=self.fingerprint,
                    ood_score=ood[i],
                )
            )
        return samples


def embed_records(
    encoders: EncoderSet, records: Sequence[TrafficRecord], images: Sequence[Image.Image | None]
) -> dict[str, Rows]:
    """One batch of live records embedded as the reference build embeds ID records.

    The same encoders and fusion as :mod:`monitor.reference.build`: prompts (an image-only
    record's prompt is ""), answers and references through the text encoder (in one call; a
    text's row does not depend on its batch, up to float rounding), images through the image
    encoder, and x = ``fuse(prompt, image, has_image, fusion)``; a test checks
    that a record embeds to the very rows the store built from it holds. ``prompt`` and ``query``
    have one row per record; ``response``, ``reference`` and ``image`` one row per record that
    has one, in record order.
    """
    texts = {
        "prompt": [r.prompt or "" for r in records],
        "response": [r.response for r in records if r.response is not None],
        "reference": [r.reference for r in records if r.reference is not None],
    }
    # One call for all of them: the encoder sorts them by length together, so short answers
    # share forward passes instead of padding to the prompts.
    rows = encoders.text.encode_texts([text for part in texts.values() for text in part])
    out: dict[str, Rows] = {}
    start = 0
    for kind, part in texts.items():
        if part or kind == "prompt":
            out[kind] = rows[start : start + len(part)]
        start += len(part)
    has_image = np.array([image is not None for image in images], dtype=bool)
    full_image = None
    if has_image.any():
        if encoders.image is None:
            raise EncoderError("records have images but encoders.image.kind is 'none'")
        out["image"] = encoders.image.encode_images([i for i in images if i is not None])
        full_image = np.zeros((len(records), out["image"].shape[1]), dtype=np.float32)
        full_image[has_image] = out["image"]
    elif encoders.image is not None and encoders.fusion == "concat":
        full_image = np.zeros((len(records), encoders.image.dim), dtype=np.float32)
    out["query"] = fuse(out["prompt"], full_image, has_image, encoders.fusion)
    return out


__all__ = [
    "PreparedRecord",
    "SampleEmbedder",
    "embed_records",
    "sample_fingerprint",
]
