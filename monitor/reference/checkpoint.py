"""CLUB weights files: the adapter between :class:`~monitor.estimators.club.CLUB` and disk.

Two layouts load: our own (``save_club``: format tag, dims, JSON-like metadata and the state
dict) and a plain state dict as the paper's authors publish it (``CLUB_global.pt``). Files are
read with ``torch.load(weights_only=True)``: tensors and plain containers only, so a file
crafted to run code when unpickled is refused instead of run. What loads is then checked as a
whole before any network is built, and every problem is one :class:`CheckpointError` naming the
file: not a mapping, unknown format, odd metadata, missing or extra tensors, wrong ranks,
inconsistent shapes, non-float or non-finite weights.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from monitor.errors import CheckpointError
from monitor.estimators.club import CLUB
from monitor.files import atomic_writer

CHECKPOINT_FORMAT = "mllm-monitor/club@1"
_OWN_KEYS = {"format", "x_dim", "y_dim", "hidden", "metadata", "state_dict"}
# name -> (rank, shape in terms of h = hidden / 2, x = x_dim, y = y_dim)
_TENSORS: dict[str, tuple[str, ...]] = {
    f"{head}.{layer}.{kind}": shape
    for head in ("p_mu", "p_logvar")
    for layer, kind, shape in (
        (0, "weight", ("h", "x")),
        (0, "bias", ("h",)),
        (2, "weight", ("y", "h")),
        (2, "bias", ("y",)),
    )
}
_METADATA_DEPTH = 8


def save_club(model: CLUB, path: str | os.PathLike[str]) -> None:
    """Write the weights, dims and metadata atomically (a crash never leaves half a file)."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "x_dim": model.x_dim,
        "y_dim": model.y_dim,
        "hidden": model.hidden,
        "metadata": dict(model.metadata),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    _check_metadata(payload["metadata"], Path(path))
    with atomic_writer(Path(path)) as fh:
        torch.save(payload, fh)


def load_club(
    path: str | os.PathLike[str], *, x_dim: int | None = None, y_dim: int | None = None
) -> CLUB:
    """Load a CLUB saved by :func:`save_club` or a plain state dict, on the CPU, in eval mode.

    ``x_dim`` / ``y_dim``, when given, must match the weights.
    """
    source = Path(path)
    try:
        data = source.read_bytes()
    except FileNotFoundError as exc:
        raise CheckpointError(f"CLUB weights file not found: {source}", path=source) from exc
    except OSError as exc:
        raise CheckpointError(
            f"cannot read CLUB weights from {source}: {exc.strerror or exc}", path=source
        ) from exc
    return load_club_bytes(data, source=source, x_dim=x_dim, y_dim=y_dim)


def load_club_bytes(
    data: bytes, *, source: Path, x_dim: int | None = None, y_dim: int | None = None
) -> CLUB:
    """:func:`load_club` from bytes already read (and verified) by the caller."""
    try:
        # weights_only=True: never unpickle arbitrary objects (a checkpoint may come from
        # anywhere; `estimator import` takes a path from the command line).
        raw = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt, foreign or unsafe file
        text = str(exc).strip()
        first_line = text.splitlines()[0] if text else type(exc).__name__
        raise CheckpointError(
            f"cannot read CLUB weights from {source}: {first_line}", path=source
        ) from exc
    model = club_from_payload(raw, source)
    for name, expected in (("x_dim", x_dim), ("y_dim", y_dim)):
        if expected is not None and getattr(model, name) != expected:
            raise CheckpointError(
                f"{source} holds a CLUB with {name}={getattr(model, name)}, expected {expected}",
                path=source,
            )
    return model


