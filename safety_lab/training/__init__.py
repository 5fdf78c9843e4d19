"""LoRA supervised fine-tuning with TRL's SFTTrainer: precision from the hardware, padding-free batches."""

from __future__ import annotations

import copy
import functools
import logging
import math
import tempfile
import time
from dataclasses import dataclass, field

import torch

from safety_lab import distributed, flops
from safety_lab.compat import fused_head_on_labelled_positions
from safety_lab.config import TrainConfig
from safety_lab.data import to_conversation
from safety_lab.models import resolve_precision
from safety_lab.training.bars import one_bar
from safety_lab.training.frozen import frozen_layer_count, frozen_prefix, store_for
from safety_lab.training.head import log_probs as dense_head

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


def remaining_seconds(step_seconds: float, step: int, max_steps: int, trials_after: int) -> float:
    """Training time left: this run's remaining steps plus `trials_after` more runs of `max_steps`, at the measured
    seconds per step (the in-loop probe and evaluation are not included)."""
    return step_seconds * ((max_steps - step) + trials_after * max_steps)


def _eta_callback(trials_after: int, after_steps: int = 5, again_in_epoch_two: bool = False):
    """Prints one line after `after_steps` steps: the estimated training time left in this tuning stage. With
    `again_in_epoch_two` (the frozen-prefix cache serves the run: from the second epoch on, a step skips the bottom
    layers, as every step of a later trial does), a second line after `after_steps` steps of the second epoch."""
    from transformers import TrainerCallback

    first_step = ("", lambda state: state.global_step == 1)  # step 1 pays one-off costs (allocation, autocast)
    epoch_two = (" once rows repeat", lambda state: state.epoch > 1)  # the first steps that found their rows stored

    class _Eta(TrainerCallback):
        def __init__(self):
            self.lines = [first_step, epoch_two] if again_in_epoch_two else [first_step]  # (label, counts from)
            self.clock: tuple[int, float] | None = None  # (step, time) the line in progress counts from

        def on_step_end(self, args, state, control, **kwargs):
            if not self.lines:
                return
            now = time.perf_counter()
            label, starts = self.lines[0]
            if self.clock is None:
                if starts(state):
                    self.clock = (state.global_step, now)
                return
            first, start = self.clock
            if state.global_step - first < after_steps:
                return
            per_step = (now - start) / after_steps
            if state.global_step < state.max_steps:
                left = remaining_seconds(per_step, state.global_step, state.max_steps, trials_after)
                print(
                    f"[safety_lab] tuning: about {left / 60:.1f} min of SFT training left ({per_step:.2f} s/step"
                    f"{label}; {state.max_steps - state.global_step} steps of this trial + {trials_after} "
                    f"more trial(s) of {state.max_steps})",
                    flush=True,
                )
            self.lines.pop(0)
            self.clock = None

    return _Eta()


def sft_config(cfg: TrainConfig, output_dir: str, *, n_val: int, quiet: bool = False, padding_free: bool = True):
    """SFTConfig with `resolve_precision`'s device and autocast (the loader used the same decision's weight dtype);
    never gradient checkpointing (TRL's default: its recompute costs more than it saves at these sizes).

    padding_free: one flattened row per batch, no pad tokens computed (23% of the padded batch on the `safe` set).
    TRL does not enforce max_length then, so `train_lora` truncates the tokenized rows itself."""
    from trl import SFTConfig

    precision = resolve_precision(cfg.precision, cfg.device)
    batch = distributed.per_device_batch(cfg.batch_size)
    return SFTConfig(
        output_dir=output_dir,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=batch,
        per_device_eval_batch_size=max(batch, 8),
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_schedule,  # warm up, then decay: a constant peak overshoots on a few hundred rows
        warmup_steps=math.ceil(cfg.warmup_ratio * cfg.max_steps),
        max_length=None if padding_free else cfg.max_length,
        padding_free=padding_free,
        bf16=precision.autocast == torch.bfloat16,
        fp16=precision.autocast == torch.float16,
        gradient_checkpointing=False,
        ddp_find_unused_parameters=False,  # every LoRA weight gets a gradient
        use_cpu=precision.device == "cpu",
        eval_strategy="steps" if n_val else "no",
        eval_steps=cfg.eval_every,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=cfg.seed,
        data_seed=cfg.seed,
        completion_only_loss=True,
        dataloader_num_workers=0,
        # tokens/s without the padding. A padding-free batch has none, but no attention mask either, and then
        # "non_padding" counts ids != pad_token_id: with pad = EOS (SmolLM2) it would skip every <|im_end|>.
        include_num_input_tokens_seen="all" if padding_free else "non_padding",
        disable_tqdm=quiet,
    )


def _kept(row: dict, max_length: int, completion_tokens: int | None) -> int:
    """How many tokens of a tokenized row to keep: `max_length`, or fewer when only the answer's first
    `completion_tokens` are trained (the prompt is always kept whole, within `max_length`)."""
    if completion_tokens is None:
        return max_length
    mask = row["completion_mask"] if "completion_mask" in row else [label != -100 for label in row["labels"]]
    first = next((i for i, m in enumerate(mask) if m), len(mask))
    return min(max_length, first + completion_tokens)


