import tempfile

import pytest
import torch

from safety_lab.config import DataConfig, TrainConfig
from safety_lab.data import load_dataset
from safety_lab.errors import SafetyLabError
from safety_lab.models import load_model, resolve_device, resolve_precision
from safety_lab.training import _trainer, sft_config, train_lora

# bf16 autocast rounds matmul inputs to 8 mantissa bits. On the tiny model 6 steps moved the final validation loss by
# 1.3e-4 (measured: 10.60429 fp32, 10.60416 bf16) while training lowered it by 0.21; 0.01 leaves room for other
# CPUs' kernels and is still 20x smaller than what the 6 steps achieve.
BF16_LOSS_TOLERANCE = 0.01
PADDING_FREE_TOLERANCE = 1e-3


def test_lora_training_lowers_validation_loss_and_leaves_the_base_untouched(tiny_model_dir, tmp_path):
    loaded = load_model(str(tiny_model_dir))
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    train, val = load_dataset(DataConfig(data="safe", limit=24, benign_ratio=0)).split(0.25, seed=0)
    cfg = TrainConfig(
        max_steps=6, eval_every=3, learning_rate=5e-3, lora_r=8, lora_alpha=16, batch_size=4, max_length=96
    )
    reports = []
    result = train_lora(
        loaded.model,
        loaded.tokenizer,
        train,
        val,
        cfg,
        on_eval=lambda step, loss: reports.append((step, loss)),
        quiet=True,
    )
    assert result.final_eval_loss < result.initial_eval_loss
    assert [s for s, _ in reports] == [3, 6]
    lora = [n for n, p in result.model.named_parameters() if p.requires_grad]
    assert lora and all("lora_" in n for n in lora)
    assert all(torch.equal(before[k], v) for k, v in loaded.model.state_dict().items())


def test_precision_auto_follows_the_hardware(monkeypatch):
    assert resolve_device("cpu") == "cpu"
    for native, chosen in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda native=native: native)
        precision = resolve_precision("auto", "cpu")
        assert (precision.chosen, precision.bf16_native) == (chosen, native)
        assert precision.weights == torch.float32  # the model's weights stay fp32 on a CPU
        params = precision.params()
        assert params["precision.chosen"] == chosen and params["precision.bf16_native"] == str(native).lower()
        args = sft_config(TrainConfig(device="cpu"), "/tmp/unused", n_val=1)
        assert args.bf16 is native and args.fp16 is False
        assert args.gradient_checkpointing is False and args.completion_only_loss is True
        assert sft_config(TrainConfig(device="cpu", precision="fp32"), "/tmp/unused", n_val=1).bf16 is False
    assert sft_config(TrainConfig(device="cpu", precision="bf16"), "/tmp/unused", n_val=1).bf16 is True
    assert "emulated" in resolve_precision("bf16", "cpu").reason  # asked for on a CPU without it: allowed, but said
    with pytest.raises(SafetyLabError, match="precision: must be auto, fp32 or bf16"):
        TrainConfig(precision="fp8")


def test_precision_on_a_gpu_without_bf16_keeps_fp16_and_refuses_bf16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", "cuda").chosen == "fp16"
    with pytest.raises(SafetyLabError, match="precision: bf16 requested but cuda does not support bf16"):
        resolve_precision("bf16", "cuda")


def _tiny_run(tiny_model_dir, **kw):
    loaded = load_model(str(tiny_model_dir))
    train, val = load_dataset(DataConfig(data="safe", limit=24, benign_ratio=0)).split(0.25, seed=0)
    options = {k: kw.pop(k) for k in ("padding_free",) if k in kw}
    cfg = TrainConfig(
        **{
            "max_steps": 6,
            "eval_every": 3,
            "learning_rate": 5e-3,
            "batch_size": 4,
            "max_length": 96,
            "lora_dropout": 0.0,
            **kw,
        }
    )
    losses = []
    result = train_lora(
        loaded.model,
        loaded.tokenizer,
        train,
        val,
        cfg,
        quiet=True,
        on_log=lambda step, logs: "loss" in logs and losses.append(logs["loss"]),
        **options,
    )
    return result, losses


