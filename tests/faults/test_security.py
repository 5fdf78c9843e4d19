"""Security rules that hold across the code base."""
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "safety_lab"


def test_torch_load_is_never_used_without_weights_only():
    for path in PACKAGE.rglob("*.py"):
        for call in re.findall(r"torch\.load\([^)]*\)", path.read_text()):
            assert "weights_only=True" in call, f"{path.name}: {call}"


def test_models_load_from_safetensors_only():
    source = (PACKAGE / "models" / "__init__.py").read_text()
    assert "use_safetensors=True" in source


def test_an_adapter_for_another_architecture_fails_in_one_line(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from safety_lab.errors import SafetyLabError
    from safety_lab.models import apply_adapters, load_model

    other = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    get_peft_model(other, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(tmp_path / "adapter")
    with pytest.raises(SafetyLabError, match="does not fit the model"):
        apply_adapters(load_model(str(tiny_model_dir)), [tmp_path / "adapter"])


def test_a_corrupt_model_cache_is_detected_and_rebuilt(tmp_path, monkeypatch):
    import shutil

    from safety_lab import models

    real = models.ensure_default_model()
    monkeypatch.setenv("SAFETY_LAB_CACHE", str(tmp_path))
    copy = tmp_path / real.name
    shutil.copytree(real, copy)
    assert models._cache_is_valid(copy)
    with open(copy / "tokenizer_config.json", "a") as f:
        f.write(" ")
    assert not models._cache_is_valid(copy)
    assert models.ensure_default_model() == copy and models._cache_is_valid(copy)


@pytest.mark.parametrize(("url", "secret", "kept"), [
    ("postgresql://user:hunter2@db.example:5432/optuna", "hunter2", "postgresql://user:***@db.example:5432/optuna"),
    ("postgresql://:hunter2@db.example/optuna", "hunter2", "postgresql://:***@db.example/optuna"),
    ("mysql://user:p@ss@w0rd@db.example/optuna", "ss@w0rd", "mysql://user:***@db.example/optuna"),
    ("postgresql://db.example/optuna?user=me&password=hunter2&sslmode=require", "hunter2",
     "postgresql://db.example/optuna?user=me&password=***&sslmode=require"),
    ("postgresql://db.example/optuna?PASSWORD=hunter2", "hunter2", "postgresql://db.example/optuna?PASSWORD=***"),
    ("sqlite:////tmp/optuna.db", None, "sqlite:////tmp/optuna.db"),
    ("http://user@host:5000", None, "http://user@host:5000"),
])
def test_redact_hides_every_form_of_password(url, secret, kept):
    from safety_lab.tracking import redact

    assert redact(url) == kept
    if secret:
        assert secret not in redact(url) and "p@ss" not in redact(url)
