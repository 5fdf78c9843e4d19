"""ASR-style generation: the project's batched `generate()` vs one prompt at a time (the SafeTuneBed way).

    python bench/generation.py [--quick] [--prompts N] [--max-new-tokens N] [--baseline-prompts N] [--bf16]

Prompts: the built-in held-out harmful requests (`harmful_requests("eval")`) then the held-out benign ones
(`benign_pairs("eval")`), rendered with the chat template exactly as `generate()` does. Greedy decoding.

  batched   `safety_lab.models.generation.generate`, batch 64 (the evaluation's): length-sorted, left-padded, KV cache
            pre-allocated and written in place, finished rows dropped from the batch, the chat template's
            shared system turn prefilled once per call
  baseline  a loop of `model.generate` on one unpadded prompt at a time

Generated tokens = new tokens up to and including the first EOS (what the answer actually needs); tokens a finished
row keeps producing while the rest of its batch runs are cost, not output. The baseline's tokens/s does not depend
on how many prompts it sees, so --baseline-prompts may time it on a prefix of the prompts (its outputs are
compared with the batched outputs of the same prompts).

Exactness: batched greedy text is compared with the one-at-a-time text. Left padding changes the shapes of the
matmuls and of the attention softmax (masked pad columns), so the fp32 reductions run in a different order and
logits differ in the last bits (~1e-6 relative); where two candidate tokens are nearly tied, argmax can flip and
the continuation diverges from that token on. Mismatches are listed with where they first differ.
Target (issue 14): >= 10x generated tokens/s (stretch 15x), with the count of outputs identical to the loop's.
"""

from __future__ import annotations

import argparse
import time

import _common as C
import torch  # noqa: E402

from safety_lab.data import benign_pairs, harmful_requests  # noqa: E402
from safety_lab.models import load_model  # noqa: E402
from safety_lab.models.generation import chat_inputs, generate_tokens  # noqa: E402


def useful_tokens(new_ids: list[int], eos: int) -> int:
    return new_ids.index(eos) + 1 if eos in new_ids else len(new_ids)


