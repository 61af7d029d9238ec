"""``mllm-monitor estimator train|import`` and ``calibrate``: what a reference store needs
besides its embeddings (the CLUB estimator, the null distributions)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from monitor.commands._common import (
    ConfigOption,
    StoreOption,
    echo,
    open_configured_store,
    progress_bar,
)

# Training seeds numpy (no negative seed) and torch (none past 64 bits): either was exit 3.
SeedOption = Annotated[int, typer.Option(min=0, max=2**63 - 1, help="Random seed.")]


class CalibrationMethod(StrEnum):
    auto = "auto"
    pseudo_windows = "pseudo-windows"
    permutation = "permutation"


def estimator_train(
    reference: StoreOption = "default",
    config: ConfigOption = None,
    epochs: Annotated[int, typer.Option(min=1, help="Most epochs to train.")] = 200,
    hidden: Annotated[int, typer.Option(min=2, help="Hidden width (the paper: 500).")] = 500,
    patience: Annotated[
        int,
        typer.Option(
            min=1, help="Stop after this many epochs without a better held-out likelihood."
        ),
    ] = 10,
    seed: SeedOption = 0,
) -> None:
    """Train CLUB on the store's ID pairs (x with reference and with model answers)."""
    from monitor.reference import train_store_estimator

    _, store = open_configured_store(config, reference)
    with progress_bar() as progress:
        task = progress.add_task("training CLUB (epochs)", total=epochs)
        model = train_store_estimator(
            store,
            hidden=hidden,
            epochs=epochs,
            patience=patience,
            seed=seed,
            on_epoch=lambda report: progress.update(task, completed=report.epoch),
        )
    echo(
        f"trained CLUB for store {store.name!r}: best epoch {model.metadata['best_epoch']}, "
        f"held-out log-likelihood {model.metadata['holdout_loglik']:.3f}"
    )


def estimator_import(
    path: Annotated[
        Path,
        typer.Argument(
            help="CLUB state dict (e.g. the paper authors' CLUB_global.pt).", dir_okay=False
        ),
    ],
    reference: StoreOption = "default",
    config: ConfigOption = None,
) -> None:
    """Register an external CLUB state dict with a store, checking its dims."""
    from monitor.reference import import_store_estimator

    _, store = open_configured_store(config, reference)
    model = import_store_estimator(store, path)
    echo(
        f"imported CLUB {model.x_dim}->{model.y_dim} (hidden {model.hidden}) into store "
        f"{store.name!r}"
    )


def calibrate(
    reference: StoreOption = "default",
    config: ConfigOption = None,
    window_sizes: Annotated[
        str,
        typer.Option(
            "--window-sizes",
            help="Comma-separated window sizes (records) to calibrate; 'auto': those of "
            "50,100,200,500 that fit the store (a window may hold at most 5% of the pool).",
        ),
    ] = "auto",
    trials: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Pseudo-windows per size. Default: the minimum that alerts.false_alarm_rate "
            "needs over the 5 warning tests (500 at 0.01); fewer are refused.",
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    method: Annotated[
        CalibrationMethod,
        typer.Option(
            help="pseudo-windows: nulls drawn once from a pool of ID records (needs about 40 "
            "ID records per window record); permutation: nulls drawn per window by permuting "
            "the window with the ID records (any store size, more compute per window); auto: "
            "pseudo-windows when --window-sizes is given or 50-record windows fit, else "
            "permutation.",
        ),
    ] = CalibrationMethod.auto,
    window_fraction: Annotated[
        float | None,
        typer.Option(
            "--window-fraction",
            min=0.0,
            max=1.0,
            help="permutation: test a window on at most this fraction of the comparison's "
            "records (default 0.05). Larger fractions see smaller changes, but the false-alarm "
            "rate a given store delivers then strays from the configured one (exact only on "
            "average over ID sets; see the docs, 'Reference stores and calibration').",
        ),
    ] = None,
) -> None:
    """Null distributions of every term and of the bound: what each window is judged by."""
    from monitor.detection.calibrate import (
        calibrate_store,
        describe_calibration,
        describe_detector,
        describe_self_check,
    )

    sizes: list[int] | None = None
    if window_sizes.strip().lower() != "auto":
        try:
            sizes = [int(part) for part in window_sizes.split(",") if part.strip()]
        except ValueError as exc:
            raise typer.BadParameter(
                f"not a list of integers: {window_sizes!r}", param_hint="--window-sizes"
            ) from exc
    settings, store = open_configured_store(config, reference)
    with progress_bar() as progress:
        task = progress.add_task("calibrating (trials)", total=None)
        data = calibrate_store(
            store,
            window_sizes=sizes,
            trials=trials,
            seed=seed,
            false_alarm_rate=settings.alerts.false_alarm_rate,
            hysteresis=settings.alerts.trials_hysteresis,
            method=method.value,
            window_fraction=window_fraction,
            progress=lambda done, total: progress.update(task, completed=done, total=total),
            window=settings.windows.size,
            false_page_interval=settings.alerts.false_page_interval,
        )
    echo(f"calibrated store {store.name!r}: {describe_calibration(data)}")
    for line in describe_detector(data) + describe_self_check(data):
        echo(line)
    for term, reason in data.get("uncalibrated", {}).items():
        echo(f"  {term}: not calibrated ({reason})")


def register(app: typer.Typer) -> None:
    """Add the ``estimator`` group and the ``calibrate`` command to the root app."""
    estimator_app = typer.Typer(
        help="Train or import the CLUB estimator of a reference store.", no_args_is_help=True
    )
    estimator_app.command("train")(estimator_train)
    estimator_app.command("import")(estimator_import)
    app.add_typer(estimator_app, name="estimator")
    app.command("calibrate")(calibrate)
