"""The LM head runs as one matrix product over the batch, also when the weights need no gradient.

Asking the model for the last position's logits with `logits_to_keep=1` hands the LM head a slice strided across the
batch; with a frozen weight (an adapter's base, a model cast for evaluation) torch's matmul then cannot fold the batch
and runs a batched product over a copy of the 49152 x 576 head weight per row: 40% of a bf16 evaluation's
generation time on SmolLM2. Measured in `bench/frozen_head.py`; here the op itself is checked.
"""

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from safety_lab.models import load_model
from safety_lab.models.generation import chat_inputs, decode_ids
from safety_lab.models.scoring import continuation_logprobs

PROMPTS = ["Tell me a joke.", "What is the capital of France? Answer briefly please.", "Hi"]


@pytest.fixture(scope="module")
def frozen(tiny_model_dir):
    loaded = load_model(str(tiny_model_dir))
    loaded.model.requires_grad_(False)
    return loaded


def _ops(fn) -> set[str]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {event.key for event in prof.key_averages()}


def test_generation_runs_the_head_of_a_frozen_model_as_one_product(frozen):
    encoded = chat_inputs(frozen.tokenizer, PROMPTS)
    ops = _ops(lambda: decode_ids(frozen.model, frozen.tokenizer, encoded, max_new_tokens=3))
    assert "aten::mm" in ops and "aten::bmm" not in ops


def test_scoring_runs_the_head_of_a_frozen_model_as_one_product(frozen):
    prompts = chat_inputs(frozen.tokenizer, PROMPTS)
    options = [frozen.tokenizer(" Paris", add_special_tokens=False)["input_ids"]] * len(prompts)
    ops = _ops(lambda: continuation_logprobs(frozen.model, prompts, options, [0, 1, 2], pad_id=0))
    assert "aten::bmm" not in ops


def test_the_last_positions_logits_are_those_of_the_full_forward(frozen):
    from safety_lab.models.generation import last_position, left_pad

    ids, mask = left_pad(chat_inputs(frozen.tokenizer, PROMPTS), 0, "cpu")
    with torch.inference_mode():
        full = frozen.model(input_ids=ids, attention_mask=mask).logits[:, -1]
        kept = frozen.model(input_ids=ids, attention_mask=mask, logits_to_keep=last_position(ids)).logits[:, -1]
    torch.testing.assert_close(kept, full)