def truncate_rows(dataset, max_length: int, completion_tokens: int | None = None):
    """Keep the first `max_length` tokens of each tokenized row and drop the rows left without a token to learn
    (what TRL does with max_length on a padded run; TRL refuses max_length for padding-free batches without packing).

    `completion_tokens`: also cut each answer after its first N tokens, so no end-of-turn token is learned and the
    model learns how answers open, where refusing or answering is decided. Returns `dataset` itself when no row is
    longer than `max_length` and `completion_tokens` is None; None for None. Plain Python over the columns, not
    `Dataset.map`, which catches KeyboardInterrupt to clean up its cache files."""
    from datasets import Dataset as HFDataset

    if dataset is None:
        return None
    columns = [c for c in ("input_ids", "labels", "completion_mask", "assistant_masks") if c in dataset.column_names]
    longest = max((len(ids) for ids in dataset["input_ids"]), default=0)
    if longest <= max_length and completion_tokens is None:
        return dataset
    rows = []
    for row in dataset.to_list():
        end = _kept(row, max_length, completion_tokens)
        row.update({c: row[c][:end] for c in columns})
        if _has_answer(row):
            rows.append(row)
    return HFDataset.from_list(rows)


def _has_answer(row: dict) -> bool:
    """Whether a tokenized row still has a token to learn after truncation."""
    if "labels" in row:
        return any(label != -100 for label in row["labels"])
    return any(row["completion_mask"]) if "completion_mask" in row else True


def train_lora(
    model: torch.nn.Module,
    tokenizer,
    train_rows: list[dict],
    val_rows: list[dict],
    cfg: TrainConfig,
    *,
    on_eval=None,
    on_log=None,
    quiet: bool = False,
    initial_eval_loss: float | None = None,
    padding_free: bool = True,
    trials_after: int | None = None,
) -> TrainResult:
    """Train a fresh LoRA adapter on a copy of `model`; the original stays untouched for the next trial.

    `initial_eval_loss`: the untrained validation loss when already known. A fresh adapter starts as the identity
    (LoRA's B is zero), so it is the base model's loss, the same for every trial of a study.
    `padding_free=False`: the padded path (the same losses within 1e-3, tests/training).
    `trials_after`: trials still to run after this one; when given, one line estimates the training time left."""
    from transformers import set_seed

    set_seed(cfg.seed)
    result = TrainResult(model=None)
    with tempfile.TemporaryDirectory(prefix="sft-") as out:
        trainer = _trainer(model, tokenizer, train_rows, val_rows, cfg, out, quiet=quiet, padding_free=padding_free)
        n_frozen = _frozen_layers(cfg, trainer.model, padding_free)
        if trials_after is not None:
            trainer.add_callback(_eta_callback(trials_after, again_in_epoch_two=n_frozen > 0))

        def _eval(step, loss):
            result.eval_losses.append((step, loss))
            if on_eval is not None:
                on_eval(step, loss)

        count_flops(trainer, cfg, n_frozen)
        with frozen_prefix(trainer.model, n_frozen, store_for(model)):
            _run(trainer, result, _eval, on_log, initial_eval_loss, bool(val_rows))
        # Mixed precision patches the model's forward with bf16 autocast; without unwrapping, every later use of the
        # trained model (the reload check, in-loop evaluations) would run in bf16 too. Evaluation stays fp32.
        result.model = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False).eval()
    return result


def _run(trainer, result: TrainResult, on_eval, on_log, initial_eval_loss: float | None, validate: bool) -> None:
    """Train, with the validation loss before (unless given) and after; fills `result`'s losses, time and tokens."""
    if initial_eval_loss is not None:
        result.initial_eval_loss = initial_eval_loss
    elif validate:  # the baseline, before the callback sees evaluations
        result.initial_eval_loss = float(trainer.evaluate()["eval_loss"])
    trainer.add_callback(_report_callback(on_eval, on_log))
    start = time.perf_counter()
    out_train = trainer.train()
    result.seconds = time.perf_counter() - start
    result.train_loss = float(out_train.training_loss)
    result.train_tokens = int(trainer.state.num_input_tokens_seen or 0)
    if validate:
        last = result.eval_losses[-1] if result.eval_losses else None
        fresh = last is not None and last[0] == trainer.state.global_step
        result.final_eval_loss = last[1] if fresh else float(trainer.evaluate()["eval_loss"])


