"""``mllm-monitor windows explain ID``: why a window got its risk level.

* Each term as stored: value, null threshold, p-value, and its share of the scale-adjusted
  bound (the bound is a sum of per-term contributions, :func:`emid_upper_bound`).
* The risk decision, re-derived with the daemon's own code: the window's embeddings read as the
  pipeline reads them (:func:`monitor.pipeline.read_window`), its terms judged by the stream's
  current calibration (:meth:`StreamModel.estimate`), the drift detector stepped from the
  state stored with the window before (or, with ``alerts.hysteresis = "k/m"``, the k-of-m
  rule applied to the windows before it) (:func:`monitor.detection.risk.assess_risk`); the
  history is listed. The reasons printed are the ones the rule returned, and the rule in
  effect is put into words by :func:`monitor.detection.risk.describe_policy`, beside it.
* The detector: the window's score, the statistic, threshold and clear level, whether it is
  alarmed, and why that makes the window critical or not.
* The top-k most out-of-distribution samples of the window, most shifted first: sample id, kNN
  distance (the OOD score the workers stored), whether it is over the store's threshold, the
  ids of its nearest ID records in the reference store, and the raw prompt / answer only where
  raw retention kept them.
"""

from __future__ import annotations

import heapq
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import typer

from monitor.commands._common import (
    ConfigOption,
    JsonOption,
    echo,
    load,
    no_window,
    parse_window_id,
)
from monitor.errors import MonitorError
from monitor.records import WINDOW_TERMS, DetectorReading, WindowResult
from monitor.services import services

if TYPE_CHECKING:  # the detection package imports the numerical stack: not at CLI start
    from monitor.detection.risk import RiskDecision, RiskPolicy

DEFAULT_TOP_K = 10
NEIGHBOURS = 3
RAW_CHARS = 200
DETECTOR_HISTORY = 3  # windows before listed in the detector's mode


@dataclass(frozen=True)
class OODSample:
    id: str
    event_time: str
    ood_score: float
    over_threshold: bool
    nearest_id: list[str]
    nearest_similarity: list[float]
    prompt: str | None = None
    response: str | None = None


def term_table(window: WindowResult) -> list[dict[str, Any]]:
    """Per term: value, threshold, p-value, contribution to the bound and share of it."""
    from monitor.estimators.emi import emid_upper_bound

    jsd, thresholds, p_values = window.jsd, window.thresholds, window.p_values
    contributions: dict[str, float | None] = {}
    if window.status == "ok":
        bound = emid_upper_bound(jsd.visual, jsd.text, jsd.output_id, jsd.output_live)
        contributions = dict(bound.terms)
    total = sum(v for v in contributions.values() if v is not None)
    rows = []
    for term in WINDOW_TERMS:
        part = contributions.get(term)
        rows.append(
            {
                "term": term,
                "value": getattr(jsd, term),
                "threshold": getattr(thresholds, term),
                "p_value": getattr(p_values, term),
                "bound_contribution": part,
                "bound_share": part / total if part is not None and total > 0 else None,
                "in_bound": term != "response",
            }
        )
    return rows


