"""CLUB weights files: round trip, the paper's file, structure checks, no code execution."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from monitor.errors import CheckpointError
from monitor.estimators.club import CLUB
from monitor.reference import import_store_estimator, load_store
from monitor.reference.checkpoint import CHECKPOINT_FORMAT, load_club, save_club
from tests.conftest import PAPER_CLUB
from tests.unit.reference.conftest import small_store


class RunsCode:
    """Unpickling this object calls ``open(marker, "w")``: a file appears if code runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def _state(x: int = 6, y: int = 5, h: int = 4) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in CLUB(x, y, hidden=2 * h).state_dict().items()}


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((100, 6)).astype(np.float32)
    y = (x[:, :5] + 0.2 * rng.standard_normal((100, 5))).astype(np.float32)
    torch.manual_seed(0)
    model = CLUB(6, 5, hidden=16)
    model.metadata["encoder_fingerprint"] = "abc123"
    path = tmp_path / "nested" / "club.pt"
    save_club(model, path)
    loaded = load_club(path)
    assert loaded.metadata["encoder_fingerprint"] == "abc123"
    assert loaded.estimate(x, y) == pytest.approx(model.estimate(x, y), abs=1e-12)
    assert [p.name for p in path.parent.iterdir()] == ["club.pt"]  # no temp file left
    odd = CLUB(6, 5, hidden=9)  # an odd width builds layers of 4: still loads as saved
    save_club(odd, path)
    assert load_club(path).hidden == 9


def test_paper_checkpoint_loads_on_cpu_with_its_dims() -> None:
    model = load_club(PAPER_CLUB, x_dim=768, y_dim=768)
    assert (model.x_dim, model.y_dim, model.hidden) == (768, 768, 500)
    assert next(model.parameters()).device.type == "cpu"
    with pytest.raises(CheckpointError, match="y_dim=768, expected 512"):
        load_club(PAPER_CLUB, y_dim=512)


def test_a_pickle_that_would_run_code_does_not_run(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    marker = tmp_path / "ran"
    torch.save({"state_dict": RunsCode(marker), "format": CHECKPOINT_FORMAT}, path)
    with pytest.raises(CheckpointError, match="cannot read CLUB weights") as info:
        load_club(path)
    assert not marker.exists()
    assert info.value.path == path
    # The file does run code when unpickled without weights_only: the test is not vacuous.
    torch.load(path, weights_only=False)
    assert marker.exists()


def _payload(**changes: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "x_dim": 6,
        "y_dim": 5,
        "hidden": 8,
        "metadata": {"seed": 0},
        "state_dict": _state(),
    }
    payload.update(changes)
    return payload


def _with_tensor(name: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    state = _state()
    state[name] = tensor
    return state


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ([1, 2, 3], "does not hold a state dict \\(found list\\)"),
        ({1: torch.zeros(1)}, "does not hold a state dict"),
        (_payload(state_dict=[torch.zeros(2)]), "does not hold a state dict under 'state_dict'"),
        (_payload(format="other@9"), "checkpoint format 'other@9'"),
        (_payload(metadata="notes"), "odd metadata: expected a mapping"),
        (_payload(metadata={"t": torch.zeros(2)}), "odd metadata: a value of type Tensor"),
        (_payload(metadata={1: "x"}), "odd metadata: key 1"),
        (_payload(x_dim="6"), "odd metadata: x_dim must be a positive integer"),
        (_payload(y_dim=7), "odd metadata: y_dim=7 but the tensors say 5"),
        (_payload(extra=1), "checkpoint has keys"),
        ({"encoder.weight": torch.zeros(2, 2)}, "not a CLUB state dict"),
        (_with_tensor("p_mu.0.weight", torch.zeros(24)), "p_mu.0.weight must be a 2-D tensor"),
        (_with_tensor("p_mu.0.bias", torch.zeros(4, 1)), "p_mu.0.bias must be a 1-D tensor"),
        (_with_tensor("p_logvar.2.weight", torch.zeros(5, 3)), "inconsistent CLUB tensor shapes"),
        (_with_tensor("p_mu.2.bias", torch.zeros(5, dtype=torch.int64)), "must be a float tensor"),
        (_with_tensor("p_mu.2.bias", torch.tensor([0.0, float("nan"), 0, 0, 0])), "NaN"),
        (_with_tensor("p_mu.0.weight", torch.zeros(0, 6)), "empty CLUB tensors"),
    ],
)
def test_malformed_checkpoints_are_one_clear_error(
    tmp_path: Path, content: object, message: str
) -> None:
    path = tmp_path / "bad.pt"
    torch.save(content, path)
    with pytest.raises(CheckpointError, match=message) as info:
        load_club(path)
    assert info.value.path == path


def test_corrupt_and_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "bad.pt"
    for content in (b"", b"not a torch file at all"):
        path.write_bytes(content)
        with pytest.raises(CheckpointError, match="cannot read"):
            load_club(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_club(tmp_path / "missing.pt")


def test_import_checks_encoders_and_finite_weights(tmp_path: Path) -> None:
    _, store = small_store(tmp_path / "refs", n=20)
    foreign = CLUB(16, 16, hidden=8)
    foreign.metadata["encoders"] = {"image": None, "text": "other-encoder"}
    path = tmp_path / "foreign.pt"
    save_club(foreign, path)
    with pytest.raises(CheckpointError, match="trained on embeddings of encoders"):
        import_store_estimator(store, path)
    state = CLUB(16, 16, hidden=8).state_dict()
    state["p_mu.0.weight"][0, 0] = float("nan")
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="NaN or infinite weights"):
        import_store_estimator(store, path)
    assert load_store(tmp_path / "refs", "ref").manifest["estimator"] is None
    torch.save(CLUB(16, 16, hidden=8).state_dict(), path)  # plain state dict: no record
    import_store_estimator(store, path)
    again = load_store(tmp_path / "refs", "ref")
    assert again.manifest["estimator"]["source"].endswith("(encoders not recorded)")
    # Trained elsewhere: every record with a reference counts as held out for EMI(ID).
    assert again.estimator_holdout.tolist() == list(range(20))
