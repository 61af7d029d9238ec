"""``mllm-monitor windows list|show``: computed windows, as GET /v1/windows shows them
(``windows explain`` is in :mod:`monitor.commands.explain`)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from monitor.commands._common import (
    TIME_HELP,
    ConfigOption,
    echo,
    no_window,
    parse_window_id,
    time_option,
)
from monitor.config import load_settings


def windows_list(
    config: ConfigOption = None,
    stream: Annotated[
        str | None,
        typer.Option("--stream", "-s", help="Only this stream (default: every configured one)."),
    ] = None,
    since: Annotated[
        str | None, typer.Option(help=f"Windows ending after this time. {TIME_HELP}")
    ] = None,
    until: Annotated[
        str | None, typer.Option(help=f"Windows starting before this time. {TIME_HELP}")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help='Print {"windows": [...]} as GET /v1/windows does.')
    ] = False,
) -> None:
    """Computed windows, oldest first: risk level, size, bound, the drift detector's
    statistic / threshold (alarmed while it pages) and the smallest p-value."""
    from monitor.store.repository import open_repository

    start, end = time_option(since, "since"), time_option(until, "until")
    settings = load_settings(config)
    names = [s.name for s in settings.streams]
    if stream is not None and stream not in names:
        raise typer.BadParameter(
            f"stream {stream!r} is not configured (configured: {', '.join(names)})",
            param_hint="--stream",
        )
    repository = open_repository(settings)
    try:
        found = repository.list_windows([stream] if stream else names, since=start, until=end)
    finally:
        repository.close()
    if as_json:
        typer.echo(json.dumps({"windows": [w.to_dict() for w in found]}, indent=2))
        return
    if not found:
        typer.echo("no windows")
        return
    echo(
        f"{'id':>6}  {'stream':<12} {'start':<20} {'n':>6}  risk  status        bound  "
        f"{'detector':<22} p"
    )
    for window in found:
        data = window.to_dict()
        bound = data["upper_bound"]["scale_adjusted"]
        p_values = {k: v for k, v in data["p_values"].items() if v is not None}
        smallest = min(p_values.items(), key=lambda kv: kv[1]) if p_values else None
        echo(
            f"{data['id']:>6}  {data['stream']:<12} {data['start']:<20} {data['n']:>6}  "
            f"{data['risk_level']:>4}  {data['status']:<12} "
            f"{'-' if bound is None else f'{bound:.4f}':>6}  "
            f"{_detector(data['detector']):<22} "
            + (f"{smallest[0]}={smallest[1]:.3g}" if smallest else "-")
        )


def _detector(reading: dict[str, Any] | None) -> str:
    """statistic/threshold of the drift detector, "alarmed" while it pages; - without one."""
    if reading is None:
        return "-"
    text = f"{reading['statistic']:.4g}/{reading['threshold']:.4g}"
    return f"{text} alarmed" if reading["alarmed"] else text


def windows_show(
    window_id: Annotated[str, typer.Argument(help="Window id (from `windows list`).")],
    config: ConfigOption = None,
) -> None:
    """One window as JSON (the shape of GET /v1/windows/ID)."""
    from monitor.store.repository import open_repository

    key = parse_window_id(window_id)
    settings = load_settings(config)
    repository = open_repository(settings)
    try:
        found = repository.get_window(key)
    finally:
        repository.close()
    if found is None:
        raise no_window(window_id)
    typer.echo(json.dumps(found.to_dict(), indent=2))


def register(app: typer.Typer) -> typer.Typer:
    """Add the ``windows`` group to the root app; the group, for more commands."""
    windows_app = typer.Typer(
        help="List and show computed windows (the JSON of GET /v1/windows).", no_args_is_help=True
    )
    windows_app.command("list")(windows_list)
    windows_app.command("show")(windows_show)
    app.add_typer(windows_app, name="windows")
    return windows_app
