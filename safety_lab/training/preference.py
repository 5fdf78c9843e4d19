"""The preference stage: TRL's DPOTrainer on the SFT adapter itself (POROver's recipe, arXiv 2410.12999).

DPOTrainer, given a PeftModel and no reference, copies the trained adapter into a frozen `ref` adapter, so no second
model is loaded. The loss is DPO's sigmoid plus
TRL's `sft` term on the chosen answers, which keeps their likelihood from falling while the margin grows. Each
answer is cut to its opening `dpo_answer_tokens` tokens, where refusing or answering is decided."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass

import torch

from safety_lab import distributed
from safety_lab.config import DpoConfig, TrainConfig
from safety_lab.data.pairs import to_preference
from safety_lab.models import resolve_precision
from safety_lab.training import score_labelled_positions_only
from safety_lab.training.bars import one_bar

REFERENCE = "ref"  # the adapter name TRL gives the frozen copy


@dataclass
class PreferenceResult:
    model: torch.nn.Module  # the PEFT model, its default adapter trained further; the reference copy removed
    steps: int
    loss: float
    reward_margin: float  # chosen minus rejected implicit reward, mean of the last logged steps
    reward_accuracy: float  # share of pairs whose chosen answer the policy prefers, same steps
    seconds: float


def dpo_config(cfg: DpoConfig, train: TrainConfig, output_dir: str, *, n_pairs: int, quiet: bool = False):
    """DPOConfig with `resolve_precision`'s device and autocast, no gradient checkpointing, no checkpoints.

    The reference log-probabilities are precomputed (one pass over every pair) only when the steps see a pair more
    than once; otherwise each batch's reference forward runs with it, and pairs that no step draws cost nothing."""
    from trl import DPOConfig

    precision = resolve_precision(train.precision, train.device)
    batch = distributed.per_device_batch(train.batch_size)
    return DPOConfig(
        output_dir=output_dir,
        max_steps=cfg.dpo_steps,
        per_device_train_batch_size=batch,
        learning_rate=cfg.dpo_learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, cfg.dpo_steps // 10),
        beta=cfg.dpo_beta,
        loss_type=["sigmoid", "sft"],
        loss_weights=[1.0, cfg.dpo_sft_weight],
        precompute_ref_log_probs=cfg.dpo_steps * train.batch_size > n_pairs,
        max_length=cfg.dpo_max_length,
        bf16=precision.autocast == torch.bfloat16,
        fp16=precision.autocast == torch.float16,
        gradient_checkpointing=False,
        use_cpu=precision.device == "cpu",
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=train.seed,
        data_seed=train.seed,
        dataloader_num_workers=0,
        disable_tqdm=quiet,
    )


def preference_trainer(
    model,
    tokenizer,
    pairs: list[dict],
    cfg: DpoConfig,
    train: TrainConfig,
    output_dir: str,
    *,
    callbacks=(),
    quiet=False,
):
    """TRL's DPOTrainer on `model`'s adapter over `pairs`, each answer cut to `cfg.dpo_answer_tokens` tokens.

    The cut is made on TRL's tokenized answers, by the collator every batch goes through (the reference computed up
    front included). A tokenized answer ends in the chat template's end-of-turn token: a cut answer loses it, so the
    model is not taught to stop where the cut fell; an answer that ends within the cut keeps it. The cut also rides
    in the dataset as a column, because TRL caches precomputed reference log-probabilities under the dataset's
    fingerprint and the weights, not the collator: without it, a second cut of the same pairs on the same adapter in
    one process would be served the first cut's reference."""
    from datasets import Dataset as HFDataset
    from trl import DPOTrainer

    rows = [{**to_preference(p), "answer_tokens": cfg.dpo_answer_tokens} for p in pairs]
    trainer = DPOTrainer(
        model=model.train(),
        args=dpo_config(cfg, train, output_dir, n_pairs=len(pairs), quiet=quiet),
        data_collator=OpeningsCollator(
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
            max_length=cfg.dpo_max_length,
            answer_tokens=cfg.dpo_answer_tokens,
        ),
        train_dataset=HFDataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=list(callbacks),
    )
    score_labelled_positions_only(trainer, ("compute_loss", "compute_ref_log_probs"))
    return trainer


@dataclass
class OpeningsCollator:
    """TRL's preference collator (right padding to the batch's longest sequence, `max_length` cut), each chosen and
    rejected answer first cut to its opening `answer_tokens` tokens (0 = whole answers)."""

    pad_token_id: int
    max_length: int | None
    answer_tokens: int = 0

    def __call__(self, examples: list[dict]) -> dict:
        from trl.trainer.dpo_trainer import DataCollatorForPreference

        if self.answer_tokens:
            cut = slice(None, self.answer_tokens)
            examples = [
                {**e, "chosen_ids": e["chosen_ids"][cut], "rejected_ids": e["rejected_ids"][cut]} for e in examples
            ]
        return DataCollatorForPreference(pad_token_id=self.pad_token_id, max_length=self.max_length)(examples)


def train_preference(
    model, tokenizer, pairs: list[dict], cfg: DpoConfig, train: TrainConfig, *, on_log=None, quiet: bool = False
) -> PreferenceResult:
    """Continue training `model`'s (a PeftModel's) default adapter with DPO on `pairs` (prompt/chosen/rejected).

    `on_log(step, logs)` receives TRL's per-step logs (loss, rewards/margins, rewards/accuracies...)."""
    from transformers import TrainerCallback, set_seed

    set_seed(train.seed)
    logged: list[dict] = []

    class _Logs(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            numbers = {k: float(v) for k, v in (logs or {}).items() if isinstance(v, (int, float))}
            if "loss" in numbers:
                logged.append(numbers)
                if on_log is not None:
                    on_log(state.global_step, numbers)

    with tempfile.TemporaryDirectory(prefix="dpo-") as out:
        trainer = preference_trainer(model, tokenizer, pairs, cfg, train, out, callbacks=[_Logs()], quiet=quiet)
        if not quiet:
            from transformers.trainer_callback import ProgressCallback

            trainer.remove_callback(ProgressCallback)
            trainer.add_callback(one_bar())
        start = time.perf_counter()
        out_train = trainer.train()
        seconds = time.perf_counter() - start
        trained = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
    if REFERENCE in trained.peft_config:
        trained.delete_adapter(REFERENCE)
    trained.set_adapter("default")
    tail = logged[-max(1, len(logged) // 5) :]
    return PreferenceResult(
        model=trained.eval(),
        steps=cfg.dpo_steps,
        loss=float(out_train.training_loss),
        reward_margin=_mean(tail, "rewards/margins"),
        reward_accuracy=_mean(tail, "rewards/accuracies"),
        seconds=seconds,
    )


def _mean(logs: list[dict], key: str) -> float:
    values = [entry[key] for entry in logs if key in entry]
    return sum(values) / len(values) if values else float("nan")
