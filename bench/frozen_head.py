"""Generation with frozen weights against the same weights trainable: the LM head's batched-copy pathology.

    python bench/frozen_head.py [--quick] [--prompts N] [--tokens N] [--pairs N]

An evaluated model's weights need no gradient (an adapter's frozen base, a model cast for evaluation). Before
`models.generation.last_position`, the last position's logits were asked for with `logits_to_keep=1`, whose strided
slice made torch's matmul run the LM head of a frozen model as a batched product over a copy of its weight per row;
the same weights marked trainable took the one-product path. This loads the embedded model in the evaluation's
precision and greedily answers `--prompts` look-alike prompts with its weights frozen and trainable, alternated in one
process (`--pairs` times). Printed per pair: the seconds of each, their ratio (frozen / trainable: about 1 when the
head runs as one product; 1.6-1.7 was measured before, bf16 on a 2-vCPU Xeon with AMX) and the 1-minute load
average; then whether the answers are the same token for token.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import _common as C

from safety_lab.evaluation import EvalConfig  # noqa: E402
from safety_lab.models import DEFAULT_MODEL, load_model  # noqa: E402
from safety_lab.models.generation import chat_inputs, decode_ids  # noqa: E402


def _answer(loaded, encoded, tokens: int, *, frozen: bool):
    loaded.model.requires_grad_(not frozen)
    start = time.perf_counter()
    outs = decode_ids(loaded.model, loaded.tokenizer, encoded, max_new_tokens=tokens)
    return [o.ids for o in outs], time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="8 prompts, 8 tokens, 1 pair")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()
    prompts, tokens, pairs = (8, 8, 1) if args.quick else (args.prompts, args.tokens, args.pairs)
    C.quiet()
    precision = EvalConfig(device="cpu").resolved_precision()
    loaded = load_model(DEFAULT_MODEL, precision=precision)
    with open(C.ROOT / "safety_lab" / "data" / "builtin" / "lookalike.jsonl") as f:
        rows = [json.loads(line) for line in f][:prompts]
    encoded = chat_inputs(loaded.tokenizer, [r["prompt"] for r in rows])
    print(f"{len(encoded)} prompts, {tokens} tokens, weights {precision.weights}; machine {C.machine()}")
    ratios, same = [], True
    for pair in range(pairs):
        trainable, trainable_s = _answer(loaded, encoded, tokens, frozen=False)
        frozen, frozen_s = _answer(loaded, encoded, tokens, frozen=True)
        same = same and frozen == trainable
        ratios.append(frozen_s / trainable_s)
        load = os.getloadavg()[0]
        print(
            f"pair {pair}: trainable {trainable_s:.2f} s, frozen {frozen_s:.2f} s, "
            f"ratio {ratios[-1]:.3f} (load {load:.2f})"
        )
    ratio = statistics.median(ratios)
    print(f"frozen / trainable, median of {pairs}: {ratio:.3f}; answers identical: {same}")
    results = {"prompts": len(encoded), "tokens": tokens, "ratios": ratios, "ratio": round(ratio, 3), "identical": same}
    C.save("frozen_head", args.quick, results)


if __name__ == "__main__":
    main()