def club_from_payload(raw: object, source: Path) -> CLUB:
    """Check what a weights file held and build the CLUB from it (CPU, eval mode)."""
    if not isinstance(raw, Mapping) or not all(isinstance(k, str) for k in raw):
        raise CheckpointError(
            f"{source} does not hold a state dict (found {type(raw).__name__})", path=source
        )
    metadata: dict[str, Any] = {}
    declared: dict[str, int] = {}
    if "format" in raw:
        if raw["format"] != CHECKPOINT_FORMAT:
            raise CheckpointError(
                f"{source} has checkpoint format {raw['format']!r}, expected "
                f"{CHECKPOINT_FORMAT!r} or a plain CLUB state dict",
                path=source,
            )
        if set(raw) != _OWN_KEYS:
            raise CheckpointError(
                f"{source}: a {CHECKPOINT_FORMAT} checkpoint has keys {sorted(_OWN_KEYS)}, "
                f"found {sorted(raw)}",
                path=source,
            )
        for key in ("x_dim", "y_dim", "hidden"):
            value = raw[key]
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise CheckpointError(
                    f"{source}: odd metadata: {key} must be a positive integer, got {value!r}",
                    path=source,
                )
            declared[key] = value
        if not isinstance(raw["metadata"], Mapping):
            raise CheckpointError(
                f"{source}: odd metadata: expected a mapping, got {type(raw['metadata']).__name__}",
                path=source,
            )
        metadata = dict(raw["metadata"])
        _check_metadata(metadata, source)
        state = raw["state_dict"]
        if not isinstance(state, Mapping):
            raise CheckpointError(
                f"{source} does not hold a state dict under 'state_dict' (found "
                f"{type(state).__name__})",
                path=source,
            )
    else:
        state = raw
    dims = _check_state(state, source)
    for key, value in declared.items():
        # An odd hidden width h builds layers of h // 2: compare what the tensors can show.
        shown = dims[key] // 2 if key == "hidden" else dims[key]
        if (value // 2 if key == "hidden" else value) != shown:
            raise CheckpointError(
                f"{source}: odd metadata: {key}={value} but the tensors say {dims[key]}",
                path=source,
            )
    model = CLUB(dims["x_dim"], dims["y_dim"], declared.get("hidden", dims["hidden"]))
    model.load_state_dict({name: state[name].float() for name in _TENSORS})
    model.metadata = metadata
    model.eval()
    return model


def _check_state(state: Mapping[str, Any], source: Path) -> dict[str, int]:
    keys = set(state)
    if keys != set(_TENSORS):
        missing, extra = sorted(set(_TENSORS) - keys), sorted(keys - set(_TENSORS))
        raise CheckpointError(
            f"{source} is not a CLUB state dict (missing {missing or 'nothing'}, "
            f"unexpected {extra or 'nothing'})",
            path=source,
        )
    for name in _TENSORS:
        tensor = state[name]
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            raise CheckpointError(
                f"{source}: {name} must be a float tensor, got "
                f"{getattr(tensor, 'dtype', type(tensor).__name__)}",
                path=source,
            )
        rank = len(_TENSORS[name])
        if tensor.dim() != rank:
            raise CheckpointError(
                f"{source}: {name} must be a {rank}-D tensor, got shape {tuple(tensor.shape)}",
                path=source,
            )
    first = state["p_mu.0.weight"]
    sizes = {"h": int(first.shape[0]), "x": int(first.shape[1])}
    sizes["y"] = int(state["p_mu.2.weight"].shape[0])
    if min(sizes.values()) < 1:
        raise CheckpointError(f"{source}: empty CLUB tensors {sizes}", path=source)
    for name, symbols in _TENSORS.items():
        expected = tuple(sizes[s] for s in symbols)
        if tuple(state[name].shape) != expected:
            raise CheckpointError(
                f"{source}: inconsistent CLUB tensor shapes: {name} is "
                f"{tuple(state[name].shape)}, expected {expected} (from p_mu.0.weight and "
                "p_mu.2.weight)",
                path=source,
            )
        if not bool(torch.isfinite(state[name]).all()):
            raise CheckpointError(f"{source}: {name} holds NaN or infinite weights", path=source)
    return {"x_dim": sizes["x"], "y_dim": sizes["y"], "hidden": 2 * sizes["h"]}


def _check_metadata(value: object, source: Path, depth: int = 0) -> None:
    """Metadata is JSON-like (it is shown and written into manifests): refuse anything else."""
    if depth > _METADATA_DEPTH:
        raise CheckpointError(f"{source}: odd metadata: nested too deeply", path=source)
    if value is None or isinstance(value, str | bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CheckpointError(f"{source}: odd metadata: non-finite number", path=source)
        return
    if isinstance(value, list | tuple):
        for item in value:
            _check_metadata(item, source, depth + 1)
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise CheckpointError(
                    f"{source}: odd metadata: key {key!r} is not a string", path=source
                )
            _check_metadata(item, source, depth + 1)
        return
    raise CheckpointError(
        f"{source}: odd metadata: a value of type {type(value).__name__} (expected JSON-like "
        "values)",
        path=source,
    )


__all__ = [
    "CHECKPOINT_FORMAT",
    "club_from_payload",
    "load_club",
    "load_club_bytes",
    "save_club",
]
