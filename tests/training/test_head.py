"""training.head: the CPU LM head gives TRL's fused kernel's outputs and gradients, and casts a frozen weight once."""

import pytest
import torch
from trl.kernels import ChunkedLogProbFunction

from safety_lab.training import head

OUTPUTS = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")


def _inputs(n=12, h=16, v=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g)
    weight = torch.randn(v, h, generator=g) * 0.5
    targets = torch.randint(0, v, (n,), generator=g)
    targets[0] = int((hidden[0] @ weight.T).argmax())  # at least one target is the top-1 token
    return hidden, weight, targets


def _both(hidden, weight, targets, *, autocast: bool, temperature=1.0, softcap=None, scale=1.0):
    """(outputs, input gradient of -sum(log_probs) - 0.1 sum(entropy)) of TRL's kernel and of `head.log_probs`."""
    results = []
    for fn in (ChunkedLogProbFunction.apply, head.log_probs):
        h = hidden.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = fn(h, weight, None, targets, temperature, 128, softcap, scale, OUTPUTS)  # TRL tiles by 128 here
        (-out[0].sum() - 0.1 * out[1].sum()).backward()
        results.append(([o.detach() for o in out], h.grad))
    return results


@pytest.mark.parametrize("options", [{}, {"temperature": 0.7, "softcap": 30.0, "scale": 0.5}], ids=["plain", "scaled"])
def test_fp32_outputs_and_gradients_are_trls(options):
    hidden, weight, targets = _inputs()
    (trl_out, trl_grad), (out, grad) = _both(hidden, weight, targets, autocast=False, **options)
    for name, a, b in zip(OUTPUTS[:4], trl_out, out):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), name
    assert torch.equal(trl_out[4], out[4]) and out[4][0]  # is_top1: the forced argmax target counts
    assert torch.allclose(trl_grad, grad, atol=1e-5, rtol=1e-4)


def test_bf16_autocast_projects_in_bf16_and_matches_trl_within_its_rounding():
    hidden, weight, targets = _inputs(n=40, h=64, v=1000, seed=1)
    (trl_out, trl_grad), (out, grad) = _both(hidden, weight, targets, autocast=True)
    assert out[0].dtype == torch.float32  # the softmax in fp32, as TRL's
    assert torch.allclose(trl_out[0], out[0], atol=1e-4)  # same bf16 logits, fp32 reductions in another order
    # TRL accumulates the input gradient in fp32; autocast's backward rounds it to bf16 (8 mantissa bits)
    assert ((grad.float() - trl_grad).norm() / trl_grad.norm()) < 1e-2
    fp32 = head.log_probs(hidden, weight, None, targets, 1.0, 0, None, 1.0, OUTPUTS)[0]
    assert not torch.allclose(fp32, out[0], atol=1e-6)  # the projection did run in bf16


def test_a_frozen_weight_is_cast_once_and_again_after_an_in_place_change():
    hidden, weight, targets = _inputs()
    weight = torch.nn.Parameter(weight, requires_grad=False)
    first = head.cast_once(weight, torch.bfloat16)
    assert head.cast_once(weight, torch.bfloat16) is first and torch.equal(first, weight.to(torch.bfloat16))
    with torch.no_grad():
        weight.mul_(2)  # bumps the version counter: the held copy is stale
    again = head.cast_once(weight, torch.bfloat16)
    assert again is not first and torch.equal(again, weight.to(torch.bfloat16))
    trainable = torch.nn.Parameter(weight.detach().clone())
    assert head.cast_once(trainable, torch.bfloat16) is not head.cast_once(trainable, torch.bfloat16)
    assert head.cast_once(weight, torch.float32) is weight


def test_no_positions_give_empty_outputs_that_still_backpropagate():
    hidden, weight, targets = _inputs()
    h = hidden[:0].clone().requires_grad_()
    out = head.log_probs(h, weight, None, targets[:0], 1.0, 0, None, 1.0, ("log_probs",))
    assert out[0].shape == (0,) and out[1:] == (None, None, None, None)
    out[0].sum().backward()
    assert h.grad.shape == (0, hidden.shape[1])


def test_positions_beyond_one_block_are_scored_like_one_block(monkeypatch):
    hidden, weight, targets = _inputs(n=10)
    whole = head.log_probs(hidden, weight, None, targets, 1.0, 0, None, 1.0, OUTPUTS)
    monkeypatch.setattr(head, "_ROWS", 3)
    blocks = head.log_probs(hidden, weight, None, targets, 1.0, 0, None, 1.0, OUTPUTS)
    for a, b in zip(whole, blocks):
        assert torch.allclose(a.float(), b.float(), atol=1e-6)