def top_ood_samples(
    repository: Any, store: Any, window: WindowResult, k: int, fusion: str
) -> list[OODSample]:
    """The k samples of the window with the largest kNN OOD score, largest first."""
    from monitor.embedding.fusion import fuse
    from monitor.estimators.arrays import l2_normalise
    from monitor.reference.index import search

    key = window.key
    mode: Any = fusion
    heap: list[tuple[float, int, str, str, np.ndarray]] = []
    counter = 0
    for chunk in repository.iter_embeddings(
        key.stream, key.start, key.end, kinds=("prompt", "image")
    ):
        prompt_at = {int(pos): row for row, pos in enumerate(chunk.index["prompt"])}
        image_at = {int(pos): row for row, pos in enumerate(chunk.index["image"])}
        for pos, score in enumerate(chunk.ood_scores):
            if np.isnan(score) or pos not in prompt_at:
                continue
            if len(heap) == k and score <= heap[0][0]:
                continue
            prompt = chunk.vectors["prompt"][prompt_at[pos]].astype(np.float32)
            has_image = pos in image_at
            image = chunk.vectors["image"][image_at[pos]][None, :] if has_image else None
            if image is None and fusion == "concat":  # x of a text-only record: zero image
                width = int(store.manifest["dims"]["query"]) - len(prompt)
                image = np.zeros((1, width), dtype=np.float32)
            x = fuse(prompt[None, :], image, np.array([has_image]), mode)[0]
            item = (float(score), counter, chunk.sample_ids[pos], str(chunk.event_times[pos]), x)
            counter += 1
            if len(heap) < k:
                heapq.heappush(heap, item)
            else:
                heapq.heapreplace(heap, item)
    chosen = sorted(heap, key=lambda item: (-item[0], item[2]))
    if not chosen:
        return []
    threshold = float(store.ood["threshold"]) if store.ood else float("inf")
    neighbours: list[list[str]] = [[] for _ in chosen]
    similarities: list[list[float]] = [[] for _ in chosen]
    if "query" in store.kinds:
        queries = l2_normalise(np.stack([item[4] for item in chosen]))
        sims, rows = search(store.index("query"), queries, NEIGHBOURS)
        for i in range(len(chosen)):
            pairs = [(int(r), float(s)) for r, s in zip(rows[i], sims[i], strict=True) if r >= 0]
            neighbours[i] = [store.ids[r] for r, _ in pairs]
            similarities[i] = [round(s, 6) for _, s in pairs]
    out = []
    for i, (score, _, sample_id, moment, _) in enumerate(chosen):
        raw = repository.get_raw(sample_id)
        out.append(
            OODSample(
                id=sample_id,
                event_time=moment,
                ood_score=score,
                over_threshold=score > threshold,
                nearest_id=neighbours[i],
                nearest_similarity=similarities[i],
                prompt=_cut(raw.prompt) if raw is not None else None,
                response=_cut(raw.response) if raw is not None else None,
            )
        )
    return out


def _cut(text: str | None) -> str | None:
    if text is None:
        return None
    return text if len(text) <= RAW_CHARS else text[:RAW_CHARS] + "..."


def rule_explanation(policy: RiskPolicy) -> dict[str, Any]:
    """The rule in effect, in words from the risk module (next to the code that applies it)."""
    from monitor.detection.risk import describe_policy
    from monitor.detection.window_stats import TESTED_TERMS

    lines = describe_policy(policy, TESTED_TERMS).lines()
    return {"rule": ". ".join(lines) + ".", "rule_lines": list(lines)}


def decision_explanation(decision: RiskDecision) -> dict[str, Any]:
    """The level and the reasons exactly as the rule gave them (none when the level is 0)."""
    return {"recomputed_risk_level": int(decision.level), "reasons": list(decision.reasons)}


def risk_explanation(found: Any, window: WindowResult) -> dict[str, Any]:
    """The risk decision re-derived by the daemon's code, with the history before it."""
    from monitor.detection.risk import WindowSignals, assess_risk
    from monitor.detection.window_model import judge_window
    from monitor.pipeline import WindowPipeline, read_window

    settings = found.settings
    key = window.key
    pipeline = WindowPipeline(settings, found.repository, found.stores, found.metrics)
    policy = pipeline.policy
    model = pipeline.model(key.stream)
    # The k-of-m rule's history, or the detector's last few states.
    count = DETECTOR_HISTORY if policy.detector else policy.m - 1
    previous = found.repository.recent_windows(key.stream, key.start, count)
    history = [
        {
            "id": w.id,
            "start": w.to_dict()["start"],
            "risk_level": int(w.risk_level),
            "bound": w.bound_scale_adjusted,
            "bound_significant": w.bound_significant,
            "detector_statistic": w.detector.statistic if w.detector is not None else None,
            "detector_alarmed": w.detector.alarmed if w.detector is not None else None,
        }
        for w in previous
    ]
    out: dict[str, Any] = {
        "stored_risk_level": int(window.risk_level),
        **rule_explanation(policy),
        "history": history,
        "detector": None,
    }
    before = pipeline.state_before(key)
    if window.status != "ok":
        if model.detector is not None:
            out["detector"] = detector_explanation(model.detector, window, before, None)
        out.update(decision_explanation(assess_risk(WindowSignals(sufficient=False), [], policy)))
        out["note"] = f"n = {window.n} < windows.min_samples {settings.windows.min_samples}"
        return out
    data = read_window(
        found.repository,
        key,
        max_samples=settings.windows.max_compute_samples,
        ood_threshold=model.ood_threshold,
    )
    if data is None:
        out.update(recomputed_risk_level=None, reasons=[], note="the window's samples are gone")
        return out
    from monitor.pipeline import window_seed

    estimate = model.estimate(data, seed=window_seed(key))
    assessment = estimate.assessment
    # The pipeline's own verdict (monitor.detection.window_model), not a copy of it.
    verdict = judge_window(
        estimate,
        detector=model.detector,
        before=before,
        previous=pipeline.previous_signals(key),
        policy=policy,
    )
    decision = verdict.decision
    if model.detector is not None:
        out["detector"] = detector_explanation(model.detector, window, before, verdict.detector)
    out.update(decision_explanation(decision))
    out.update(
        calibrated=assessment.calibrated,
        tests=assessment.tests,
        term_level=assessment.term_level,
        significant_terms=list(assessment.significant_terms),
        bound_significant=assessment.bound_significant,
        bound_tail_p_value=assessment.bound_tail_p_value,
        response_tail_p_value=assessment.response_tail_p_value,
        ood_fraction=data.ood_fraction,
        ood_threshold=assessment.ood_threshold,
    )
    return out