def test_bf16_autocast_training_reaches_the_fp32_validation_loss(tiny_model_dir):
    fp32, _ = _tiny_run(tiny_model_dir, precision="fp32")
    bf16, _ = _tiny_run(tiny_model_dir, precision="bf16")
    assert fp32.final_eval_loss < fp32.initial_eval_loss and bf16.final_eval_loss < bf16.initial_eval_loss
    diff = abs(bf16.final_eval_loss - fp32.final_eval_loss)
    assert 0 < diff < BF16_LOSS_TOLERANCE, (fp32.final_eval_loss, bf16.final_eval_loss)  # > 0: autocast really ran
    # the trained model comes back without the autocast wrapper: what uses it next (reload check, evaluation) is fp32
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    with torch.inference_mode():
        plain = type(bf16.model).forward(bf16.model, input_ids=ids).logits
        assert torch.equal(bf16.model(input_ids=ids).logits, plain) and plain.dtype == torch.float32


def test_padding_free_training_gives_the_padded_losses_and_counts_the_same_tokens(tiny_model_dir):
    """max_length 48 truncates most rows (1056 of 1499 tokens are kept), so truncation is checked too; measured
    difference 1.9e-6."""
    padded, padded_losses = _tiny_run(tiny_model_dir, precision="fp32", max_length=48, padding_free=False)
    flat, flat_losses = _tiny_run(tiny_model_dir, precision="fp32", max_length=48)
    assert len(flat_losses) == len(padded_losses) == 6
    assert max(abs(a - b) for a, b in zip(flat_losses, padded_losses)) < PADDING_FREE_TOLERANCE
    for a, b in ((flat.initial_eval_loss, padded.initial_eval_loss), (flat.final_eval_loss, padded.final_eval_loss)):
        assert abs(a - b) < PADDING_FREE_TOLERANCE
    assert flat.train_tokens == padded.train_tokens > 0  # non-padding tokens, each counted once, EOS included


def test_the_untrained_validation_loss_does_not_depend_on_the_lora_settings(tiny_model_dir):
    """Why tuning measures it once per study: a fresh adapter is the identity whatever its rank or dropout."""
    loaded = load_model(str(tiny_model_dir))
    train, val = load_dataset(DataConfig(data="safe", limit=16, benign_ratio=0)).split(0.25, seed=0)
    base = TrainConfig(max_steps=1, eval_every=1, batch_size=4, max_length=96)
    losses = [
        train_lora(loaded.model, loaded.tokenizer, train, val, cfg, quiet=True).initial_eval_loss
        for cfg in (
            base,
            TrainConfig(
                **{
                    **base.__dict__,
                    "lora_r": 4,
                    "lora_alpha": 32.0,
                    "lora_dropout": 0.3,
                    "learning_rate": 1e-2,
                    "target_modules": "q_proj,v_proj",
                }
            ),
        )
    ]
    assert abs(losses[0] - losses[1]) < 1e-6, losses
    reused = train_lora(loaded.model, loaded.tokenizer, train, val, base, quiet=True, initial_eval_loss=losses[0])
    assert reused.initial_eval_loss == losses[0]


def test_a_layer_share_adapts_only_the_top_layers_and_leaves_the_rest_without_gradients(tiny_model_dir):
    n_layers = load_model(str(tiny_model_dir)).model.config.num_hidden_layers
    assert TrainConfig(lora_layer_share=1.0).layers(n_layers) is None
    assert TrainConfig(lora_layer_share=0.5).layers(30) == list(range(15, 30))
    assert TrainConfig(lora_layer_share=0.01).layers(30) == [29]  # at least one layer
    with pytest.raises(SafetyLabError, match="lora_layer_share: must be in"):
        TrainConfig(lora_layer_share=0)
    result, _ = _tiny_run(tiny_model_dir, precision="fp32", lora_layer_share=0.5, target_modules="all-linear")
    adapted = {int(n.split(".layers.")[1].split(".")[0]) for n, p in result.model.named_parameters() if "lora_" in n}
    assert adapted == set(TrainConfig(lora_layer_share=0.5).layers(n_layers))
    assert result.final_eval_loss < result.initial_eval_loss


