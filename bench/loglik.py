"""Multiple-choice scoring: the project's `option_logprobs` (prompt once, KV cache shared) vs one forward per option.

    python bench/loglik.py [--quick] [--items N]

Items: the built-in multiple-choice questions (`load_mc("builtin")`), worded as the calibration suite words them.

  project   `safety_lab.evaluation.scoring.option_logprobs`: one forward over the chat-templated prompt, its KV cache
            repeated for the options, one batched forward over the option tokens
  baseline  for each option, one full forward over prompt + option tokens (the same token ids), sum of the
            option tokens' log-probs

Both score sum log p(option tokens | prompt). Agreement: max |score difference| over all options (fp32: the cached
path attends over the same keys in a different kernel/shape, so ~1e-5 is expected, not 0).
Target: >= 3x items/s.
"""

from __future__ import annotations

import argparse
import time

import _common as C
import torch  # noqa: E402

from safety_lab.evaluation.scoring import option_logprobs  # noqa: E402
from safety_lab.evaluation.sets import load_mc  # noqa: E402
from safety_lab.evaluation.suites import mc_question_text  # noqa: E402
from safety_lab.models import load_model  # noqa: E402


@torch.inference_mode()
def per_option_forward(model, tok, question: str, choices: list[str]) -> list[float]:
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=True, return_dict=True
    )["input_ids"]
    prompt = list(prompt)
    scores = []
    for choice in choices:
        option = tok(choice, add_special_tokens=False)["input_ids"] or [tok.eos_token_id]
        ids = torch.tensor([prompt + option])
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
        scores.append(sum(float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(option)))
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16 items")
    parser.add_argument("--items", type=int, default=None, help="default: all (252); quick 16")
    args = parser.parse_args()

    print("machine:", C.machine())
    loaded = load_model()
    model, tok = loaded.model, loaded.tokenizer
    items = load_mc("builtin")
    items = items[: args.items or (16 if args.quick else len(items))]
    n_options = sum(len(it["choices"]) for it in items)
    print(f"{len(items)} items, {n_options} options ({n_options / len(items):.1f} per item)")

    def timed(fn, part):
        start, cpu = time.perf_counter(), time.process_time()
        scores = [fn(model, tok, mc_question_text(it), it["choices"]) for it in part]
        return scores, time.perf_counter() - start, time.process_time() - cpu

    for fn in (option_logprobs, per_option_forward):  # warm-up
        timed(fn, items[:1])
    # alternate halves (project, baseline, project, baseline) so a change in machine load hits both alike
    half = len(items) // 2
    runs = {"project": ([], 0.0, 0.0), "baseline": ([], 0.0, 0.0)}
    for part in (items[:half], items[half:]):
        for name, fn in (("project", option_logprobs), ("baseline", per_option_forward)):
            scores, secs, cpu = timed(fn, part)
            old = runs[name]
            runs[name] = (old[0] + scores, old[1] + secs, old[2] + cpu)

    (p_scores, p_secs, p_cpu), (b_scores, b_secs, b_cpu) = runs["project"], runs["baseline"]
    diff = max(abs(a - b) for ps, bs in zip(p_scores, b_scores) for a, b in zip(ps, bs))
    same_choice = sum(
        max(range(len(ps)), key=ps.__getitem__) == max(range(len(bs)), key=bs.__getitem__)
        for ps, bs in zip(p_scores, b_scores)
    )
    speedup, speedup_cpu = b_secs / p_secs, b_cpu / p_cpu
    print(f"\nproject   {len(items) / p_secs:7.2f} items/s  ({p_secs:.1f} s)")
    print(f"baseline  {len(items) / b_secs:7.2f} items/s  ({b_secs:.1f} s)")
    print(f"{C.verdict(speedup >= 3)}  speed-up {speedup:.2f}x wall ({speedup_cpu:.2f}x by CPU time)  (target >= 3x)")
    print(f"agreement: max |score diff| {diff:.2e} nats; same argmax on {same_choice}/{len(items)} items")

    C.save(
        "loglik",
        args.quick,
        {
            "items": len(items),
            "options": n_options,
            "project_items_per_s": len(items) / p_secs,
            "baseline_items_per_s": len(items) / b_secs,
            "speedup": speedup,
            "speedup_cpu": speedup_cpu,
            "max_abs_diff": diff,
            "same_argmax": same_choice,
            "pass": {"speedup_3x": speedup >= 3},
        },
    )


if __name__ == "__main__":
    main()