def detector_explanation(
    detector: Any, window: WindowResult, before: Any, recomputed: DetectorReading | None
) -> dict[str, Any]:
    """The drift detector at ``window``: as stored, as recomputed now (None: not recomputed,
    an insufficient window), its settings, and why it makes the window critical or not."""
    shown = recomputed if recomputed is not None else window.detector
    previous = before.statistic if before is not None else 0.0
    was_alarmed = bool(before.alarmed) if before is not None else False
    out: dict[str, Any] = {
        "stored": window.detector.to_dict() if window.detector is not None else None,
        "recomputed": recomputed.to_dict() if recomputed is not None else None,
        "previous_statistic": previous,
        "previous_alarmed": was_alarmed,
        "threshold": detector.threshold,
        "clear_level": detector.clear_level,
        "cap": detector.cap,
        "drift": detector.drift,
        "score": shown.score if shown is not None else None,
        "statistic": shown.statistic if shown is not None else None,
        "alarmed": shown.alarmed if shown is not None else None,
        "why": _detector_why(detector, shown, previous, was_alarmed),
    }
    return out


def _detector_why(
    detector: Any, reading: DetectorReading | None, previous: float, was: bool
) -> str:
    if reading is None:
        return "no detector reading stored with this window"
    s, t, c = reading.statistic, detector.threshold, detector.clear_level
    if reading.score is None:
        step = f"no score (insufficient window): the state is carried over, statistic {s:.4g}"
    else:
        step = (
            f"statistic = min(cap {detector.cap:.4g}, max(0, {previous:.4g} + score "
            f"{reading.score:.4g} - drift {detector.drift:.4g})) = {s:.4g}"
        )
    if reading.alarmed and not was:
        verdict = f"critical: it passed the threshold {t:.4g} (a page starts)"
    elif reading.alarmed:
        verdict = (
            f"critical: alarmed since it passed the threshold {t:.4g}, and still above the "
            f"clear level {c:.4g}"
        )
    elif was:
        verdict = f"not critical: it fell to the clear level {c:.4g} or below (the page clears)"
    else:
        verdict = f"not critical: at or under the threshold {t:.4g}"
    return f"{step}; {verdict}"


def explain_window(found: Any, window_id: str, top_k: int) -> dict[str, Any]:
    window = found.repository.get_window(parse_window_id(window_id))
    if window is None:
        raise no_window(window_id)
    store = found.stores.get(window.key.stream)
    if store is None:
        raise MonitorError(f"stream {window.key.stream!r} is not configured")
    fusion = store.manifest.get("fusion", "mean")
    samples = top_ood_samples(found.repository, store, window, top_k, fusion)
    return {
        "window": window.to_dict(),
        "terms": term_table(window),
        "risk": risk_explanation(found, window),
        "top_ood_samples": [vars(s) for s in samples],
    }


def _fmt(value: Any, spec: str = ".4g") -> str:
    return "-" if value is None else format(value, spec)


