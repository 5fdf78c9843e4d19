"""Frozen-prefix cache: training time per step with and without it, alternated in one process.

    python bench/frozen_cache.py [--quick] [--pairs N] [--steps N] [--rows N]

Trains the embedded model (SmolLM2-135M-Instruct) with the finetune defaults (LoRA on the top half of the layers,
16 answer tokens per row, padding-free batches, precision auto) on `--rows` rows of the built-in `safe` set, for
`--steps` steps of 8 rows: two epochs, as a default trial has. Runs alternate uncached / cached so that load on the
shared machine falls on both alike. The first cached run starts from an empty store (a study's first trial: its
first epoch computes the bottom layers and stores them); the later cached runs find the store filled (the trials after
it). Printed per pair: seconds per step of each, their ratio, and the 1-minute load average: on a shared machine
compare the ratios, not the times.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics

import _common as C

from safety_lab.config import DataConfig, TrainConfig  # noqa: E402
from safety_lab.data import load_dataset  # noqa: E402
from safety_lab.models import load_model  # noqa: E402
from safety_lab.training import train_lora  # noqa: E402
from safety_lab.training.frozen import store_for  # noqa: E402


def _step_seconds(loaded, rows, cfg: TrainConfig) -> float:
    result = train_lora(loaded.model, loaded.tokenizer, rows, [], cfg, quiet=True)
    return result.seconds / cfg.max_steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 pairs of 4 steps on 16 rows")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rows", type=int, default=40)
    args = parser.parse_args()
    pairs, steps, n_rows = (2, 4, 16) if args.quick else (args.pairs, args.steps, args.rows)

    loaded = load_model()
    rows, _ = load_dataset(DataConfig(data="safe")).split(0.2, 0, 32)
    rows = rows[:n_rows]
    cached = TrainConfig(max_steps=steps, batch_size=8, eval_every=steps, frozen_cache=True)
    plain = dataclasses.replace(cached, frozen_cache=False)
    _step_seconds(loaded, rows, dataclasses.replace(plain, max_steps=1))  # warm-up: thread pool, allocator
    store_for(loaded.model).clear()

    print(f"{'pair':>4} {'store':>6} {'uncached s/step':>16} {'cached s/step':>14} {'ratio':>6} {'load 1m':>8}")
    figures = []
    for pair in range(pairs):
        state = "empty" if pair == 0 else "filled"
        off = _step_seconds(loaded, rows, plain)
        on = _step_seconds(loaded, rows, cached)
        load = os.getloadavg()[0]
        figures.append({"store": state, "uncached_s": off, "cached_s": on, "ratio": on / off, "loadavg_1m": load})
        print(f"{pair:>4} {state:>6} {off:>16.3f} {on:>14.3f} {on / off:>6.2f} {load:>8.2f}")
    filled = [f["ratio"] for f in figures if f["store"] == "filled"]
    summary = {
        "ratio_empty_store": round(figures[0]["ratio"], 3),
        "ratio_filled_store": round(statistics.median(filled), 3) if filled else None,
        "loadavg_1m_min": round(min(f["loadavg_1m"] for f in figures), 2),
        "loadavg_1m_max": round(max(f["loadavg_1m"] for f in figures), 2),
    }
    print(
        f"cached/uncached time per step: {summary['ratio_empty_store']} with an empty store (a first trial), "
        f"{summary['ratio_filled_store']} with a filled one (later trials); "
        f"load average {summary['loadavg_1m_min']}-{summary['loadavg_1m_max']} on {os.cpu_count()} cores"
    )
    C.save("frozen_cache", args.quick, {"steps": steps, "rows": n_rows, "pairs": figures, **summary})


if __name__ == "__main__":
    main()
