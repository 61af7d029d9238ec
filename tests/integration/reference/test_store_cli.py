"""Reference stores through the CLI with real (tiny) encoders: the configured encoders are
checked by every command, the configured image limits reach the build, hostile settings and
names give one line and exit code 1, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner, Result

from monitor.cli import app
from monitor.estimators.club import CLUB
from monitor.reference.checkpoint import save_club
from tests.conftest import LLAVA_SHIFT
from tests.support.config_files import write_config
from tests.unit.embedding.conftest import make_clip, make_xlmr

pytestmark = pytest.mark.slow
runner = CliRunner()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("models")
    return {
        "text_a": make_xlmr(base / "xlmr-a", seed=0),
        "text_b": make_xlmr(base / "xlmr-b", seed=1),
        "clip": make_clip(base / "clip"),
    }


def config(
    tmp_path: Path,
    text: Path,
    *,
    name: str = "monitor.toml",
    clip: Path | None = None,
    root: Path | None = None,
    image_limits: dict[str, int] | None = None,
) -> Path:
    image = (
        {"kind": "clip_vision", "model": clip, **(image_limits or {})} if clip else {"kind": "none"}
    )
    return write_config(
        tmp_path / name,
        encoders={
            "local_files_only": True,
            "fusion": "concat",
            "image": image,
            "text": {"kind": "xlmr_embedding_layer", "model": text},
        },
        reference={"root": root or tmp_path / "references"},
    )


def text_manifest(tmp_path: Path) -> Path:
    lines = (LLAVA_SHIFT / "qa90_gpt4_answer.jsonl").read_text().splitlines()[:12]
    texts = [json.loads(line)["text"] for line in lines]
    path = tmp_path / "id.jsonl"
    path.write_text(
        "\n".join(
            json.dumps({"id": f"q{i}", "prompt": t[:80], "response": t[80:200], "reference": t})
            for i, t in enumerate(texts)
        )
    )
    return path


def one_line_error(result: Result, *needles: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    # Progress bars may precede it; the error itself is one line.
    lines = [line for line in result.output.strip().splitlines() if "━" not in line]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_every_command_refuses_a_store_built_with_other_encoders(
    tmp_path: Path, models: dict[str, Path]
) -> None:
    built_with = config(tmp_path, models["text_a"], name="a.toml")
    other = config(tmp_path, models["text_b"], name="b.toml")
    manifest = text_manifest(tmp_path)
    build = runner.invoke(app, ["reference", "build", "-c", str(built_with), "-m", str(manifest)])
    assert build.exit_code == 0, build.output
    weights = tmp_path / "club.pt"
    save_club(CLUB(32, 32, hidden=8), weights)
    commands = [
        ["estimator", "train", "--epochs", "1", "--hidden", "8"],
        ["estimator", "import", str(weights)],
        ["calibrate", "--window-sizes", "2", "--trials", "20"],
    ]
    for command in commands:
        refused = runner.invoke(app, [*command, "-c", str(other)])
        one_line_error(refused, "was built with other encoders", "text encoder: built with")
    store = tmp_path / "references" / "default"
    assert json.loads((store / "manifest.json").read_text())["estimator"] is None
    trained = runner.invoke(
        app, ["estimator", "train", "--epochs", "1", "--hidden", "8", "-c", str(built_with)]
    )
    assert trained.exit_code == 0, trained.output
    # `reference show` inspects any store, and says whether the configured encoders match.
    shown = runner.invoke(app, ["reference", "show", "-c", str(other)])
    assert shown.exit_code == 0, shown.output
    assert "DIFFERENT encoders, commands will refuse this store: text encoder" in shown.output
    assert (
        "encoders match" in runner.invoke(app, ["reference", "show", "-c", str(built_with)]).output
    )
    as_json = runner.invoke(app, ["reference", "show", "--json", "-c", str(other)])
    assert json.loads(as_json.output)["configured_encoders"]["match"] is False
    unchecked = runner.invoke(app, ["reference", "show", "--no-encoders", "-c", str(other)])
    assert "not compared (--no-encoders)" in unchecked.output


def test_build_applies_the_configured_image_limits(tmp_path: Path, models: dict[str, Path]) -> None:
    images = tmp_path / "images"
    images.mkdir()
    lines = []
    for i in range(3):
        pixels = np.random.default_rng(i).integers(0, 256, (40, 50, 3), dtype=np.uint8)
        Image.fromarray(pixels, "RGB").save(images / f"{i}.png")
        lines.append(
            {
                "id": f"r{i}",
                "prompt": "What is it?",
                "response": "A picture.",
                "image": f"images/{i}.png",
            }
        )
    manifest = tmp_path / "images.jsonl"
    manifest.write_text("\n".join(json.dumps(line) for line in lines))
    for limits, message in (
        ({"max_pixels": 1000}, "over the limit of 1,000"),
        ({"max_bytes": 100}, "over the limit of 100 bytes"),
    ):
        settings = config(tmp_path, models["text_a"], clip=models["clip"], image_limits=limits)
        built = runner.invoke(
            app, ["reference", "build", "-c", str(settings), "-m", str(manifest), "-n", "img"]
        )
        one_line_error(built, "record 'r0'", message)
    settings = config(tmp_path, models["text_a"], clip=models["clip"])
    built = runner.invoke(
        app, ["reference", "build", "-c", str(settings), "-m", str(manifest), "-n", "img"]
    )
    assert built.exit_code == 0, built.output


def test_hostile_store_settings_and_names(tmp_path: Path, models: dict[str, Path]) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    settings = config(tmp_path, models["text_a"], root=not_a_folder)
    manifest = text_manifest(tmp_path)
    one_line_error(
        runner.invoke(app, ["reference", "show", "--no-encoders", "-c", str(settings)]),
        "is not a directory",
    )
    one_line_error(
        runner.invoke(app, ["reference", "build", "-c", str(settings), "-m", str(manifest)]),
        "is not a directory",
    )
    settings = config(tmp_path, models["text_a"])
    for name in ("bad\x07name", "../escape", "new\nline"):
        refused = runner.invoke(
            app, ["reference", "build", "-c", str(settings), "-m", str(manifest), "-n", name]
        )
        assert refused.exit_code != 0 and "Traceback" not in refused.output
        assert "invalid" in refused.output and "name" in refused.output
    assert not (tmp_path / "references").exists() or not any((tmp_path / "references").iterdir())