def _print(data: dict[str, Any]) -> None:
    w = data["window"]
    echo(
        f"window {w['id']}  stream {w['stream']}  {w['start']} .. {w['end']}  n={w['n']} "
        f"({w['status']}), risk level {w['risk_level']}"
    )
    bound = w["upper_bound"]
    echo(
        f"bound (scale-adjusted) {_fmt(bound['scale_adjusted'])}, threshold "
        f"{_fmt(bound.get('threshold'))}, p {_fmt(bound.get('p_value'), '.3g')}; "
        f"OOD fraction {_fmt(w['ood_fraction'])} (threshold {_fmt(w.get('ood_threshold'))})"
    )
    echo("")
    echo(f"{'term':<12} {'value':>9} {'threshold':>10} {'p-value':>9} {'share of bound':>15}")
    for row in data["terms"]:
        share = row["bound_share"]
        echo(
            f"{row['term']:<12} {_fmt(row['value']):>9} {_fmt(row['threshold']):>10} "
            f"{_fmt(row['p_value'], '.3g'):>9} "
            f"{'-' if share is None else f'{100 * share:.0f}%':>15}"
            + ("" if row["in_bound"] else "  (not in the bound)")
        )
    _print_risk(data["risk"])
    echo("")
    samples = data["top_ood_samples"]
    echo(f"most out-of-distribution samples ({len(samples)}):")
    for s in samples:
        flag = " OOD" if s["over_threshold"] else ""
        echo(
            f"  {s['id']}  kNN distance {s['ood_score']:.4f}{flag}  nearest ID: "
            + ", ".join(s["nearest_id"])
        )
        if s["prompt"] is not None:
            echo(f"      prompt: {json.dumps(s['prompt'], ensure_ascii=False)}")


def _print_risk(risk: dict[str, Any]) -> None:
    """The decision: the reasons exactly as the rule gave them, then the rule in effect."""
    echo("")
    echo(
        f"risk: stored level {risk['stored_risk_level']}, recomputed now "
        f"{risk.get('recomputed_risk_level')}"
    )
    if risk.get("note"):
        echo(f"  ({risk['note']})")
    echo("  reasons the rule gave:" if risk["reasons"] else "  reasons the rule gave: none")
    for reason in risk["reasons"]:
        echo(f"  - {reason}")
    if risk.get("bound_significant") and risk.get("recomputed_risk_level") == 0:
        echo("  the bound is significant in this window, which alone raises no level")
    echo("  rule in effect:")
    for line in risk["rule_lines"]:
        echo(f"    {line}")
    detector = risk.get("detector")
    if detector is not None:
        echo(
            f"detector: score {_fmt(detector['score'], '.3g')}, statistic "
            f"{_fmt(detector['statistic'])}, threshold {_fmt(detector['threshold'])}, "
            f"clear level {_fmt(detector['clear_level'])}, alarmed {detector['alarmed']}"
        )
        echo(f"  {detector['why']}")
        stored = detector["stored"]
        if stored is not None and detector["recomputed"] is not None:
            echo(f"  stored: statistic {_fmt(stored['statistic'])}, alarmed {stored['alarmed']}")
    if risk["history"]:
        echo("  windows before:")
        for h in risk["history"]:
            echo(
                f"    {h['start']}  level {h['risk_level']}  bound {_fmt(h['bound'])}  "
                f"significant {h['bound_significant']}  detector "
                f"{_fmt(h['detector_statistic'])}" + (" (alarmed)" if h["detector_alarmed"] else "")
            )


def register(windows_app: typer.Typer) -> None:
    @windows_app.command("explain")
    def windows_explain(
        window_id: Annotated[str, typer.Argument(help="Window id (from `windows list`).")],
        config: ConfigOption = None,
        top_k: Annotated[
            int, typer.Option("--top-k", "-k", min=1, max=1000, help="OOD samples to list.")
        ] = DEFAULT_TOP_K,
        as_json: JsonOption = False,
    ) -> None:
        """Why a window has its risk level: terms against thresholds, the rule that fired
        (the drift detector's statistic, threshold and clear level, or the k-of-m history), and
        its most out-of-distribution samples."""
        parse_window_id(window_id)  # an id no window can have: said before loading anything
        settings = load(config, compute=True)
        with services(settings, encoders=False) as found:
            data = explain_window(found, window_id, top_k)
        if as_json:
            typer.echo(json.dumps(data, indent=2, default=str))
        else:
            _print(data)
