"""Model resolution and generation edge cases: offline hub ids, device choice, very long prompts."""
import pytest
import torch

from safety_lab.errors import SafetyLabError
from safety_lab.models import load_model, resolve_device


def test_a_hub_id_offline_fails_at_once_with_a_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SafetyLabError, match="base_model: 'no-such-org/no-such-model' is not in the local Hugging Face cache"):
        load_model("no-such-org/no-such-model")


def test_gpu_precision_is_bf16_where_supported_and_fp16_otherwise(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_device(None) == ("cuda", torch.bfloat16)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_device("cuda:1") == ("cuda:1", torch.float16)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == ("cpu", torch.float32)
    with pytest.raises(SafetyLabError, match="device: 'cuda' requested but CUDA is not available"):
        resolve_device("cuda")


def test_very_long_prompts_are_truncated_and_noted_not_crashed_on(tiny_model_dir, capsys):
    from safety_lab.models.generation import generate

    loaded = load_model(str(tiny_model_dir))
    long_prompt = "word " * 3000  # far beyond the tiny model's 512 positions
    out = generate(loaded.model, loaded.tokenizer, [long_prompt, "hi"], max_new_tokens=4)
    assert len(out) == 2
    assert "1 prompt(s) longer than the model's context were truncated" in capsys.readouterr().err


def test_batched_generation_matches_one_prompt_at_a_time(tiny_model_dir):
    from safety_lab.models.generation import generate

    loaded = load_model(str(tiny_model_dir))
    prompts = ["Tell me a joke.", "What is the capital of France? Answer briefly please.", "Hi"]
    batched = generate(loaded.model, loaded.tokenizer, prompts, max_new_tokens=6, batch_size=3)
    single = [generate(loaded.model, loaded.tokenizer, [p], max_new_tokens=6)[0] for p in prompts]
    assert batched == single
