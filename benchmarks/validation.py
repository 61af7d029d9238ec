"""Validation on real traffic: writes docs/validation.md.

Two parts (``--part coco|traffic|all``):

* coco (``validation_coco.py``): LLaVA-Bench (COCO) under text and image shifts, from the
  llava-bench-coco-shift directory (``--data``): JSD terms, bound, EMI and EMID with bootstrap
  intervals, permutation p-values, a clean-against-clean control, and the risk the product's
  window test gives one window of held-out questions per shift;
* traffic (``validation_traffic.py``): MMBench and MME records of the llava-eval-text directory
  (``--traffic-data``) posted to a running ``mllm-monitor serve`` the way the quickstart does:
  held-out MMBench windows as the false-alarm control, MME mixed in at several rates as the
  power curve, risk levels and detector state read back from the windows API.

The page is rendered by ``validation_render.py``.

    python benchmarks/validation.py --data DIR --traffic-data DIR [--part all]
        [--out docs/validation.md] [--resamples 200] [--splits 20]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from validation_coco import CocoRun, run_coco  # noqa: E402
from validation_render import page  # noqa: E402
from validation_traffic import TrafficPlan, TrafficRun, run_traffic  # noqa: E402

PARTS = ("coco", "traffic", "all")


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _rates(text: str) -> tuple[float, ...]:
    return tuple(float(v) / 100 for v in text.split(","))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--part", choices=PARTS, default="all")
    parser.add_argument("--data", type=Path, help="llava-bench-coco-shift directory (coco part)")
    parser.add_argument("--traffic-data", type=Path, help="llava-eval-text directory (traffic)")
    parser.add_argument("--out", type=Path, default=Path("docs/validation.md"))
    parser.add_argument("--resamples", type=int, default=200, help="bootstrap and permutations")
    parser.add_argument("--splits", type=int, default=20, help="clean-vs-clean control splits")
    defaults = TrafficPlan()
    parser.add_argument("--reference", type=int, default=defaults.reference_records)
    parser.add_argument("--id-windows", type=int, default=defaults.id_windows)
    parser.add_argument("--mix-windows", type=int, default=defaults.mix_windows)
    parser.add_argument(
        "--mix-percent",
        type=_rates,
        default=defaults.mix_rates,
        help="MME shares of the mix streams, in percent, comma-separated (5,10,25,50,100)",
    )
    parser.add_argument(
        "--mmvet-percent",
        type=_rates,
        default=defaults.mmvet_rates,
        help="MM-Vet shares of the mmvet streams, in percent, comma-separated (25)",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    args = parser.parse_args(argv)
    coco_wanted, traffic_wanted = args.part in ("coco", "all"), args.part in ("traffic", "all")
    if coco_wanted and args.data is None:
        parser.error("the coco part needs --data (the llava-bench-coco-shift directory)")
    if traffic_wanted and args.traffic_data is None:
        parser.error("the traffic part needs --traffic-data (the llava-eval-text directory)")

    from monitor.compute import apply_compute_settings
    from monitor.config import ComputeSettings

    apply_compute_settings(ComputeSettings(threads=1))
    coco: CocoRun | None = None
    traffic: TrafficRun | None = None
    command = f"python benchmarks/validation.py --part {args.part}"
    data_lines = []
    seconds: dict[str, float] = {}
    if coco_wanted:
        began = time.monotonic()
        coco = run_coco(args.data, resamples=args.resamples, splits=args.splits, log=_log)
        command += f" --data COCO --resamples {args.resamples} --splits {args.splits}"
        data_lines.append("COCO is the llava-bench-coco-shift directory")
        seconds["COCO"] = time.monotonic() - began
    if traffic_wanted:
        plan = TrafficPlan(
            reference_records=args.reference,
            id_windows=args.id_windows,
            mix_windows=args.mix_windows,
            mix_rates=args.mix_percent,
            mmvet_rates=args.mmvet_percent,
            seed=args.seed,
        )
        began = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="validation-traffic-") as workdir:
            traffic = run_traffic(args.traffic_data, Path(workdir) / "ws", plan, log=_log)
        seconds["traffic"] = time.monotonic() - began
        percents = ",".join(f"{round(r * 100)}" for r in plan.mix_rates)
        mmvet = ",".join(f"{round(r * 100)}" for r in plan.mmvet_rates)
        command += (
            f" --traffic-data TEXT --reference {plan.reference_records} --id-windows "
            f"{plan.id_windows} --mix-windows {plan.mix_windows} --mix-percent {percents} "
            f"--mmvet-percent {mmvet} "
            f"--seed {plan.seed}"
        )
        data_lines.append(
            "TEXT is the llava-eval-text directory (llava-v1.5-13b on MMBench, MME, MM-Vet)"
        )
    command += f" --out {args.out}"
    where = "where " + ", and ".join(data_lines) + "."
    text = page(coco, traffic, command=command, data=where, seconds=seconds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    _log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
