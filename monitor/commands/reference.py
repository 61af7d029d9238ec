"""``mllm-monitor reference build|show``: write and inspect reference stores."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from monitor.commands._common import (
    ConfigOption,
    echo,
    load_for_compute,
    progress_bar,
    stage_reporter,
    store_name,
)
from monitor.config import load_settings


def reference_build(
    id_records: Annotated[
        Path,
        typer.Option(
            "--id-records",
            "--manifest",
            "-m",
            help="JSONL file of ID records, one a line (prompt, response, reference, image, id); "
            "--manifest is its older name.",
            dir_okay=False,
        ),
    ],
    name: Annotated[
        str, typer.Option("--name", "-n", help="Store name.", callback=store_name)
    ] = "default",
    config: ConfigOption = None,
    image_root: Annotated[
        Path | None,
        typer.Option(
            "--image-root",
            help="Directory image paths are relative to (default: the ID records "
            "file's directory); paths may not escape it.",
            file_okay=False,
        ),
    ] = None,
    replace: Annotated[bool, typer.Option("--replace", help="Rebuild an existing store.")] = False,
    ood_k: Annotated[int, typer.Option("--ood-k", min=1, help="k of the kNN OOD score.")] = 1,
    ood_tpr: Annotated[
        float,
        typer.Option(
            "--ood-tpr", min=0.5, max=0.999, help="Share of ID samples under the OOD threshold."
        ),
    ] = 0.95,
    ivf_min_size: Annotated[
        int,
        typer.Option(
            "--ivf-min-size", min=1, help="Use IVF indexes from this many rows on (exact below)."
        ),
    ] = 200_000,
    ivf_nlist: Annotated[
        int, typer.Option("--ivf-nlist", min=0, help="IVF cells (0: about 4 sqrt(n)).")
    ] = 0,
    ivf_nprobe: Annotated[
        int,
        typer.Option(
            "--ivf-nprobe", min=0, help="IVF cells scanned per query (0: ~1,000 rows' worth)."
        ),
    ] = 0,
) -> None:
    """Embed a file of ID records with the configured encoders and write a reference store."""
    from monitor.embedding import ImageLimits, encoders_from_settings
    from monitor.reference import BuildOptions, build_store, read_id_records

    settings = load_for_compute(config)
    records = read_id_records(id_records)
    encoders = encoders_from_settings(settings.encoders)
    limits = ImageLimits(
        max_bytes=settings.encoders.image.max_bytes,
        max_pixels=settings.encoders.image.max_pixels,
    )
    options = BuildOptions(
        ood_k=ood_k,
        ood_tpr=ood_tpr,
        ivf_min_size=ivf_min_size,
        ivf_nlist=ivf_nlist,
        ivf_nprobe=ivf_nprobe,
    )
    with progress_bar() as progress:
        store = build_store(
            records,
            root=settings.reference.root,
            name=name,
            encoders=encoders,
            image_root=image_root or id_records.parent,
            image_limits=limits,
            options=options,
            replace=replace,
            progress=stage_reporter(progress),
        )
    echo(
        f"built reference store {store.name!r} at {store.path}: {len(store.ids)} records, "
        f"kinds {', '.join(store.kinds)}"
    )


def reference_show(
    name: Annotated[str, typer.Argument(help="Store name.", callback=store_name)] = "default",
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False,
    no_encoders: Annotated[
        bool,
        typer.Option(
            "--no-encoders",
            help="Do not load the configured encoders (their fingerprints are then not "
            "compared with the store's).",
        ),
    ] = False,
) -> None:
    """Counts, dims, fingerprints (and whether the configured encoders match), indexes, OOD
    threshold, calibration and estimator status."""
    from monitor.detection.calibrate import describe_calibration, describe_self_check
    from monitor.embedding import encoders_from_settings
    from monitor.reference import encoder_fingerprints, fingerprint_mismatches, load_store

    settings = load_settings(config)
    store = load_store(settings.reference.root, name)
    calibration = store.calibration
    differences: list[str] | None = None
    if not no_encoders:
        encoders = encoders_from_settings(settings.encoders)
        differences = fingerprint_mismatches(
            store.manifest, encoder_fingerprints(encoders), fusion=encoders.fusion
        )
    manifest = {k: v for k, v in store.manifest.items() if k != "files"}
    manifest["configured_encoders"] = {
        "checked": differences is not None,
        "match": None if differences is None else not differences,
        "differences": differences or [],
    }
    if as_json:
        typer.echo(json.dumps(manifest, indent=2, sort_keys=True))  # ASCII: nothing to escape
        return
    ood = store.ood
    echo(f"reference store {store.name!r} at {store.path} (checksums verified)")
    echo(f"  records:      {manifest['records']} (built {manifest['created_at']})")
    echo(
        f"  encoders:     image {manifest['encoders']['image']}, "
        f"text {manifest['encoders']['text']}, fusion {manifest['fusion']}"
    )
    echo(
        "  configured:   "
        + (
            "not compared (--no-encoders)"
            if differences is None
            else "encoders match"
            if not differences
            else "DIFFERENT encoders, commands will refuse this store: " + "; ".join(differences)
        )
    )
    for kind in store.kinds:
        index = manifest["index"][kind]
        echo(
            f"  {kind + ':':<13} {manifest['counts'][kind]} x {manifest['dims'][kind]}, "
            f"{index['kind']} index"
            + (
                f" (nlist {index['nlist']}, nprobe {index['nprobe']})"
                if index["kind"] == "ivf"
                else ""
            )
        )
    echo(f"  OOD:          k = {ood['k']}, threshold {ood['threshold']:.4f} at TPR {ood['tpr']}")
    echo(
        "  calibration:  "
        + (
            describe_calibration(calibration)
            if calibration
            else "none (run `mllm-monitor calibrate`)"
        )
    )
    for line in describe_self_check(calibration or {}):
        echo(f"    {line}")
    estimator = manifest.get("estimator")
    echo(
        "  estimator:    "
        + (
            f"CLUB {estimator['x_dim']}->{estimator['y_dim']} (hidden {estimator['hidden']}), "
            f"{estimator['source']}, version {estimator['version']}"
            if estimator
            else "none (run `mllm-monitor estimator train` or `estimator import`)"
        )
    )


def register(app: typer.Typer) -> None:
    """Add the ``reference`` group to the root app."""
    reference_app = typer.Typer(
        help="Build and inspect reference stores (the in-distribution data).", no_args_is_help=True
    )
    reference_app.command("build")(reference_build)
    reference_app.command("show")(reference_show)
    app.add_typer(reference_app, name="reference")