def count_flops(trainer, cfg: TrainConfig, n_frozen: int) -> None:
    """Record each `compute_loss` call's FLOPs (`flops.training_flops`; forward only in evaluation) towards the open
    stage: the head on labelled positions, the layers above the `n_frozen` the frozen-prefix cache stands in for
    (it records those itself when it runs them), input gradients down to the lowest adapter."""
    config = trainer.model.get_base_model().config
    n_layers = config.num_hidden_layers
    adapted = cfg.layers(n_layers) or [0]
    precision = resolve_precision(cfg.precision, cfg.device).chosen
    compute_loss = trainer.compute_loss

    @functools.wraps(compute_loss)
    def compute_loss_counted(model, inputs, *args, **kwargs):
        ids, labels = inputs["input_ids"], inputs.get("labels")
        lengths = [ids.shape[1]] * ids.shape[0]
        head = int((labels[:, 1:] != -100).sum()) if labels is not None else sum(lengths)
        backward = n_layers - min(adapted) if model.training else 0
        run = n_layers - n_frozen
        flops.record(flops.training_flops(config, lengths, run=run, backward=backward, head_tokens=head), precision)
        return compute_loss(model, inputs, *args, **kwargs)

    trainer.compute_loss = compute_loss_counted


def _frozen_layers(cfg: TrainConfig, peft_model, padding_free: bool) -> int:
    """Bottom decoder layers served from the frozen-prefix cache (0: the cache is off or cannot serve this run)."""
    if not cfg.frozen_cache:
        return 0
    base = peft_model.get_base_model()
    n_layers = getattr(base.config, "num_hidden_layers", None)
    adapted = cfg.layers(n_layers) if n_layers else None
    return frozen_layer_count(base, adapted, padding_free=padding_free)


def lora_config(cfg: TrainConfig, model: torch.nn.Module):
    """PEFT's LoraConfig for a TrainConfig on `model`: the adapter every trial (and the benchmarks) trains.

    With `lora_layer_share` < 1 only the top decoder layers carry adapters: nothing below them needs a gradient,
    so autograd stops there (a share of 0.5 on SmolLM2 cuts a step's wall time by about a quarter)."""
    from peft import LoraConfig

    n_layers = getattr(model.config, "num_hidden_layers", None)
    layers = cfg.layers(n_layers) if n_layers else None
    modules = cfg.modules()
    if layers is not None and modules == "all-linear":  # PEFT takes a layer subset only with a list of names
        head = model.get_output_embeddings()
        modules = sorted(
            {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not head}
        )
    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=modules,
        layers_to_transform=layers,
        task_type="CAUSAL_LM",
        bias="none",
    )


def score_labelled_positions_only(trainer, methods: tuple[str, ...] = ("compute_loss",)) -> None:
    """Make `trainer`'s fused LM head project and softmax only the positions that have a label, in each of `methods`
    (SFT: `compute_loss`; DPO: also `compute_ref_log_probs`, the reference forward).

    TRL's fused head (`trl.trainer.utils.add_fused_lm_head`) compacts the hidden states to the labelled positions only
    on CUDA/XPU; elsewhere it scores every position of the batch (to keep tile shapes fixed for compilers like
    Neuron's), prompt tokens included, and zeroes them afterwards, forward and backward. On the CPU, where nothing
    recompiles, that spends the 49152-wide head and softmax on the ~half of each row that is prompt. Here TRL's own
    compact branch is chosen for the duration of each call (`compat.fused_head_on_labelled_positions`): the same
    full-shaped per-token output with zeros at unlabelled positions, fewer rows computed. On a CPU the rows are scored
    by `training.head.log_probs` (one dense log-softmax, the frozen weight cast once) instead of TRL's tiled kernel,
    which on a CPU spent more on weight casts and per-tile passes than on the projection itself."""
    for name in methods:
        method = getattr(trainer, name)

        @functools.wraps(method)
        def on_labelled_positions(*args, _method=method, **kwargs):
            with fused_head_on_labelled_positions(dense_head):
                return _method(*args, **kwargs)

        setattr(trainer, name, on_labelled_positions)


def _trainer(
    model,
    tokenizer,
    train_rows: list[dict],
    val_rows: list[dict],
    cfg: TrainConfig,
    out: str,
    *,
    quiet: bool,
    padding_free: bool,
):
    """TRL's SFTTrainer over a copy of `model` with a fresh LoRA adapter; padding-free rows truncated to max_length."""
    from datasets import Dataset as HFDataset
    from trl import SFTTrainer

    lora = lora_config(cfg, model)
    val_ds = HFDataset.from_list([to_conversation(r) for r in val_rows]) if val_rows else None
    trainer = SFTTrainer(
        model=copy.deepcopy(model).train(),
        args=sft_config(cfg, out, n_val=len(val_rows), quiet=quiet, padding_free=padding_free),
        train_dataset=HFDataset.from_list([to_conversation(r) for r in train_rows]),
        eval_dataset=val_ds,
        processing_class=tokenizer,
        peft_config=lora,
    )
    score_labelled_positions_only(trainer)
    if not quiet:
        from transformers.trainer_callback import ProgressCallback

        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(one_bar())
    # before any batch is drawn: the dataloaders read these attributes when training starts. A padded run has been
    # truncated to max_length by TRL already; the answer cut (completion_tokens) applies to both paths.
    if padding_free or cfg.completion_tokens is not None:
        trainer.train_dataset = truncate_rows(trainer.train_dataset, cfg.max_length, cfg.completion_tokens)
        trainer.eval_dataset = truncate_rows(trainer.eval_dataset, cfg.max_length, cfg.completion_tokens)
    return trainer
