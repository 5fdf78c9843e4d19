"""Evaluation in bf16 weights against fp32 on one model: the time of each, and how many answers and verdicts change.

    python bench/eval_precision.py [--quick] [--model SPEC] [--limit N] [--suites asr,calibration,drift,form_swap]

Runs the evaluation's suites (`run_suites`, the default sets unless --limit) on the model in fp32 weights and then
in bf16 weights, as `evaluate --precision fp32` and `--precision auto` on a native-bf16 machine do. Printed: the
wall time of each and their ratio; per suite, each per-item column that differs between the two (the greedy
answer text, the judge's label, refused, correct, the chosen option) with the share of items where it does, and
the mean absolute change of the numeric ones (confidences); and the headline metrics of both. Where bf16 is not
native, the script says so and stops (emulated bf16 was hundreds of times slower).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import _common as C

from safety_lab.evaluation import EvalConfig, run_suites  # noqa: E402
from safety_lab.models import DEFAULT_MODEL, bf16_native, load_model  # noqa: E402

HEADLINE = ("asr", "over_refusal_rate", "mc_accuracy", "smooth_ece", "drift_accuracy_base", "drift_accuracy_false_info")


def _evaluate(model: str, cfg: EvalConfig):
    start = time.perf_counter()
    loaded = load_model(model, precision=cfg.resolved_precision())
    results = run_suites(loaded, cfg)
    return results, time.perf_counter() - start


def _changes(ours: list[dict], theirs: list[dict]) -> dict[str, float]:
    """column -> share of items whose value differs (mean absolute change for floats and lists of floats); only
    the columns that move."""
    out = {}
    for column in ours[0] if ours else {}:
        pairs = [(a.get(column), b.get(column)) for a, b in zip(ours, theirs)]
        if all(isinstance(a, float) and isinstance(b, float) for a, b in pairs):
            value = sum(abs(a - b) for a, b in pairs) / len(pairs)
        elif all(isinstance(a, list) and isinstance(b, list) and len(a) == len(b) for a, b in pairs):
            diffs = [abs(x - y) for a, b in pairs for x, y in zip(a, b) if isinstance(x, float)]
            value = sum(diffs) / len(diffs) if diffs else sum(a != b for a, b in pairs) / len(pairs)
        else:
            value = sum(a != b for a, b in pairs) / len(pairs)
        if value:
            out[column] = round(value, 4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="asr and calibration, 4 items per set, 8 tokens")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="a base model spec or models:/NAME/VERSION")
    parser.add_argument("--limit", type=int, default=None, help="items per set (default: all)")
    parser.add_argument("--suites", default=None, help="comma-separated suites (default: the evaluation's)")
    args = parser.parse_args()
    if not bf16_native("cpu"):
        print("bf16 is not native on this CPU: the evaluation stays in fp32 here, so there is nothing to compare")
        C.save("eval_precision", args.quick, {"skipped": "no native bf16"})
        return
    fp32 = EvalConfig(device="cpu", precision="fp32", limit=4 if args.quick else args.limit)
    suites = "asr,calibration" if args.quick and not args.suites else args.suites
    fp32 = dataclasses.replace(fp32, max_new_tokens=8) if args.quick else fp32
    fp32 = dataclasses.replace(fp32, suites=suites) if suites else fp32
    bf16 = dataclasses.replace(fp32, precision="auto")
    ours, fp32_s = _evaluate(args.model, fp32)
    theirs, bf16_s = _evaluate(args.model, bf16)
    load = os.getloadavg()[0]
    ratio = bf16_s / fp32_s
    print(f"{args.model}: fp32 {fp32_s:.1f} s, bf16 {bf16_s:.1f} s, bf16/fp32 time {ratio:.2f} (load {load:.2f})")
    changes = {}
    for name in ours:
        changes[name] = _changes(ours[name].rows, theirs[name].rows)
        moved = ", ".join(f"{k} {v}" for k, v in changes[name].items()) or "nothing"
        print(f"  {name} ({len(ours[name].rows)} items) changed: {moved}")
    flat = [(k, r.metrics.get(k), theirs[n].metrics.get(k)) for n, r in ours.items() for k in HEADLINE]
    metrics = {k: (a, b) for k, a, b in flat if a is not None}
    for k, (a, b) in metrics.items():
        print(f"  {k:28s} fp32 {a:.4f}  bf16 {b:.4f}")
    C.save(
        "eval_precision",
        args.quick,
        {
            "model": args.model,
            "fp32_s": round(fp32_s, 1),
            "bf16_s": round(bf16_s, 1),
            "ratio": round(ratio, 3),
            "changes": changes,
            "metrics": metrics,
            "loadavg_1m": round(load, 2),
        },
    )


if __name__ == "__main__":
    main()