@torch.inference_mode()
def one_at_a_time(model, tok, prompts: list[str], max_new_tokens: int) -> tuple[list[str], list[list[int]]]:
    texts, ids_out = [], []
    eos = tok.eos_token_id
    for ids in chat_inputs(tok, prompts):
        input_ids = torch.tensor([ids])
        out = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
            eos_token_id=eos,
            temperature=None,
            top_p=None,
            top_k=None,
        )
        new = out[0, input_ids.shape[1] :].tolist()
        new = new[: useful_tokens(new, eos)]
        ids_out.append(new)
        texts.append(tok.decode([t for t in new if t != eos], skip_special_tokens=True).strip())
    return texts, ids_out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 prompts, 16 new tokens, baseline on 6 of them")
    parser.add_argument("--prompts", type=int, default=None, help="default: all (111); quick 64")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default 48; quick 16")
    parser.add_argument("--baseline-prompts", type=int, default=None, help="default: all; quick 6")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--bf16",
        action="store_true",
        help="also time batched generate() with the model cast to bf16 (a candidate change) and "
        "count outputs equal to the fp32 ones",
    )
    args = parser.parse_args()
    max_new = args.max_new_tokens or (16 if args.quick else 48)

    print("machine:", C.machine())
    loaded = load_model()
    model, tok = loaded.model, loaded.tokenizer
    prompts = [r["prompt"] for r in harmful_requests("eval")] + [r["prompt"] for r in benign_pairs("eval")]
    prompts = prompts[: args.prompts or (64 if args.quick else len(prompts))]
    n_base = min(args.baseline_prompts or (6 if args.quick else len(prompts)), len(prompts))
    lengths = [len(ids) for ids in chat_inputs(tok, prompts)]
    print(
        f"{len(prompts)} prompts ({min(lengths)}-{max(lengths)} prompt tokens), greedy, {max_new} new tokens; "
        f"batched: batch {args.batch_size}; baseline: {n_base} prompts one at a time"
    )

    # batched: the project's generate() (generate_tokens, then the same decode generate() does)
    generate_tokens(model, tok, prompts[:4], max_new_tokens=4, batch_size=4)  # warm-up
    start, cpu = time.perf_counter(), time.process_time()
    outs = generate_tokens(model, tok, prompts, max_new_tokens=max_new, batch_size=args.batch_size)
    batched = [tok.decode(o.ids, skip_special_tokens=True).strip() for o in outs]
    b_secs, b_cpu = time.perf_counter() - start, time.process_time() - cpu
    b_tokens = sum(len(o.ids) + o.stopped for o in outs)  # up to and including EOS

    one_at_a_time(model, tok, prompts[:1], 4)  # warm-up
    start, cpu = time.perf_counter(), time.process_time()
    single, single_ids = one_at_a_time(model, tok, prompts[:n_base], max_new)
    s_secs, s_cpu = time.perf_counter() - start, time.process_time() - cpu
    s_tokens = sum(len(ids) for ids in single_ids)

    b_rate, s_rate = b_tokens / b_secs, s_tokens / s_secs
    speedup, speedup_cpu = b_rate / s_rate, (b_tokens / b_cpu) / (s_tokens / s_cpu)
    print(
        f"\nbatched   {b_tokens:6d} tokens in {b_secs:7.1f} s = {b_rate:7.1f} tok/s  "
        f"({len(prompts) / b_secs:.2f} prompts/s)"
    )
    print(f"baseline  {s_tokens:6d} tokens in {s_secs:7.1f} s = {s_rate:7.1f} tok/s  ({n_base / s_secs:.2f} prompts/s)")
    print(
        f"{C.verdict(speedup >= 10)}  speed-up {speedup:.1f}x wall ({speedup_cpu:.1f}x by CPU time)  "
        f"(target >= 10x; stretch 15x: {C.verdict(speedup >= 15)})"
    )

    matches, diffs = 0, []
    for i in range(n_base):
        if batched[i] == single[i]:
            matches += 1
            continue
        got = tok(batched[i], add_special_tokens=False)["input_ids"]
        ref = [t for t in single_ids[i] if t != tok.eos_token_id]
        at = next((k for k, (a, b) in enumerate(zip(got, ref)) if a != b), min(len(got), len(ref)))
        char = next(
            (k for k, (a, b) in enumerate(zip(batched[i], single[i])) if a != b), min(len(batched[i]), len(single[i]))
        )
        diffs.append(
            {
                "prompt": i,
                "token": at,
                "char": char,
                "batched": batched[i][max(0, char - 20) : char + 30],
                "single": single[i][max(0, char - 20) : char + 30],
            }
        )
    print(f"exact match: {matches}/{n_base} outputs identical to one-at-a-time greedy")
    for d in diffs:
        print(
            f"  prompt {d['prompt']:3d}: first differs at token ~{d['token']} (char {d['char']}):\n"
            f"      batched ...{d['batched']!r}\n      single  ...{d['single']!r}"
        )

    bf16 = {}
    if args.bf16:
        model.to(torch.bfloat16)
        generate_tokens(model, tok, prompts[:4], max_new_tokens=4, batch_size=4)  # warm-up
        start = time.perf_counter()
        outs16 = generate_tokens(model, tok, prompts, max_new_tokens=max_new, batch_size=args.batch_size)
        secs = time.perf_counter() - start
        produced = sum(len(o.ids) + o.stopped for o in outs16)
        same = sum(a.ids == b.ids for a, b in zip(outs16, outs))
        bf16 = {
            "bf16_tok_per_s": produced / secs,
            "bf16_vs_fp32_batched": produced / secs / b_rate,
            "bf16_same_as_fp32": same,
        }
        print(
            f"candidate bf16: batched {bf16['bf16_tok_per_s']:.1f} tok/s = {bf16['bf16_vs_fp32_batched']:.2f}x fp32 "
            f"batched, {bf16['bf16_tok_per_s'] / s_rate:.1f}x the fp32 baseline; {same}/{len(prompts)} outputs "
            "identical to fp32"
        )

    C.save(
        "generation",
        args.quick,
        {
            **bf16,
            "prompts": len(prompts),
            "baseline_prompts": n_base,
            "max_new_tokens": max_new,
            "batch_size": args.batch_size,
            "batched_tokens": b_tokens,
            "batched_seconds": b_secs,
            "batched_tok_per_s": b_rate,
            "baseline_tokens": s_tokens,
            "baseline_seconds": s_secs,
            "baseline_tok_per_s": s_rate,
            "speedup": speedup,
            "speedup_cpu": speedup_cpu,
            "exact_matches": matches,
            "compared": n_base,
            "mismatches": diffs,
            "pass": {"speedup_10x": speedup >= 10, "stretch_15x": speedup >= 15},
        },
    )


if __name__ == "__main__":
    main()
