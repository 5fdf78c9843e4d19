"""Security rules that hold across the code base."""

import json
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "safety_lab"


def test_torch_load_is_never_used_without_weights_only():
    for path in PACKAGE.rglob("*.py"):
        for call in re.findall(r"torch\.load\([^)]*\)", path.read_text()):
            assert "weights_only=True" in call, f"{path.name}: {call}"


def test_models_load_from_safetensors_only():
    source = (PACKAGE / "models" / "base.py").read_text()
    assert "use_safetensors=True" in source


def test_an_adapter_for_another_architecture_fails_in_one_line(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from safety_lab.errors import SafetyLabError
    from safety_lab.models import apply_adapters, load_model

    other = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
        )
    )
    get_peft_model(other, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(tmp_path / "adapter")
    with pytest.raises(SafetyLabError, match="does not fit the model"):
        apply_adapters(load_model(str(tiny_model_dir)), [tmp_path / "adapter"])


def test_a_corrupt_model_cache_is_detected_and_rebuilt(tmp_path, monkeypatch):
    import shutil

    from safety_lab.models import base as models

    real = models.ensure_default_model()
    monkeypatch.setenv("SAFETY_LAB_CACHE", str(tmp_path))
    copy = tmp_path / real.name
    shutil.copytree(real, copy)
    assert models._cache_is_valid(copy)
    with open(copy / "tokenizer_config.json", "a") as f:
        f.write(" ")
    assert not models._cache_is_valid(copy)
    assert models.ensure_default_model() == copy and models._cache_is_valid(copy)


@pytest.mark.parametrize(
    ("url", "secret", "kept"),
    [
        ("postgresql://user:hunter2@db.example:5432/optuna", "hunter2", "postgresql://user:***@db.example:5432/optuna"),
        ("postgresql://:hunter2@db.example/optuna", "hunter2", "postgresql://:***@db.example/optuna"),
        ("mysql://user:p@ss@w0rd@db.example/optuna", "ss@w0rd", "mysql://user:***@db.example/optuna"),
        (
            "postgresql://db.example/optuna?user=me&password=hunter2&sslmode=require",
            "hunter2",
            "postgresql://db.example/optuna?user=me&password=***&sslmode=require",
        ),
        ("postgresql://db.example/optuna?PASSWORD=hunter2", "hunter2", "postgresql://db.example/optuna?PASSWORD=***"),
        ("sqlite:////tmp/optuna.db", None, "sqlite:////tmp/optuna.db"),
        ("http://user@host:5000", None, "http://user@host:5000"),
    ],
)
def test_redact_hides_every_form_of_password(url, secret, kept):
    from safety_lab.tracking import redact

    assert redact(url) == kept
    if secret:
        assert secret not in redact(url) and "p@ss" not in redact(url)


# ---------------------------------------------------------------- the evaluation cache serves only its own model
def _save_tiny(tiny_model_dir, out, scale: float | None = None):
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    shutil.copytree(tiny_model_dir, out)
    if scale is not None:  # same names, same config, other weights
        model = AutoModelForCausalLM.from_pretrained(out)
        with torch.no_grad():
            model.lm_head.weight.mul_(scale)
        model.save_pretrained(out, safe_serialization=True)
    return out


def test_the_cache_key_follows_the_weights_dtype_device_and_code(tiny_model_dir, tmp_path, monkeypatch):
    import dataclasses

    import torch

    from safety_lab import evaluation
    from safety_lab.evaluation import EvalConfig
    from safety_lab.registry.record import source_identity as _source_identity

    same = _save_tiny(tiny_model_dir, tmp_path / "copy")
    assert _source_identity(str(same)) == _source_identity(str(tiny_model_dir))  # content, not the path
    other = _save_tiny(tiny_model_dir, tmp_path / "other", scale=2.0)
    assert _source_identity(str(other)) != _source_identity(str(tiny_model_dir))

    cfg = EvalConfig(suites="asr", limit=2)
    key = cfg.cache_key("m")
    monkeypatch.setattr(evaluation, "code_sha256", lambda: "other code")
    assert cfg.cache_key("m") != key
    monkeypatch.undo()
    assert cfg.cache_key("m") == key
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU with bf16: cuda, bf16 weights
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    gpu_bf16 = cfg.cache_key("m")
    gpu_fp32 = dataclasses.replace(cfg, precision="fp32").cache_key("m")
    assert len({key, gpu_bf16, gpu_fp32}) == 3  # the device and the weights' dtype are both in the key


@pytest.fixture
def cached_eval(tiny_model_dir, tmp_path, monkeypatch):
    from safety_lab import evaluation as E
    from safety_lab.registry.record import source_identity

    monkeypatch.setenv("SAFETY_LAB_CACHE", str(tmp_path / "cache"))
    cfg = E.EvalConfig(suites="asr", limit=2, max_new_tokens=2)
    reference = E.Reference(str(tiny_model_dir), source_identity(str(tiny_model_dir)))

    def run():
        return E.cached_suites(reference, cfg)["asr"].metrics

    return run, E._cache_file(cfg.cache_key(reference.identity))


def test_a_corrupt_cache_entry_is_recomputed(cached_eval, capsys):
    run, path = cached_eval
    metrics = run()
    assert json.loads(path.read_text())["asr"]["metrics"] == metrics
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind
    path.write_text('{"metrics": {"asr": 0.0')  # e.g. a full disk or a killed writer on a non-atomic filesystem
    capsys.readouterr()
    again = run()
    assert again == metrics and "recomputing" in capsys.readouterr().err
    assert json.loads(path.read_text())["asr"]["metrics"] == metrics


def test_a_failed_cache_write_is_a_warning(cached_eval, capsys, monkeypatch):
    run, path = cached_eval
    path.parent.parent.mkdir(parents=True)
    path.parent.write_text("a file where the cache folder should be")
    metrics = run()
    assert "asr" in metrics and "could not write the evaluation cache" in capsys.readouterr().err
    path.parent.unlink()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.replace", full_disk)
    assert run() == metrics
    assert "No space left" in capsys.readouterr().err
    assert list(path.parent.iterdir()) == []  # the temp file was removed