def _head_rows_and_labels(monkeypatch):
    """Record, per `compute_loss` call, the rows the LM head projects (TRL's fused kernel, or the project's CPU head
    that stands in for it) and the batch's labelled positions; "kernel" says which head ran."""
    import trl
    from trl.trainer import utils as trl_utils

    from safety_lab import training

    seen = {"head_rows": [], "labelled": [], "positions": [], "kernel": set()}
    chunked, dense = trl_utils._ChunkedLogProbFunction, training.dense_head

    class _Counting(chunked):
        @classmethod
        def apply(cls, hidden, *args, **kwargs):
            seen["head_rows"].append(hidden.shape[0])
            seen["kernel"].add("trl")
            return chunked.apply(hidden, *args, **kwargs)

    def _counting_dense(hidden, *args, **kwargs):
        seen["head_rows"].append(hidden.shape[0])
        seen["kernel"].add("dense")
        return dense(hidden, *args, **kwargs)

    class _Recording(trl.SFTTrainer):
        def compute_loss(self, model, inputs, *args, **kwargs):
            shifted = inputs["labels"][:, 1:]  # the head scores position i against the label of i + 1
            seen["labelled"].append(int((shifted != -100).sum()))
            seen["positions"].append(shifted.numel())
            return super().compute_loss(model, inputs, *args, **kwargs)

    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", _Counting)
    monkeypatch.setattr(training, "dense_head", _counting_dense)
    monkeypatch.setattr(trl, "SFTTrainer", _Recording)  # `_trainer` imports it at call time
    return seen


def test_the_lm_head_scores_only_labelled_positions_and_gives_the_same_losses(tiny_model_dir, monkeypatch):
    """Prompt tokens (about half of each row) have no label, so they never reach the 49152-wide head and softmax;
    training and validation losses stay those of TRL's own head, which scores every position on a CPU."""
    from safety_lab import training

    seen = _head_rows_and_labels(monkeypatch)
    compact, compact_losses = _tiny_run(tiny_model_dir, precision="fp32")
    assert seen["head_rows"] and seen["head_rows"] == seen["labelled"]
    assert seen["kernel"] == {"dense"}  # on a CPU the project's head, not TRL's tiled kernel (training.head)
    assert sum(seen["labelled"]) < 0.8 * sum(seen["positions"])  # the prompts are a real share of the rows

    monkeypatch.setattr(training, "score_labelled_positions_only", lambda trainer: None)  # TRL's head as it ships
    seen = _head_rows_and_labels(monkeypatch)
    reference, reference_losses = _tiny_run(tiny_model_dir, precision="fp32")
    assert seen["head_rows"] == seen["positions"]  # every position, labelled or not: what the change removes
    assert seen["kernel"] == {"trl"}

    assert len(compact_losses) == len(reference_losses) == 6
    assert max(abs(a - b) for a, b in zip(compact_losses, reference_losses)) < 1e-5
    pairs = [
        (compact.initial_eval_loss, reference.initial_eval_loss),
        (compact.final_eval_loss, reference.final_eval_loss),
    ]
    pairs += [(a, b) for (_, a), (_, b) in zip(compact.eval_losses, reference.eval_losses)]
    assert all(abs(a - b) < 1e-5 for a, b in pairs), pairs


def test_completion_tokens_trains_on_the_opening_of_each_answer_only(tiny_model_dir):
    """Each row keeps its whole prompt and the first N answer tokens: the trained-token count is N per row."""
    loaded = load_model(str(tiny_model_dir))
    train, val = load_dataset(DataConfig(data="safe", limit=24, benign_ratio=0)).split(0.25, seed=0)
    cfg = TrainConfig(max_steps=1, batch_size=4, completion_tokens=5, lora_dropout=0.0)
    with tempfile.TemporaryDirectory() as out:
        full = _trainer(
            loaded.model, loaded.tokenizer, train, val, TrainConfig(max_steps=1), out, quiet=True, padding_free=True
        )
        cut = _trainer(loaded.model, loaded.tokenizer, train, val, cfg, out, quiet=True, padding_free=True)
        for before, after in zip(full.train_dataset, cut.train_dataset):
            labelled = [i for i, label in enumerate(after["labels"]) if label != -100]
            first = next(i for i, label in enumerate(before["labels"]) if label != -100)
            assert labelled == list(range(first, first + 5))  # the prompt whole, then 5 answer tokens
            assert after["input_ids"] == before["input_ids"][: first + 5]
    with pytest.raises(SafetyLabError, match="completion_tokens: must be at least 1"):
        TrainConfig(completion_tokens=0)
    result, _ = _tiny_run(tiny_model_dir, precision="fp32", completion_tokens=5)
    assert result.final_eval_loss < result.initial_eval_loss


