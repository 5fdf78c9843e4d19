"""Preference-stage step time with each answer cut to its opening tokens against whole answers, alternated in one
process.

    python bench/dpo_step.py [--quick] [--pairs N] [--steps N] [--answer-tokens N]

Runs TRL's DPOTrainer as the preference stage does (`train_preference`: the finetune defaults, batch 8, the reference
per batch, LoRA on the top half of the layers, precision auto) on the embedded model (SmolLM2-135M-Instruct) with a
fresh adapter, over the pairs of the built-in `safe` set's training rows (written rejected answers: the on-policy
ones `make run` uses are longer, so whole answers cost more there than here). Runs alternate whole / cut so that
load on the shared machine falls on both alike. Printed per pair: seconds per step of each, their ratio, and the
1-minute load average: on a shared machine compare the ratios, not the times.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics

import _common as C

from safety_lab.config import DataConfig, DpoConfig, TrainConfig  # noqa: E402
from safety_lab.data import load_dataset  # noqa: E402
from safety_lab.data.pairs import preference_pairs  # noqa: E402
from safety_lab.models import load_model  # noqa: E402
from safety_lab.training import lora_config  # noqa: E402
from safety_lab.training.preference import train_preference  # noqa: E402


def _step_seconds(peft_model, tokenizer, pairs, cfg: DpoConfig, train: TrainConfig) -> float:
    result = train_preference(copy.deepcopy(peft_model), tokenizer, pairs, cfg, train, quiet=True)
    return result.seconds / cfg.dpo_steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sizes = (
        ("--pairs", 3, "whole/cut pairs of runs"),
        ("--steps", 6, "DPO steps per run"),
        ("--answer-tokens", DpoConfig().dpo_answer_tokens, "the cut (default: dpo_answer_tokens)"),
    )
    for flag, default, text in sizes:
        parser.add_argument(flag, type=int, default=default, help=text)
    parser.add_argument("--quick", action="store_true", help="2 pairs of 2 steps")
    args = parser.parse_args()
    rounds, steps = (2, 2) if args.quick else (args.pairs, args.steps)

    from peft import get_peft_model

    loaded = load_model()
    train = TrainConfig()
    model = get_peft_model(loaded.model, lora_config(train, loaded.model))
    data = DataConfig(data="safe")
    rows, _ = load_dataset(data).split(data.val_fraction, data.seed, data.max_val_rows)
    pairs = preference_pairs(rows)  # hundreds of pairs: the reference runs per batch, as in a 40-step stage
    cut = DpoConfig(dpo_steps=steps, dpo_answer_tokens=args.answer_tokens)
    whole = DpoConfig(dpo_steps=steps, dpo_answer_tokens=0)
    _step_seconds(model, loaded.tokenizer, pairs, DpoConfig(dpo_steps=1), train)  # warm-up: thread pool, allocator

    print(f"{'pair':>4} {'whole s/step':>13} {f'cut {args.answer_tokens} s/step':>14} {'ratio':>6} {'load 1m':>8}")
    figures = []
    for pair in range(rounds):
        off = _step_seconds(model, loaded.tokenizer, pairs, whole, train)
        on = _step_seconds(model, loaded.tokenizer, pairs, cut, train)
        load = os.getloadavg()[0]
        figures.append({"whole_s": off, "cut_s": on, "ratio": on / off, "loadavg_1m": load})
        print(f"{pair:>4} {off:>13.3f} {on:>14.3f} {on / off:>6.2f} {load:>8.2f}")
    summary = {
        "answer_tokens": args.answer_tokens,
        "ratio_median": round(statistics.median(f["ratio"] for f in figures), 3),
        "loadavg_1m_min": round(min(f["loadavg_1m"] for f in figures), 2),
        "loadavg_1m_max": round(max(f["loadavg_1m"] for f in figures), 2),
    }
    print(
        f"cut/whole time per DPO step ({args.answer_tokens} answer tokens): {summary['ratio_median']} (median of "
        f"{rounds}); load average {summary['loadavg_1m_min']}-{summary['loadavg_1m_max']} on {os.cpu_count()} cores"
    )
    C.save("dpo_step", args.quick, {"steps": steps, "pairs": figures, **summary})


if __name__ == "__main__":
    main()
