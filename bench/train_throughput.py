"""Training throughput: the project's LoRA path vs TRL's SFTTrainer configured for the CPU, side by side.

    python bench/train_throughput.py [--quick] [--steps N] [--with-default] [--default-steps N]

Runs on the same model (SmolLM2-135M-Instruct, fp32 weights), data (the built-in `safe` set, train split,
same seed so the same batches) and batch (8 sequences, max_length 256), LoRA r=8 on q,k,v,o of every layer, whole
answers (pinned: the adapter of earlier RESULTS rows; the finetune defaults since 2026-11-29, all-linear on the top
half of the layers with 16 answer tokens per row, cut the work per row, which TRL's path could not match):

  project       `safety_lab.training.train_lora` itself with `precision=auto`: bf16 autocast where the CPU runs
                bf16 natively (torch.ops.mkldnn._is_mkldnn_bf16_supported()), fp32 elsewhere; padding-free batches
  project-fp32  the same with `precision=fp32` (padding-free only): what an fp32-only CPU gets
  trl-cpu       the baseline: TRL's default SFTConfig with bf16=False, gradient_checkpointing=False
  trl-default   TRL's default SFTConfig (bf16 autocast + gradient checkpointing; use_cpu=True so that transformers
                accepts bf16 without a GPU); only with --with-default or in the full run, --default-steps steps

Timing: wall time between consecutive optimizer steps (data collation, forward, backward, AdamW, logging); the
first step is warm-up and is left out when a run has more than one. Tokens are non-padding tokens of the batches
(attention_mask sum; a padding-free batch has none), recorded in `training_step`.

Model FLOPs (attention score/value FLOPs, ~6% at these lengths, are left out, as in the usual 6N rule):
  LoRA  4 * N_frozen * tokens + 6 * N_lora * tokens  (N counts the tied embedding once: it is the LM head's matmul)
MFU = model FLOPs/s / the best fp32 2048^3 torch.mm GFLOP/s measured in this process (bf16 runs can exceed what fp32
could reach: their matmuls run on AVX512-BF16/AMX where the CPU has it; the bf16 peak is printed for reference).

Targets (issue 14): project >= 2.0x trl-cpu tokens/s on a CPU with native bf16; project-fp32 >= 1.2x trl-cpu
(the fp32-only path, through padding-free batches). Which one applies is printed from the detection.
On a shared machine set OMP_WAIT_POLICY=PASSIVE: with the default (spinning) policy and another process on a
core, 2 OpenMP threads ran a training step ~10x slower (see bench/RESULTS.md).
The project runs go through `train_lora` unchanged: `trl.SFTTrainer` is swapped for a subclass that only adds the
timing callback and the token count, for the duration of the call.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import tempfile
import time

import _common as C
import torch  # noqa: E402
import trl  # noqa: E402
from transformers import PrinterCallback, TrainerCallback  # noqa: E402

from safety_lab.config import DataConfig, TrainConfig  # noqa: E402
from safety_lab.data import load_dataset, to_conversation  # noqa: E402
from safety_lab.models import load_model, resolve_precision  # noqa: E402
from safety_lab.training import lora_config, train_lora  # noqa: E402

ORIGINAL_SFT_TRAINER = trl.SFTTrainer


class Meter:
    """Per optimizer step: wall time and (non-padding, padded) tokens."""

    def __init__(self):
        self.step_seconds: list[float] = []
        self.step_cpu: list[float] = []  # process CPU time (all threads) per step
        self.step_tokens: list[tuple[int, int]] = []
        self.losses: list[float] = []  # logged training loss per step (to check that variants train the same)
        self._pending = [0, 0]
        self._last = self._last_cpu = None

    def batch(self, inputs) -> None:
        ids = inputs["input_ids"]
        real = (
            int(inputs["attention_mask"].sum()) if "attention_mask" in inputs else ids.numel()
        )  # padding-free: no mask
        self._pending[0] += real
        self._pending[1] += ids.numel()

    def callback(self) -> TrainerCallback:
        meter = self

        class _Cb(TrainerCallback):
            def on_train_begin(self, args, state, control, **kw):
                meter._last, meter._last_cpu = time.perf_counter(), time.process_time()

            def on_step_end(self, args, state, control, **kw):
                now, cpu = time.perf_counter(), time.process_time()
                meter.step_seconds.append(now - meter._last)
                meter.step_cpu.append(cpu - meter._last_cpu)
                meter.step_tokens.append(tuple(meter._pending))
                meter._pending, meter._last, meter._last_cpu = [0, 0], now, cpu

            def on_log(self, args, state, control, logs=None, **kw):
                if logs and "loss" in logs:
                    meter.losses.append(round(float(logs["loss"]), 4))

        return _Cb()

    def summary(self) -> dict:
        skip = 1 if len(self.step_seconds) > 1 else 0  # first step = warm-up
        secs = sum(self.step_seconds[skip:])
        cpu_secs = sum(self.step_cpu[skip:])
        real = sum(t[0] for t in self.step_tokens[skip:])
        padded = sum(t[1] for t in self.step_tokens)
        return {
            "steps": len(self.step_seconds),
            "timed_steps": len(self.step_seconds) - skip,
            "step_seconds": [round(s, 2) for s in self.step_seconds],
            "seconds": secs,
            "cpu_seconds": cpu_secs,
            "tokens": real,
            "tokens_per_s": real / secs,
            "tokens_per_cpu_s": real / cpu_secs,
            "padding_fraction": 1 - sum(t[0] for t in self.step_tokens) / padded,
            "losses": self.losses,
        }


def metered_trainer(meter: Meter):
    """SFTTrainer that reports per-step timings and token counts to `meter`; training itself is untouched."""

    class MeteredSFTTrainer(ORIGINAL_SFT_TRAINER):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.remove_callback(PrinterCallback)  # console noise only
            self.add_callback(meter.callback())

        def training_step(self, model, inputs, *args, **kwargs):
            meter.batch(inputs)
            return super().training_step(model, inputs, *args, **kwargs)

    return MeteredSFTTrainer


def run_project(model, tok, rows, cfg: TrainConfig) -> dict:
    """train_lora as is, with a metered SFTTrainer."""
    meter = Meter()
    trl.SFTTrainer = metered_trainer(meter)  # train_lora imports it at call time
    try:
        train_lora(model, tok, rows, [], cfg, quiet=True)
    finally:
        trl.SFTTrainer = ORIGINAL_SFT_TRAINER
    return meter.summary()


def run_trl(model, tok, rows, cfg: TrainConfig, steps: int, **overrides) -> dict:
    """TRL's SFTConfig defaults plus only what makes the run comparable (batch, length, steps, seed, no saving).

    use_cpu=True is needed for the bf16 default to run at all on a machine without a GPU (transformers refuses
    bf16 otherwise); on this CPU-only machine it changes nothing else."""
    from datasets import Dataset

    meter = Meter()
    lora = lora_config(cfg, model)
    with tempfile.TemporaryDirectory(prefix="bench-sft-") as out:
        args = trl.SFTConfig(
            output_dir=out,
            per_device_train_batch_size=cfg.batch_size,
            max_length=cfg.max_length,
            max_steps=steps,
            seed=cfg.seed,
            data_seed=cfg.seed,
            save_strategy="no",
            report_to=[],
            disable_tqdm=True,
            logging_steps=1,
            use_cpu=True,
            **overrides,
        )
        trainer = metered_trainer(meter)(
            model=copy.deepcopy(model).train(),
            args=args,
            processing_class=tok,
            train_dataset=Dataset.from_list([to_conversation(r) for r in rows]),
            peft_config=lora,
        )
        trainer.train()
        n_lora = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    return {
        **meter.summary(),
        "bf16": args.bf16,
        "gradient_checkpointing": args.gradient_checkpointing,
        "n_lora": n_lora,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 steps (1 timed) each; no trl-default")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default 5, quick 2)")
    parser.add_argument("--default-steps", type=int, default=2, help="steps for trl-default (default 2)")
    parser.add_argument("--with-default", action="store_true", help="also time trl-default (in --quick too)")
    parser.add_argument("--skip-default", action="store_true", help="skip trl-default in the full run")
    args = parser.parse_args()
    steps = args.steps or (2 if args.quick else 5)
    run_default = not args.skip_default and (args.with_default or not args.quick)

    print("machine:", C.machine())
    precision = resolve_precision("auto", "cpu")
    print(f"precision auto -> {precision.chosen} ({precision.reason})")
    peak = C.matmul_peak_gflops()
    peak_bf16 = C.matmul_peak_gflops(dtype=torch.bfloat16, seconds=1.0)
    print(
        f"fp32 matmul peak (2048^3 torch.mm, best of ~2 s): {peak:.1f} GFLOP/s  (bf16: {peak_bf16:.1f}, for reference)"
    )

    loaded = load_model()
    model, tok = loaded.model, loaded.tokenizer
    train_rows, _ = load_dataset(DataConfig(data="safe")).split(0.2, 0, 32)
    cfg = TrainConfig(  # batch 8, max_length 256, precision auto; the adapter pinned as in the docstring
        max_steps=steps,
        device="cpu",
        lora_r=8,
        lora_alpha=16,
        target_modules="q_proj,k_proj,v_proj,o_proj",
        lora_layer_share=1.0,
        completion_tokens=None,
    )
    n_params = sum(p.numel() for p in model.parameters())  # tied embedding counted once
    print(
        f"model: {n_params / 1e6:.1f}M params; {len(train_rows)} train rows; batch {cfg.batch_size}, "
        f"max_length {cfg.max_length}; {steps} steps" + (f" (trl-default: {args.default_steps})" if run_default else "")
    )

    runs = {}

    def record(name, result):
        runs[name] = result
        print(
            f"[{name}] {result['tokens_per_s']:.1f} tok/s wall, {result['tokens_per_cpu_s']:.1f} tok/cpu-s, "
            f"step seconds {result['step_seconds']}, losses {result['losses']}",
            flush=True,
        )

    # baseline and project alternate, so that a change in other people's load hits both
    record("trl-cpu", run_trl(model, tok, train_rows, cfg, steps, bf16=False, gradient_checkpointing=False))
    record("project", run_project(model, tok, train_rows, cfg))
    if precision.chosen != "fp32":
        record("project-fp32", run_project(model, tok, train_rows, dataclasses.replace(cfg, precision="fp32")))
    if run_default:
        record("trl-default", run_trl(model, tok, train_rows, cfg, args.default_steps))
    n_lora = runs["trl-cpu"]["n_lora"]
    report(runs, n_params, n_lora, peak)
    if "project-fp32" not in runs:
        runs["project-fp32"] = runs["project"]  # auto chose fp32 here: the project run is the fp32 path

    base = runs["trl-cpu"]
    checks = {}
    for name, key, target in (("project", "vs_trl_cpu", 2.0), ("project-fp32", "fp32_vs_trl_cpu", 1.2)):
        checks[key] = (
            runs[name]["tokens_per_s"] / base["tokens_per_s"],
            runs[name]["tokens_per_cpu_s"] / base["tokens_per_cpu_s"],
            target,
        )
    applies = "vs_trl_cpu" if precision.bf16_native else "fp32_vs_trl_cpu"
    print()
    for key, (wall, cpu, target) in checks.items():
        note = "  <- the target for this CPU" if key == applies else ""
        print(
            f"{C.verdict(wall >= target)}  {key:16s} {wall:5.2f}x wall, {cpu:5.2f}x by CPU time  "
            f"(target >= {target}x){note}"
        )
    loss_gap = max((abs(a - b) for a, b in zip(runs["project"]["losses"], base["losses"])), default=float("nan"))
    print(
        f"training losses of project vs trl-cpu differ by <= {loss_gap:.3f} (same batches; bf16 rounding and the "
        "project's learning rate schedule)"
    )

    C.save(
        "train_throughput",
        args.quick,
        {
            "precision": precision.chosen,
            "bf16_native": precision.bf16_native,
            "peak_gflops": peak,
            "peak_bf16_gflops": peak_bf16,
            "n_params": n_params,
            "n_lora": n_lora,
            "batch_size": cfg.batch_size,
            "max_length": cfg.max_length,
            "runs": runs,
            **{k: v[0] for k, v in checks.items()},
            **{f"{k}_cpu": v[1] for k, v in checks.items()},
            "applies": applies,
            "pass": {k: v[0] >= v[2] for k, v in checks.items()},
        },
    )


def report(runs: dict, n_params: int, n_lora: int, peak: float) -> None:
    """One table row per run: s/step, tokens/s, model GFLOP/s, MFU against the fp32 peak."""
    print(
        f"\n{'run':13s} {'timed':>5s} {'s/step':>7s} {'tok/s':>7s} {'GFLOP/s':>8s} {'MFU':>6s} "
        f"{'tok/cpu-s':>9s} {'pad':>6s}  per-step wall seconds"
    )
    for name, r in runs.items():
        flops = 4 * (n_params - n_lora) * r["tokens"] + 6 * n_lora * r["tokens"]
        r["model_gflops_per_s"] = flops / r["seconds"] / 1e9
        r["mfu"] = r["model_gflops_per_s"] / peak
        print(
            f"{name:13s} {r['timed_steps']:5d} {r['seconds'] / r['timed_steps']:7.2f} {r['tokens_per_s']:7.1f} "
            f"{r['model_gflops_per_s']:8.1f} {r['mfu']:6.1%} {r['tokens_per_cpu_s']:9.1f} "
            f"{r['padding_fraction']:6.1%}  {r['step_seconds']}"
        )
    if "trl-default" not in runs:
        print("(trl-default skipped: run without --quick, or add --with-default)")


if __name__ == "__main__":
    main()
