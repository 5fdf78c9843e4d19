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


def _small_cache(tmp_path, *, stats: bool = True):
    """A cache folder laid out as ensure_default_model writes it, with small files instead of the model."""
    import json

    from safety_lab import models

    target = tmp_path / "cache"
    target.mkdir()
    for name, text in (("model.safetensors", "weights" * 100), ("tokenizer_config.json", '{"a": 1}')):
        (target / name).write_text(text)
    manifest = {"files": {p.name: models._sha256(p) for p in target.iterdir()}}
    if stats:
        manifest["stats"] = {p.name: models._stat(p) for p in target.iterdir()}
    (target / models._MANIFEST).write_text(json.dumps(manifest))
    return target


def test_a_cached_model_is_checked_by_size_and_mtime_and_hashed_only_when_they_differ_or_on_demand(tmp_path,
                                                                                                  monkeypatch):
    import os

    from safety_lab import models

    target = _small_cache(tmp_path)
    real_sha = models._sha256
    monkeypatch.setattr(models, "_sha256", lambda p: pytest.fail(f"{p.name} hashed although its stats match"))
    assert models._cache_is_valid(target)
    # a same-size edit that restores the mtime: invisible to the stat check, caught by --verify-cache
    path = target / "tokenizer_config.json"
    st = path.stat()
    path.write_text('{"a": 2}')
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert models._cache_is_valid(target)
    monkeypatch.setattr(models, "_sha256", real_sha)
    assert not models._cache_is_valid(target, verify=True)
    # a changed size is hashed at once, without asking
    path.write_text('{"a": 1}  ')
    assert not models._cache_is_valid(target)


def test_an_older_cache_without_stats_is_hashed_once_then_checked_by_stats(tmp_path, monkeypatch):
    import json

    from safety_lab import models

    target = _small_cache(tmp_path, stats=False)
    assert models._cache_is_valid(target)  # hashed: the digests match
    stats = json.loads((target / models._MANIFEST).read_text())["stats"]
    assert set(stats) == {"model.safetensors", "tokenizer_config.json"}
    monkeypatch.setattr(models, "_sha256", lambda p: pytest.fail("hashed again"))
    assert models._cache_is_valid(target)
    assert [p.name for p in target.iterdir() if p.name.startswith(".manifest-")] == []
