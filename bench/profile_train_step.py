"""torch.profiler table of one training step of the project path (train_lora, its SFTConfig), after 2 warm-up steps.

    OMP_WAIT_POLICY=PASSIVE python bench/profile_train_step.py [--bf16] [--rows 25]

Groups the self CPU time into matmul (aten::mm/addmm/bmm/linear), attention (SDPA) and the rest (elementwise,
reductions, copies: memory-bound on this CPU), to show what bounds MFU. --bf16 profiles the bf16-autocast variant.
"""

from __future__ import annotations

import argparse
import dataclasses

import _common as C
import trl  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from safety_lab import training  # noqa: E402
from safety_lab.config import DataConfig, TrainConfig  # noqa: E402
from safety_lab.data import load_dataset  # noqa: E402
from safety_lab.models import load_model  # noqa: E402

MATMUL = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "mkldnn")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--shapes", action="store_true", help="also the top ops by input shape")
    args = parser.parse_args()
    loaded = load_model()
    rows, _ = load_dataset(DataConfig(data="safe")).split(0.2, 0, 32)
    tables = {}
    original = trl.SFTTrainer

    class Profiled(original):
        step = 0

        def training_step(self, model, inputs, *a, **kw):
            Profiled.step += 1
            if Profiled.step != 3:
                return super().training_step(model, inputs, *a, **kw)
            with profile(activities=[ProfilerActivity.CPU], record_shapes=args.shapes) as prof:
                out = super().training_step(model, inputs, *a, **kw)
            tables["events"] = prof.key_averages()
            if args.shapes:
                tables["shapes"] = prof.key_averages(group_by_input_shape=True)
            return out

    trl.SFTTrainer = Profiled
    if args.bf16:
        base = training.sft_config
        training.sft_config = lambda *a, **kw: dataclasses.replace(base(*a, **kw), bf16=True)
    try:
        training.train_lora(loaded.model, loaded.tokenizer, rows, [], TrainConfig(max_steps=3), quiet=True)
    finally:
        trl.SFTTrainer = original
    events = tables["events"]
    total = sum(e.self_cpu_time_total for e in events)
    groups = {"matmul": 0.0, "attention (sdpa)": 0.0, "other (elementwise, reductions, copies)": 0.0}
    for e in events:
        key = (
            "matmul"
            if any(e.key.startswith(m) for m in MATMUL)
            else "attention (sdpa)"
            if "scaled_dot_product" in e.key or "flash_attention" in e.key
            else "other (elementwise, reductions, copies)"
        )
        groups[key] += e.self_cpu_time_total
    print(events.table(sort_by="self_cpu_time_total", row_limit=18))
    if args.shapes:
        print(tables["shapes"].table(sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=30))
    print(f"step (forward+backward, profiled): {total / 1e6:.2f} s of self CPU time")
    for key, value in groups.items():
        print(f"  {key:42s} {value / total:6.1%}")
    C.save(
        "profile_train_step",
        False,
        {"bf16": args.bf16, "self_cpu_s": total / 1e6, "shares": {k: v / total for k, v in groups.items()}},
    )


if __name__ == "__main__":
    main()
