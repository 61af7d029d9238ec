"""What the commands share: escaping of shown text, progress lines."""

from __future__ import annotations

import pytest

from monitor.commands._common import echo, one_line, printable


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain id-1", "plain id-1"),
        ("csi\x9b31mred", "csi\\x9b31mred"),  # C1 control: a one-byte CSI on many terminals
        ("abc\u202edcba", "abc\\u202edcba"),  # right-to-left override
        ("isolate\u2066x\u2069", "isolate\\u2066x\\u2069"),
        ("esc\x1b[2J", "esc\\x1b[2J"),
        ("zero\u200bwidth", "zero\\u200bwidth"),
        ("line\nbreak\ttab", "line\\nbreak\\ttab"),
        ("café 中文 ü", "café 中文 ü"),  # printable non-ASCII stays as it is
    ],
)
def test_printable_escapes_what_a_terminal_would_act_on(text: str, shown: str) -> None:
    assert printable(text) == shown
    assert one_line(text).replace(" ", "") == printable(" ".join(text.split())).replace(" ", "")


def test_echo_keeps_line_breaks_and_escapes_within_lines(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Multi-line output (a JSON document, a table) keeps its lines; what is in them is escaped
    (escaping the breaks too made ``reference show --json`` unreadable as JSON)."""
    echo('{\n  "id": "a\u202eb"\n}')
    assert capsys.readouterr().out == '{\n  "id": "a\\u202eb"\n}\n'


def test_a_long_run_off_a_terminal_writes_plain_progress_lines() -> None:
    """Logs and CI get a plain line per task (count, share, elapsed), none at zero, and the
    last count once more when the run ends; a terminal would get rich's bar instead."""
    from io import StringIO

    from rich.console import Console

    from monitor.commands._common import LinesProgress, progress_bar, stage_reporter

    out = StringIO()
    console = Console(file=out, force_terminal=False, width=200)
    with progress_bar(console=console, log_every=3600.0) as bar:
        assert isinstance(bar, LinesProgress)
        report = stage_reporter(bar)
        report("windows live", 0, 4)
        report("windows live", 1, 4)  # the first count is shown at once
        report("windows live", 3, 4)  # within log_every: not shown
        report("records from t.jsonl", 7, None)
    lines = out.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == [
        "windows live: 1/4 (25%)",
        "records from t.jsonl: 7",
        "windows live: 3/4 (75%)",
    ]
    assert all(line.endswith(" s") for line in lines)
