"""The LM head on labelled positions only vs TRL's head on every position: train_lora side by side, one process.

    OMP_WAIT_POLICY=PASSIVE python bench/head_positions.py [--steps 5] [--rounds 2]

Both variants are `train_lora` with the same model (SmolLM2-135M-Instruct), rows (the `safe` train split), seed
and TrainConfig defaults (batch 8, max_length 256, precision auto); `old` turns off
`safety_lab.training.score_labelled_positions_only`. Runs go old, new, new, old, ... so that a drift in other
people's load hits both; the first step of each run is warm-up and left out. Prints the 1-minute load average
around every run, tokens/s per variant and the new/old ratio (wall and process CPU time).
"""

from __future__ import annotations

import argparse
import os

import _common as C
from train_throughput import run_project  # noqa: E402

from safety_lab import training  # noqa: E402
from safety_lab.config import DataConfig, TrainConfig  # noqa: E402
from safety_lab.data import load_dataset  # noqa: E402
from safety_lab.models import load_model  # noqa: E402


def run(variant: str, model, tok, rows, cfg: TrainConfig) -> dict:
    """One train_lora run of `variant` ("old": TRL's head on every position; "new": labelled positions only)."""
    original = training.score_labelled_positions_only
    if variant == "old":
        training.score_labelled_positions_only = lambda trainer: None
    try:
        load = os.getloadavg()[0]
        result = run_project(model, tok, rows, cfg)
    finally:
        training.score_labelled_positions_only = original
    result["load"] = (load, os.getloadavg()[0])
    print(
        f"[{variant}] {result['tokens_per_s']:.1f} tok/s, {result['tokens_per_cpu_s']:.1f} tok/cpu-s, steps "
        f"{result['step_seconds']}, load {result['load'][0]:.2f} -> {result['load'][1]:.2f}, losses {result['losses']}",
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="steps per run, the first untimed (default 5)")
    parser.add_argument("--rounds", type=int, default=2, help="old-new-new-old rounds (default 2: 4 runs)")
    args = parser.parse_args()
    loaded = load_model()
    rows, _ = load_dataset(DataConfig(data="safe")).split(0.2, 0, 32)
    cfg = TrainConfig(max_steps=args.steps, device="cpu")
    runs = {"old": [], "new": []}
    for _ in range(args.rounds):
        for variant in ("old", "new", "new", "old"):
            runs[variant].append(run(variant, loaded.model, loaded.tokenizer, rows, cfg))
    totals = {}
    for variant, results in runs.items():
        tokens = sum(r["tokens"] for r in results)
        totals[variant] = (tokens / sum(r["seconds"] for r in results), tokens / sum(r["cpu_seconds"] for r in results))
    wall, cpu = (totals["new"][i] / totals["old"][i] for i in (0, 1))
    loss_gap = max(abs(a - b) for o, n in zip(runs["old"], runs["new"]) for a, b in zip(o["losses"], n["losses"]))
    print(f"new/old: {wall:.2f}x wall, {cpu:.2f}x by CPU time; training losses differ by <= {loss_gap:.2e}")
    C.save("head_positions", False, {"runs": runs, "new_vs_old": wall, "new_vs_old_cpu": cpu, "loss_gap": loss_gap})


if __name__ == "__main__":
    main()
