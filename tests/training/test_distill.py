"""Self-distilled benign answers: generated once per model, prompts and settings; a corrupt cache is regenerated."""

import json

import pytest
import torch

from safety_lab.models import load_model, resolve_precision
from safety_lab.training import distill

PROMPTS = ["What is 2 + 2?", "Name a color.", "Say hello."]


@pytest.fixture
def tiny(tiny_model_dir):
    return load_model(str(tiny_model_dir), precision=resolve_precision("auto", "cpu"))


@pytest.fixture
def calls(monkeypatch, tmp_path):
    """Counts real generations; the cache lives in a private directory."""
    monkeypatch.setenv("SAFETY_LAB_CACHE", str(tmp_path / "cache"))
    seen = []
    real = distill.generate

    def counting(*args, **kwargs):
        seen.append(args[2])
        return real(*args, **kwargs)

    monkeypatch.setattr(distill, "generate", counting)
    return seen


def _files(tmp_path):
    return sorted((tmp_path / "cache" / "distilled").glob("*.json"))


def test_second_call_is_a_cache_hit_with_the_same_answers(tiny, calls, tmp_path):
    first = distill.distill_answers(tiny, PROMPTS, max_new_tokens=6)
    assert set(first) == set(PROMPTS) and len(calls) == 1
    assert distill.distill_answers(tiny, PROMPTS, max_new_tokens=6) == first
    assert len(calls) == 1 and len(_files(tmp_path)) == 1


def test_other_settings_prompts_or_weights_miss_the_cache(tiny, calls, tmp_path):
    distill.distill_answers(tiny, PROMPTS, max_new_tokens=6)
    distill.distill_answers(tiny, PROMPTS, max_new_tokens=7)
    distill.distill_answers(tiny, PROMPTS[:2], max_new_tokens=6)
    with torch.no_grad():
        next(tiny.model.parameters()).view(-1)[0] += 1.0  # same architecture and spec, different weights
    distill.distill_answers(tiny, PROMPTS, max_new_tokens=6)
    assert len(calls) == 4 and len(_files(tmp_path)) == 4


@pytest.mark.parametrize("damage", ["edit_answer", "truncate", "garbage"])
def test_a_corrupt_cache_file_is_detected_and_regenerated(tiny, calls, tmp_path, damage):
    first = distill.distill_answers(tiny, PROMPTS, max_new_tokens=6)
    (path,) = _files(tmp_path)
    text = path.read_text(encoding="utf-8")
    if damage == "edit_answer":  # still valid JSON, but the checksum no longer matches the answers
        record = json.loads(text)
        record["answers"][PROMPTS[0]] = "tampered"
        path.write_text(json.dumps(record), encoding="utf-8")
    else:
        path.write_text(text[: len(text) // 2] if damage == "truncate" else "\x00not json", encoding="utf-8")
    assert distill.distill_answers(tiny, PROMPTS, max_new_tokens=6) == first
    assert len(calls) == 2
    assert json.loads(path.read_text(encoding="utf-8"))["answers"] == first  # repaired on disk


def test_trim_drops_a_sentence_cut_off_by_the_token_limit():
    assert distill._trim("Paris is the capital. It has many museums and") == "Paris is the capital."
    assert distill._trim("Paris is the capital.") == "Paris is the capital."
    assert distill._trim("Paris") == "Paris"
    assert distill._trim("  ") == ""
