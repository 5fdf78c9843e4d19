"""Training throughput: the project's LoRA path vs TRL's SFTTrainer defaults vs TRL configured for the CPU.

    python bench/train_throughput.py [--quick] [--steps N] [--default-steps N] [--variants LIST] [--with-default]

Runs on the same model (SmolLM2-135M-Instruct, fp32 weights), data (the built-in `safe` set, train split,
same seed so the same batches) and batch (8 sequences, max_length 256), LoRA r=8 on q,k,v,o (TrainConfig defaults):

  project      `safety_lab.training.train_lora` itself, i.e. `sft_config()` (fp32, no gradient checkpointing)
  trl-cpu      TRL's default SFTConfig with bf16=False, gradient_checkpointing=False
  trl-default  TRL's default SFTConfig (bf16=True autocast, gradient_checkpointing=True; use_cpu=True so that
               transformers accepts bf16 without a GPU). Expected ~25x slower on a CPU without native bf16; it
               runs --default-steps steps (2: one warm-up, one timed) and is skipped in --quick
  project+<v>  the project path with a candidate SFTConfig change (--variants): padding_free, bf16, both

Timing: wall time between consecutive optimizer steps (data collation, forward, backward, AdamW, logging); the
first step is warm-up and is left out when a run has more than one. Tokens are non-padding tokens of the batches
(attention_mask sum), recorded in `training_step`; the padding fraction is 1 - non-padding / padded tokens.

Model FLOPs (attention score/value FLOPs, ~6% at these lengths, are left out, as in the usual 6N rule):
  full fine-tune  6 * N * tokens                        (forward 2N, backward input-grad 2N + weight-grad 2N)
  LoRA            4 * N_frozen * tokens + 6 * N_lora * tokens
                  (frozen weights: forward + input-grad backward, no weight grad; LoRA weights: all three)
  N counts the tied embedding once: it is the LM head's matmul (the input lookup costs no FLOPs).
MFU = model FLOPs/s / peak, peak = best fp32 2048x2048 torch.mm GFLOP/s measured in this process.

Targets: MFU >= 60%, >= 1.5x trl-cpu, >= 15x trl-default. MFU is against the fp32 peak for every run, so
bf16 runs (whose matmuls run on AVX512-BF16 where the CPU has it) can exceed what fp32 could reach; the bf16 peak
is printed for reference.
On a shared machine set OMP_WAIT_POLICY=PASSIVE: with the default (spinning) policy and another process on a
core, 2 OpenMP threads ran a training step ~10x slower (see bench/RESULTS.md).
The project run goes through `train_lora` unchanged: `trl.SFTTrainer` is swapped for a subclass that only adds the
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
from safety_lab.models import load_model  # noqa: E402
from safety_lab import training  # noqa: E402
from safety_lab.training import train_lora  # noqa: E402

ORIGINAL_SFT_TRAINER = trl.SFTTrainer
VARIANTS = {  # SFTConfig changes timed on top of the project's own (train_lora itself is unchanged)
    "padding_free": {"padding_free": True, "max_length": None},  # TRL refuses max_length without packing
    "bf16": {"bf16": True},  # autocast to bf16, fp32 master weights; only where the CPU has AVX512-BF16/AMX
    "bf16+padding_free": {"bf16": True, "padding_free": True, "max_length": None},
}


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
        real = int(inputs["attention_mask"].sum()) if "attention_mask" in inputs else ids.numel()  # padding-free: no mask
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
        return {"steps": len(self.step_seconds), "timed_steps": len(self.step_seconds) - skip,
                "step_seconds": [round(s, 2) for s in self.step_seconds], "seconds": secs, "cpu_seconds": cpu_secs,
                "tokens": real, "tokens_per_s": real / secs, "tokens_per_cpu_s": real / cpu_secs,
                "padding_fraction": 1 - sum(t[0] for t in self.step_tokens) / padded, "losses": self.losses}


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


def run_project(model, tok, rows, cfg: TrainConfig, **sft_overrides) -> dict:
    """train_lora as is; sft_overrides (a candidate change, e.g. padding_free) patch the SFTConfig it builds."""
    meter = Meter()
    trl.SFTTrainer = metered_trainer(meter)  # train_lora imports it at call time
    original_sft_config = training.sft_config
    if sft_overrides:
        def patched(*a, **kw):  # replace() reruns __post_init__, which derives mixed_precision from bf16
            return dataclasses.replace(original_sft_config(*a, **kw), **sft_overrides)

        training.sft_config = patched
    try:
        train_lora(model, tok, rows, [], cfg, quiet=True)
    finally:
        trl.SFTTrainer, training.sft_config = ORIGINAL_SFT_TRAINER, original_sft_config
    return meter.summary()


def run_trl(model, tok, rows, cfg: TrainConfig, steps: int, **overrides) -> dict:
    """TRL's SFTConfig defaults plus only what makes the run comparable (batch, length, steps, seed, no saving).

    use_cpu=True is needed for the bf16 default to run at all on a machine without a GPU (transformers refuses
    bf16 otherwise); on this CPU-only machine it changes nothing else."""
    from datasets import Dataset
    from peft import LoraConfig

    meter = Meter()
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=cfg.modules(), task_type="CAUSAL_LM", bias="none")
    with tempfile.TemporaryDirectory(prefix="bench-sft-") as out:
        args = trl.SFTConfig(output_dir=out, per_device_train_batch_size=cfg.batch_size, max_length=cfg.max_length,
                             max_steps=steps, seed=cfg.seed, data_seed=cfg.seed, save_strategy="no", report_to=[],
                             disable_tqdm=True, logging_steps=1, use_cpu=True, **overrides)
        trainer = metered_trainer(meter)(model=copy.deepcopy(model).train(), args=args, processing_class=tok,
                                         train_dataset=Dataset.from_list([to_conversation(r) for r in rows]),
                                         peft_config=lora)
        trainer.train()
        n_lora = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    return {**meter.summary(), "bf16": args.bf16, "gradient_checkpointing": args.gradient_checkpointing, "n_lora": n_lora}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 steps (1 timed) each; trl-default skipped")
    parser.add_argument("--steps", type=int, default=None, help="steps for project and trl-cpu (default 5, quick 2)")
    parser.add_argument("--default-steps", type=int, default=2, help="steps for trl-default (default 2)")
    parser.add_argument("--with-default", action="store_true", help="run trl-default in --quick too (~2-5 min)")
    parser.add_argument("--skip-default", action="store_true", help="skip the slow trl-default run")
    parser.add_argument("--variants", default=None,
                        help=f"candidate changes to time on the project path, comma list of {','.join(VARIANTS)} "
                             "(default: all; quick: none)")
    args = parser.parse_args()
    steps = args.steps or (2 if args.quick else 5)
    variants = [v for v in (args.variants if args.variants is not None else "" if args.quick else ",".join(VARIANTS)).split(",") if v]
    run_default = not args.skip_default and (args.with_default or not args.quick)

    print("machine:", C.machine())
    peak = C.matmul_peak_gflops()
    peak_bf16 = C.matmul_peak_gflops(dtype=torch.bfloat16, seconds=1.0)
    print(f"fp32 matmul peak (2048^3 torch.mm, best of ~2 s): {peak:.1f} GFLOP/s  (bf16: {peak_bf16:.1f}, for reference)")

    loaded = load_model()
    model, tok = loaded.model, loaded.tokenizer
    train_rows, _ = load_dataset(DataConfig(data="safe")).split(0.2, 0, 32)
    cfg = TrainConfig(max_steps=steps)  # batch 8, max_length 256, r=8 on q,k,v,o
    n_params = sum(p.numel() for p in model.parameters())  # tied embedding counted once
    print(f"model: {n_params / 1e6:.1f}M params; {len(train_rows)} train rows; batch {cfg.batch_size}, "
          f"max_length {cfg.max_length}; {steps} steps" + (f" (trl-default: {args.default_steps})" if run_default else ""))

    runs = {}

    def record(name, result):
        runs[name] = result
        print(f"[{name}] {result['tokens_per_s']:.1f} tok/s wall, {result['tokens_per_cpu_s']:.1f} tok/cpu-s, "
              f"step seconds {result['step_seconds']}, losses {result['losses']}", flush=True)

    record("project", run_project(model, tok, train_rows, cfg))
    record("trl-cpu", run_trl(model, tok, train_rows, cfg, steps, bf16=False, gradient_checkpointing=False))
    for name in variants:
        record(f"project+{name}", run_project(model, tok, train_rows, cfg, **VARIANTS[name]))
    if run_default:
        record("trl-default", run_trl(model, tok, train_rows, cfg, args.default_steps))
    n_lora = runs["trl-cpu"]["n_lora"]

    # tok/cpu-s: tokens per second of process CPU time (all threads); only its ratios are used
    print(f"\n{'run':15s} {'timed':>5s} {'s/step':>7s} {'tok/s':>7s} {'GFLOP/s':>8s} {'MFU':>6s} "
          f"{'tok/cpu-s':>9s} {'pad':>6s}  per-step wall seconds")
    for name, r in runs.items():
        flops = 4 * (n_params - n_lora) * r["tokens"] + 6 * n_lora * r["tokens"]
        r["model_gflops_per_s"] = flops / r["seconds"] / 1e9
        r["mfu"] = r["model_gflops_per_s"] / peak
        print(f"{name:15s} {r['timed_steps']:5d} {r['seconds'] / r['timed_steps']:7.2f} {r['tokens_per_s']:7.1f} "
              f"{r['model_gflops_per_s']:8.1f} {r['mfu']:6.1%} {r['tokens_per_cpu_s']:9.1f} "
              f"{r['padding_fraction']:6.1%}  {r['step_seconds']}")
    for name in variants:
        v = runs[f"project+{name}"]
        print(f"variant {name:12s} {v['tokens_per_s'] / runs['project']['tokens_per_s']:.2f}x the project's tokens/s "
              f"({v['tokens_per_cpu_s'] / runs['project']['tokens_per_cpu_s']:.2f}x by CPU time); training losses differ by "
              f"<= {max(abs(a - b) for a, b in zip(v['losses'], runs['project']['losses'])):.1e}")
    if "trl-default" not in runs:
        print("(trl-default skipped: it needs minutes per step here; run without --quick, or add --with-default)")

    p = runs["project"]
    checks = {"mfu": (p["mfu"], None, 0.60)}
    checks["vs_trl_cpu"] = (p["tokens_per_s"] / runs["trl-cpu"]["tokens_per_s"],
                            p["tokens_per_cpu_s"] / runs["trl-cpu"]["tokens_per_cpu_s"], 1.5)
    if "trl-default" in runs:
        checks["vs_trl_default"] = (p["tokens_per_s"] / runs["trl-default"]["tokens_per_s"],
                                    p["tokens_per_cpu_s"] / runs["trl-default"]["tokens_per_cpu_s"], 15)
    print()
    for key, (wall, cpu, target) in checks.items():
        fmt = (lambda v: f"{v:.1%}") if key == "mfu" else (lambda v: f"{v:.2f}x")
        by_cpu = f", {fmt(cpu):>7s} by CPU time" if cpu is not None else ""
        print(f"{C.verdict(wall >= target)}  {key:15s} {fmt(wall):>7s} wall{by_cpu}  (target >= {fmt(target)})")

    C.save("train_throughput", args.quick, {
        "peak_gflops": peak, "peak_bf16_gflops": peak_bf16, "n_params": n_params, "n_lora": n_lora, "batch_size": cfg.batch_size,
        "max_length": cfg.max_length, "runs": runs, **{k: v[0] for k, v in checks.items()},
        **{f"{k}_cpu": v[1] for k, v in checks.items() if v[1] is not None}, "pass": {k: v[0] >= v[2] for k, v in checks.items()}})


if __name__ == "__main__":
    main()
