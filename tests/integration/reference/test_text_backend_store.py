"""A reference store built with one text backend refuses the other, both ways, clearly.

Tiny random XLM-R models made in a temporary directory, loaded as ``hf_mean_pool``; real
store files on disk.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from monitor.embedding import EncoderSet, load_text_encoder
from monitor.errors import FingerprintMismatchError
from monitor.reference.build import build_store
from monitor.reference.id_records import IDRecord
from monitor.reference.store import open_store
from tests.unit.embedding.conftest import make_xlmr

pytest.importorskip("transformers")

T0 = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def encoder_sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, EncoderSet]:
    model = str(make_xlmr(tmp_path_factory.mktemp("xlmr")))
    return {
        backend: EncoderSet(
            image=None,
            text=load_text_encoder("hf_mean_pool", model, backend=backend),
            fusion="mean",
        )
        for backend in ("torch", "torch_int8")
    }


@pytest.mark.parametrize(
    ("built_with", "configured"), [("torch", "torch_int8"), ("torch_int8", "torch")]
)
def test_a_store_refuses_the_other_backend(
    tmp_path: Path, encoder_sets: dict[str, EncoderSet], built_with: str, configured: str
) -> None:
    records = [
        IDRecord(id=f"id-{i}", timestamp=T0, prompt=f"What is in picture {i}?", response=f"a {i}")
        for i in range(8)
    ]
    build_store(records, root=tmp_path, name="ref", encoders=encoder_sets[built_with])
    assert open_store(tmp_path, "ref", encoder_sets[built_with]).name == "ref"
    built_fp = encoder_sets[built_with].text.fingerprint
    configured_fp = encoder_sets[configured].text.fingerprint
    with pytest.raises(FingerprintMismatchError, match="built with other encoders") as caught:
        open_store(tmp_path, "ref", encoder_sets[configured])
    assert built_fp in str(caught.value) and configured_fp in str(caught.value)