def test_a_visible_run_shows_one_progress_bar_and_no_per_step_log_lines(tiny_model_dir, capsys):
    loaded = load_model(str(tiny_model_dir))
    train, val = load_dataset(DataConfig(data="safe", limit=16, benign_ratio=0)).split(0.25, seed=0)
    cfg = TrainConfig(max_steps=3, eval_every=1, batch_size=4, max_length=96)
    logged = []
    train_lora(loaded.model, loaded.tokenizer, train, val, cfg, on_log=lambda step, logs: logged.append(logs))
    out = capsys.readouterr()
    text = out.out + out.err
    assert "3/3" in text  # the bar ran
    assert "'loss'" not in text and "'eval_loss'" not in text  # Trainer's per-step dicts stay off the terminal
    assert any("loss" in logs for logs in logged)  # while the losses still reach the callback (and MLflow)


def test_the_first_steps_give_one_estimate_of_the_training_time_left(tiny_model_dir, capsys):
    from safety_lab.training import remaining_seconds

    assert remaining_seconds(2.0, 10, 100, 1) == pytest.approx(2.0 * (90 + 100))
    assert remaining_seconds(2.0, 100, 100, 0) == 0.0
    loaded = load_model(str(tiny_model_dir))
    train, val = load_dataset(DataConfig(data="safe", limit=16, benign_ratio=0)).split(0.25, seed=0)
    cfg = TrainConfig(max_steps=8, eval_every=8, batch_size=4, max_length=96)
    train_lora(loaded.model, loaded.tokenizer, train, val, cfg, quiet=True, trials_after=2)
    lines = [line for line in capsys.readouterr().out.splitlines() if "of SFT training left" in line]
    assert len(lines) == 1 and "2 steps of this trial + 2 more trial(s) of 8" in lines[0], lines
    train_lora(loaded.model, loaded.tokenizer, train, val, cfg, quiet=True)  # no trials_after: no estimate
    assert "of SFT training left" not in capsys.readouterr().out


@pytest.mark.parametrize("frozen_cache", [True, False])
def test_with_the_frozen_cache_a_second_estimate_comes_from_the_steps_that_found_their_rows(
    tiny_model_dir, capsys, frozen_cache
):
    """Epoch 1 runs every layer and fills the store; later epochs, and every step of a later trial, skip the bottom
    layers. An estimate from the first steps alone overstated a 360-step make run's training by about half."""
    loaded = load_model(str(tiny_model_dir))
    train, val = load_dataset(DataConfig(data="safe", limit=16, benign_ratio=0)).split(0.25, seed=0)
    assert len(train) == 12  # 6 steps per epoch at batch 2: epoch 2 starts at step 7
    cfg = TrainConfig(max_steps=16, eval_every=16, batch_size=2, max_length=96, frozen_cache=frozen_cache)
    train_lora(loaded.model, loaded.tokenizer, train, val, cfg, quiet=True, trials_after=1)
    lines = [line for line in capsys.readouterr().out.splitlines() if "of SFT training left" in line]
    if not frozen_cache:
        assert len(lines) == 1 and "10 steps of this trial" in lines[0], lines
        return
    assert len(lines) == 2, lines
    assert "10 steps of this trial" in lines[0] and "once rows repeat" not in lines[0]  # steps 2-6: epoch 1
    assert "once rows repeat; 4 steps of this trial + 1 more trial(s) of 16" in lines[1]  # steps 8-12: epoch 2
