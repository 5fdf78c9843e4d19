"""LoRA supervised fine-tuning with TRL's SFTTrainer, configured for the device (fp32 on CPU, no checkpointing)."""
from __future__ import annotations

import copy
import logging
import math
import tempfile
import time
from dataclasses import dataclass, field

import torch

from safety_lab import distributed
from safety_lab.config import TrainConfig
from safety_lab.data import to_conversation
from safety_lab.models import resolve_device

logging.getLogger("transformers.trainer").setLevel(logging.WARNING)


@dataclass
class TrainResult:
    model: torch.nn.Module  # the PEFT-wrapped model (adapter not merged)
    eval_losses: list[tuple[int, float]] = field(default_factory=list)  # (step, validation loss)
    initial_eval_loss: float = float("nan")
    final_eval_loss: float = float("nan")
    train_loss: float = float("nan")
    seconds: float = 0.0
    train_tokens: int = 0


def _report_callback(on_eval, on_log):
    """A Trainer callback forwarding losses; `on_eval` may raise (optuna.TrialPruned) to stop training."""
    from transformers import TrainerCallback

    class _Report(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            if metrics and "eval_loss" in metrics and on_eval is not None:
                on_eval(state.global_step, float(metrics["eval_loss"]))

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and on_log is not None:
                on_log(state.global_step, {k: float(v) for k, v in logs.items() if isinstance(v, (int, float))})

    return _Report()


def sft_config(cfg: TrainConfig, output_dir: str, *, n_val: int, quiet: bool = False):
    """SFTConfig chosen from the device: fp32 and no gradient checkpointing on CPU (TRL defaults to bf16 + checkpointing)."""
    from trl import SFTConfig

    device, dtype = resolve_device(cfg.device)
    batch = distributed.per_device_batch(cfg.batch_size)
    return SFTConfig(
        output_dir=output_dir,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=batch,
        per_device_eval_batch_size=max(batch, 8),
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_schedule,  # warm up, then decay: a constant peak overshoots on a few hundred rows
        warmup_steps=math.ceil(cfg.warmup_ratio * cfg.max_steps),
        max_length=cfg.max_length,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        gradient_checkpointing=False,
        ddp_find_unused_parameters=False,  # every LoRA weight gets a gradient
        use_cpu=device == "cpu",
        eval_strategy="steps" if n_val else "no",
        eval_steps=cfg.eval_every,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=cfg.seed,
        data_seed=cfg.seed,
        completion_only_loss=True,
        dataloader_num_workers=0,
        include_num_input_tokens_seen="non_padding",  # tokens/s without the padding
        disable_tqdm=quiet,
    )


def train_lora(model: torch.nn.Module, tokenizer, train_rows: list[dict], val_rows: list[dict], cfg: TrainConfig, *,
               on_eval=None, on_log=None, quiet: bool = False, initial_eval_loss: float | None = None) -> TrainResult:
    """Train a fresh LoRA adapter on a copy of `model`; the original stays untouched for the next trial.

    `initial_eval_loss`: the untrained validation loss when already known. A fresh adapter starts as the identity
    (LoRA's B is zero), so it is the base model's loss, the same for every trial of a study."""
    from datasets import Dataset as HFDataset
    from peft import LoraConfig
    from transformers import set_seed
    from trl import SFTTrainer

    set_seed(cfg.seed)
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=cfg.modules(), task_type="CAUSAL_LM", bias="none")
    train_ds = HFDataset.from_list([to_conversation(r) for r in train_rows])
    val_ds = HFDataset.from_list([to_conversation(r) for r in val_rows]) if val_rows else None
    result = TrainResult(model=None)
    with tempfile.TemporaryDirectory(prefix="sft-") as out:
        trainer = SFTTrainer(
            model=copy.deepcopy(model).train(),
            args=sft_config(cfg, out, n_val=len(val_rows), quiet=quiet),
            train_dataset=train_ds,
            eval_dataset=val_ds,
            processing_class=tokenizer,
            peft_config=lora,
        )

        def _eval(step, loss):
            result.eval_losses.append((step, loss))
            if on_eval is not None:
                on_eval(step, loss)

        if initial_eval_loss is not None:
            result.initial_eval_loss = initial_eval_loss
        elif val_ds is not None:  # the baseline, before the callback sees evaluations
            result.initial_eval_loss = float(trainer.evaluate()["eval_loss"])
        trainer.add_callback(_report_callback(_eval, on_log))
        start = time.perf_counter()
        out_train = trainer.train()
        result.seconds = time.perf_counter() - start
        result.train_loss = float(out_train.training_loss)
        result.train_tokens = int(trainer.state.num_input_tokens_seen or 0)
        if val_ds is not None:
            if result.eval_losses and result.eval_losses[-1][0] == trainer.state.global_step:
                result.final_eval_loss = result.eval_losses[-1][1]
            else:
                result.final_eval_loss = float(trainer.evaluate()["eval_loss"])
        result.model = trainer.model.eval()
    return result
