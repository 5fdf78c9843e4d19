"""One change to the training step, off and on: train_lora side by side in one process, alternated.

    OMP_WAIT_POLICY=PASSIVE python bench/step_changes.py [--change head ...] [--steps 6] [--rounds 2] [--quick]

Each change has a switch (CHANGES) that puts the previous code path back for the `off` runs. Both variants are
`train_lora` with the same model (SmolLM2-135M-Instruct), rows (the `safe` train split), seed and the finetune
defaults (precision auto, the top half of the layers adapted, 16 answer tokens, the frozen-prefix cache). Runs go
off, on, on, off, ... so that a drift in other people's load hits both; the first step of each run is warm-up and
left out, and one untimed run first fills the frozen-prefix store that every later run reads. Prints the 1-minute
load average around every run, seconds per step of each variant, the on/off ratio (wall and process CPU time) and
how far the training losses moved.

    head   the LM head on a CPU: `training.head.log_probs` (one dense log-softmax, the frozen weight cast once)
           against TRL's tiled kernel (`trl.kernels.ChunkedLogProbFunction`), both on the labelled positions only
    positions  the LM head on the labelled positions only (`training.score_labelled_positions_only`) against TRL's
           head as it ships on a CPU, every position of the batch, prompt tokens included (was head_positions.py)
"""

from __future__ import annotations

import argparse
import contextlib
import os

import _common as C
from train_throughput import run_project  # noqa: E402

from safety_lab import training  # noqa: E402
from safety_lab.config import DataConfig, TrainConfig  # noqa: E402
from safety_lab.data import load_dataset  # noqa: E402
from safety_lab.models import load_model  # noqa: E402


@contextlib.contextmanager
def _trl_head():
    original = training.dense_head
    training.dense_head = None  # `score_labelled_positions_only` then keeps TRL's kernel
    try:
        yield
    finally:
        training.dense_head = original


@contextlib.contextmanager
def _every_position():
    original = training.score_labelled_positions_only
    training.score_labelled_positions_only = lambda trainer: None  # TRL's head as it ships: every position scored
    try:
        yield
    finally:
        training.score_labelled_positions_only = original


# change -> a context manager under which train_lora runs as before the change
CHANGES = {"head": _trl_head, "positions": _every_position}


def run(change: str, variant: str, model, tok, rows, cfg: TrainConfig) -> dict:
    """One train_lora run with `change` off (the previous path) or on (the code as it is)."""
    load = os.getloadavg()[0]
    with CHANGES[change]() if variant == "off" else contextlib.nullcontext():
        result = run_project(model, tok, rows, cfg)
    result["load"] = (load, os.getloadavg()[0])
    per_step = [round(s, 3) for s in result["step_seconds"]]
    print(f"[{change} {variant}] s/step {per_step}, load {load:.2f} -> {result['load'][1]:.2f}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--change", choices=sorted(CHANGES), nargs="*", help="default: each change in turn")
    parser.add_argument("--steps", type=int, default=6, help="steps per run, the first untimed (default 6)")
    parser.add_argument("--rounds", type=int, default=2, help="off-on-on-off rounds (default 2: 4 runs each)")
    parser.add_argument("--quick", action="store_true", help="3 steps, 1 round: a smoke run")
    args = parser.parse_args()
    steps, rounds = (3, 1) if args.quick else (args.steps, args.rounds)
    loaded = load_model()
    rows, _ = load_dataset(DataConfig(data="safe")).split(0.2, 0, 32)
    cfg = TrainConfig(max_steps=steps, device="cpu")
    run(sorted(CHANGES)[0], "on", loaded.model, loaded.tokenizer, rows, cfg)  # untimed: fills the frozen-prefix store
    for change in args.change or sorted(CHANGES):
        compare(change, rounds, loaded, rows, cfg, args.quick)


def compare(change: str, rounds: int, loaded, rows, cfg: TrainConfig, quick: bool) -> None:
    """`rounds` of off, on, on, off runs of `change`; prints and saves the on/off ratio."""
    runs = {"off": [], "on": []}
    for _ in range(rounds):
        for variant in ("off", "on", "on", "off"):
            runs[variant].append(run(change, variant, loaded.model, loaded.tokenizer, rows, cfg))
    per_step = {v: sum(r["seconds"] for r in rs) / sum(r["timed_steps"] for r in rs) for v, rs in runs.items()}
    cpu = {v: sum(r["cpu_seconds"] for r in rs) for v, rs in runs.items()}
    wall, by_cpu = per_step["on"] / per_step["off"], cpu["on"] / cpu["off"]
    gap = max(abs(a - b) for o, n in zip(runs["off"], runs["on"]) for a, b in zip(o["losses"], n["losses"]))
    print(
        f"{change}: {per_step['off']:.3f} s/step off, {per_step['on']:.3f} on; on/off {wall:.3f} by wall time, "
        f"{by_cpu:.3f} by CPU time ({C.verdict(wall < 1)}: on < off); training losses differ by <= {gap:.2e}"
    )
    C.save(
        "step_changes",
        quick,
        {"change": change, "runs": runs, "per_step": per_step, "on_vs_off": wall, "on_vs_off_cpu": by_cpu,
         "loss_gap": gap},
    )  # fmt: skip


if __name__ == "__main__":
    main()
