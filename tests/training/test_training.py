import torch

from safety_lab.config import DataConfig, TrainConfig
from safety_lab.data import load_dataset
from safety_lab.models import load_model, resolve_device
from safety_lab.training import sft_config, train_lora


def test_lora_training_lowers_validation_loss_and_leaves_the_base_untouched(tiny_model_dir, tmp_path):
    loaded = load_model(str(tiny_model_dir))
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    train, val = load_dataset(DataConfig(data="safe", limit=24, benign_ratio=0)).split(0.25, seed=0)
    cfg = TrainConfig(max_steps=6, eval_every=3, learning_rate=5e-3, lora_r=8, lora_alpha=16, batch_size=4, max_length=96)
    reports = []
    result = train_lora(loaded.model, loaded.tokenizer, train, val, cfg, on_eval=lambda s, l: reports.append((s, l)), quiet=True)
    assert result.final_eval_loss < result.initial_eval_loss
    assert [s for s, _ in reports] == [3, 6]
    lora = [n for n, p in result.model.named_parameters() if p.requires_grad]
    assert lora and all("lora_" in n for n in lora)
    assert all(torch.equal(before[k], v) for k, v in loaded.model.state_dict().items())


def test_precision_follows_the_device():
    device, dtype = resolve_device("cpu")
    assert (device, dtype) == ("cpu", torch.float32)
    args = sft_config(TrainConfig(device="cpu"), "/tmp/unused", n_val=1)
    assert args.bf16 is False and args.gradient_checkpointing is False and args.completion_only_loss is True


def test_the_untrained_validation_loss_does_not_depend_on_the_lora_settings(tiny_model_dir):
    """Why tuning measures it once per study: a fresh adapter is the identity whatever its rank or dropout."""
    loaded = load_model(str(tiny_model_dir))
    train, val = load_dataset(DataConfig(data="safe", limit=16, benign_ratio=0)).split(0.25, seed=0)
    base = TrainConfig(max_steps=1, eval_every=1, batch_size=4, max_length=96)
    losses = [train_lora(loaded.model, loaded.tokenizer, train, val, cfg, quiet=True).initial_eval_loss
              for cfg in (base, TrainConfig(**{**base.__dict__, "lora_r": 4, "lora_alpha": 32.0, "lora_dropout": 0.3,
                                                "learning_rate": 1e-2, "target_modules": "q_proj,v_proj"}))]
    assert abs(losses[0] - losses[1]) < 1e-6, losses
    reused = train_lora(loaded.model, loaded.tokenizer, train, val, base, quiet=True, initial_eval_loss=losses[0])
    assert reused.initial_eval_loss == losses[0]
