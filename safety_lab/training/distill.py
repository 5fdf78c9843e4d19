"""Self-distilled benign answers: the base model's own greedy replies, generated once and cached with a checksum.

Training on the model's own answers to benign prompts keeps its helpful behaviour as it was, instead of pulling it
toward our written style. Usage (the model is needed, so the caller passes the answers to the dataset builder):

    answers = distill_answers(load_model(base), benign_prompts())
    data = load_dataset(DataConfig(benign_answers="distilled"), answers=answers)

This module sits above `safety_lab.data` (it needs a model and the generation loop); `safety_lab.data` itself never
imports it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from pathlib import Path

import torch

from safety_lab.models import cache_dir
from safety_lab.models.generation import generate

FORMAT = 1  # bump when the cached file's layout or the answer post-processing changes


def model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over every weight's name, shape, dtype and bytes: equal only for models with identical weights."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().reshape(-1).contiguous().cpu()
        h.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        h.update(memoryview(flat.view(torch.uint8).numpy()))
    return h.hexdigest()


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def cache_key(model: torch.nn.Module, prompts: list[str], settings: dict) -> str:
    """What makes two distillations interchangeable: the weights, the device kind, the prompts and the settings."""
    device = next(model.parameters()).device.type
    return _digest(
        {
            "format": FORMAT,
            "model": model_fingerprint(model),
            "device": device,
            "prompts": _digest(prompts),
            "settings": settings,
        }
    )


def _trim(text: str) -> str:
    """Drop a sentence cut off by the token limit (keep it when there is no complete sentence before it)."""
    text = text.strip()
    if not text or text[-1] in ".!?\"')]`*":
        return text
    ends = list(re.finditer(r"[.!?](?=\s)", text))
    return text[: ends[-1].end()] if ends else text


def _read(path: Path, key: str, prompts: list[str]) -> dict[str, str] | None:
    """The cached answers, or None when the file is missing, unreadable, for another key, or fails its checksum."""
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        answers = record["answers"]
        ok = (
            record["key"] == key
            and record["sha256"] == _digest(answers)
            and isinstance(answers, dict)
            and set(answers) == set(prompts)
        )
    except (OSError, ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        print(
            f"[safety_lab] note: distilled answers at {path} are corrupt or stale; generating them again",
            file=sys.stderr,
            flush=True,
        )
        return None
    return answers


def _write(path: Path, key: str, answers: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(
        json.dumps({"key": key, "sha256": _digest(answers), "answers": answers}, ensure_ascii=False), encoding="utf-8"
    )
    os.replace(tmp, path)  # atomic: a reader never sees half a file


def distill_answers(
    loaded,
    prompts: list[str],
    *,
    max_new_tokens: int = 160,
    batch_size: int = 32,
    system: str | None = None,
    trim: bool = True,
) -> dict[str, str]:
    """The base model's own greedy answer to each prompt, as {prompt: answer}; cached under the model cache dir.

    `loaded` is anything with `.model` and `.tokenizer` (`safety_lab.models.load_model`'s result). The cache key covers
    the weights (a fingerprint of every tensor), the prompts and the generation settings; the file carries a checksum
    of its answers and is regenerated when it does not verify. `trim=False` keeps a sentence cut by the token limit:
    for training on the opening of each answer only (`TrainConfig.completion_tokens`), where a trimmed answer would
    teach the model to stop after its first sentence."""
    prompts = list(dict.fromkeys(prompts))
    settings = {"max_new_tokens": max_new_tokens, "batch_size": batch_size, "system": system, "decoding": "greedy"}
    if not trim:
        settings["trim"] = False
    key = cache_key(loaded.model, prompts, settings)
    path = cache_dir() / "distilled" / f"{key}.json"
    cached = _read(path, key, prompts)
    if cached is not None:
        return cached
    texts = generate(
        loaded.model,
        loaded.tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        system=system,
        desc="distil benign answers",
    )
    answers = {p: _trim(t) if trim else t.strip() for p, t in zip(prompts, texts)}
    _write(path, key, answers)
    return answers


def for_training(completion_tokens: int | None) -> dict:
    """`distill_answers` settings for a training run: whole answers (trimmed to full sentences), or, when only the first
    `completion_tokens` of each answer are trained, a few tokens more than that, untrimmed (the cut falls inside)."""
    if completion_tokens is None:
        return {"max_new_tokens": 160, "trim": True}
    return {"max_new_tokens": completion_tokens + 4, "trim": False}
