"""Model resolution and generation edge cases: offline hub ids, device choice, very long prompts."""

import pytest
import torch

from safety_lab.errors import SafetyLabError
from safety_lab.models import load_model, resolve_device, resolve_precision


def test_a_hub_id_offline_fails_at_once_with_a_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        SafetyLabError, match="base_model: 'no-such-org/no-such-model' is not in the local Hugging Face cache"
    ):
        load_model("no-such-org/no-such-model")


def test_gpu_precision_is_bf16_where_supported_and_fp16_otherwise(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    auto = resolve_precision("auto", None)
    assert (auto.device, auto.weights) == ("cuda", torch.bfloat16)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    auto = resolve_precision("auto", "cuda:1")
    assert (auto.device, auto.weights) == ("cuda:1", torch.float16)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    auto = resolve_precision("auto", "auto")
    assert (auto.device, auto.weights) == ("cpu", torch.float32)
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

    from safety_lab.models import base as models

    target = tmp_path / "cache"
    target.mkdir()
    for name, text in (("model.safetensors", "weights" * 100), ("tokenizer_config.json", '{"a": 1}')):
        (target / name).write_text(text)
    manifest = {"files": {p.name: models._sha256(p) for p in target.iterdir()}}
    if stats:
        manifest["stats"] = {p.name: models._stat(p) for p in target.iterdir()}
    (target / models._MANIFEST).write_text(json.dumps(manifest))
    return target


def test_a_cached_model_is_checked_by_size_and_mtime_and_hashed_only_when_they_differ_or_on_demand(
    tmp_path, monkeypatch
):
    import os

    from safety_lab.models import base as models

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

    from safety_lab.models import base as models

    target = _small_cache(tmp_path, stats=False)
    assert models._cache_is_valid(target)  # hashed: the digests match
    stats = json.loads((target / models._MANIFEST).read_text())["stats"]
    assert set(stats) == {"model.safetensors", "tokenizer_config.json"}
    monkeypatch.setattr(models, "_sha256", lambda p: pytest.fail("hashed again"))
    assert models._cache_is_valid(target)
    assert [p.name for p in target.iterdir() if p.name.startswith(".manifest-")] == []


def _vary(model, seed: int) -> None:
    """The fixture's small init answers "\n" to everything; larger weights give varied text."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.5)


def _transformers_greedy(model, tok, prompt_ids: list[int], max_new_tokens: int, eos: int):
    """transformers' own greedy loop on one unpadded prompt: (new ids before EOS, whether EOS came, per-step scores)."""
    ref = model.generate(
        input_ids=torch.tensor([prompt_ids]),
        attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=eos,
        pad_token_id=tok.pad_token_id,
        output_scores=True,
        return_dict_in_generate=True,
        temperature=None,
        top_p=None,
        top_k=None,
    )
    new = ref.sequences[0, len(prompt_ids) :].tolist()
    return (new[: new.index(eos)] if eos in new else new), eos in new, ref.scores


def test_batched_greedy_equals_the_transformers_loop_while_finished_rows_leave_the_batch(tiny_model_dir):
    from safety_lab.models.generation import _decode, chat_inputs, left_pad

    loaded = load_model(str(tiny_model_dir))
    model, tok = loaded.model, loaded.tokenizer
    _vary(model, seed=1)
    prompts = [
        "Hi",
        "Tell me a joke.",
        "What is the capital of France? Answer briefly please.",
        "Name a colour.",
        "Write one short sentence about the sea and the sky at night.",
    ]
    encoded = chat_inputs(tok, prompts)
    ids, mask = left_pad(encoded, tok.pad_token_id, "cpu")
    free = _decode(model, ids, mask, max_new_tokens=8, eos=torch.tensor([-1]), scores=False)
    # used as EOS: a token some row produces later than others (or never), so rows leave the batch at different steps
    firsts = [{t: o.ids.index(t) for t in o.ids} for o in free]
    stop = max({t for f in firsts for t in f}, key=lambda t: len({f.get(t, -1) for f in firsts}))
    outs = _decode(model, ids, mask, max_new_tokens=8, eos=torch.tensor([stop]), scores=True)
    assert len({len(o.ids) for o in outs}) > 1, [o.ids for o in free]
    assert not all(o.stopped for o in outs)  # some rows went on after others had left the batch
    for prompt_ids, out in zip(encoded, outs):
        ids, stopped, scores = _transformers_greedy(model, tok, prompt_ids, 8, stop)
        assert out.ids == ids
        assert out.stopped == stopped
        chosen = [float(torch.log_softmax(scores[k][0].float(), -1)[t]) for k, t in enumerate(out.ids)]
        assert out.chosen == pytest.approx(chosen, rel=1e-4, abs=1e-4)  # padding changes the reduction order only


def test_prompts_sharing_an_opening_prefill_it_once_and_still_equal_the_transformers_loop(tiny_model_dir, monkeypatch):
    """generate() computes the system turn every prompt shares once; the answers must not change."""
    from safety_lab.models import generation

    loaded = load_model(str(tiny_model_dir))
    model, tok = loaded.model, loaded.tokenizer
    _vary(model, seed=2)
    prompts = ["Hi", "Name a colour.", "What is the capital of France? Answer briefly please.", "Tell me a joke."]
    system = "You answer in one to three words only."
    shared, real = [], generation.shared_prefix
    monkeypatch.setattr(generation, "shared_prefix", lambda m, ids: shared.append(len(ids)) or real(m, ids))
    outs = generation.generate_tokens(model, tok, prompts, system=system, max_new_tokens=8, batch_size=3)
    assert shared and shared[0] >= generation.MIN_SHARED  # the opening was prefilled once, on its own
    eos = tok.eos_token_id
    for prompt_ids, out in zip(generation.chat_inputs(tok, prompts, system=system), outs):
        assert out.ids == _transformers_greedy(model, tok, prompt_ids, 8, eos)[0]


def test_generation_stops_at_every_end_token_the_generation_config_lists(tiny_model_dir):
    """Llama-3, Qwen2.5 and Gemma list several end tokens (end of turn, end of text): each one ends the answer."""
    from safety_lab.models.generation import generate_tokens

    loaded = load_model(str(tiny_model_dir))
    model, tok = loaded.model, loaded.tokenizer
    _vary(model, seed=3)
    prompts = ["Tell me a joke.", "Name a colour."]
    free = generate_tokens(model, tok, prompts, max_new_tokens=8)
    assert all(len(o.ids) >= 4 for o in free), [o.ids for o in free]
    second_end = free[0].ids[2]  # a token the model says third: as a listed end token, the answer stops before it
    model.generation_config.eos_token_id = [tok.eos_token_id, second_end]
    try:
        ended = generate_tokens(model, tok, prompts, max_new_tokens=8)
    finally:
        model.generation_config.eos_token_id = tok.eos_token_id
    assert ended[0].ids == free[0].ids[: free[0].ids.index(second_end)] and ended[0].stopped
    for before, after in zip(free[1:], ended[1:]):
        cut = before.ids.index(second_end) if second_end in before.ids else len(before.ids)
        assert after.ids == before.ids[:cut]
