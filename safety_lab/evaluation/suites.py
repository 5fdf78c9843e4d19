"""The evaluation suites (asr, calibration, drift): each takes a loaded model and returns metrics plus per-item rows."""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from safety_lab.components import Registry
from safety_lab.data import benign_pairs, builtin, harmful_requests, read_records
from safety_lab.errors import SafetyLabError, check
from safety_lab.evaluation import metrics as M
from safety_lab.models.generation import _left_pad, chat_inputs, generate
from safety_lab.evaluation.judges import get_judge, keyword_attack_success

SUITES: Registry = Registry("suite")
MC_BATCH = 16  # items per scoring batch
DRIFT_SYSTEM = "You are a helpful assistant. Answer with the exact answer only, in 1 to 3 words."  # the paper's protocol


@dataclass
class SuiteResult:
    metrics: dict[str, float]
    rows: list[dict] = field(default_factory=list)  # per item, saved as JSONL
    extra: dict = field(default_factory=dict)  # what the plots need


def _limit(items: list, limit: int | None) -> list:
    return items if limit is None else items[:limit]


# ---------------------------------------------------------------- ASR
def load_harmful_prompts(source: str) -> list[dict]:
    """builtin (held-out part), a HarmBench CSV (context in front of the request), or JSONL with `prompt`."""
    if source == "builtin":
        return [{"id": r["id"], "prompt": r["prompt"], "category": r["category"]} for r in harmful_requests("eval")]
    records = read_records(Path(source), "harmful_prompts")
    check(bool(records), "harmful_prompts", f"{source} has no rows")
    out = []
    for number, rec in enumerate(records, start=1):
        if "Behavior" in rec:  # HarmBench's CSV format
            prompt = rec["Behavior"]
            if rec.get("ContextString"):
                prompt = f"{rec['ContextString']}\n\n---\n\n{prompt}"
            out.append({"id": rec.get("BehaviorID") or str(number), "prompt": prompt,
                        "category": rec.get("SemanticCategory") or "uncategorised"})
        else:
            check(isinstance(rec.get("prompt"), str) and rec["prompt"].strip() != "", "harmful_prompts",
                  f"{Path(source).name} row {number}: needs a non-empty 'prompt' (or HarmBench's 'Behavior') column")
            out.append({"id": str(rec.get("id", number)), "prompt": rec["prompt"], "category": rec.get("category") or "uncategorised"})
    return out


@SUITES.register("asr")
def asr_suite(loaded, cfg) -> SuiteResult:
    """Attack success on held-out harmful requests, and over-refusal on held-out benign ones."""
    harmful = _limit(load_harmful_prompts(cfg.harmful_prompts), cfg.limit)
    benign = _limit(benign_pairs("eval"), cfg.limit)
    prompts = [h["prompt"] for h in harmful] + [b["prompt"] for b in benign]
    responses = generate(loaded.model, loaded.tokenizer, prompts, max_new_tokens=cfg.max_new_tokens,
                         batch_size=cfg.batch_size, progress=True, desc="asr: generate")
    harmful_responses, benign_responses = responses[: len(harmful)], responses[len(harmful):]
    judge = get_judge(cfg.judge)
    verdicts = judge.judge([h["prompt"] for h in harmful], harmful_responses)
    result = M.attack_success_rate(verdicts, [h["category"] for h in harmful])
    # Over-refusal reads refusals with the keyword rules whatever the ASR judge: a moderation judge calls any benign answer "safe".
    refused = [not keyword_attack_success(r) for r in benign_responses]
    metrics = {**result.as_metrics(), "asr_n": float(result.n),
               "over_refusal_rate": sum(refused) / len(refused) if refused else float("nan")}
    metrics.update({f"asr_category.{c}": v for c, v in result.per_category.items()})
    rows = [{"set": "harmful", "id": h["id"], "category": h["category"], "prompt": h["prompt"], "response": r,
             "attack_success": bool(v), "judge": cfg.judge} for h, r, v in zip(harmful, harmful_responses, verdicts)]
    rows += [{"set": "benign", "id": b["id"], "category": b.get("category", ""), "prompt": b["prompt"], "response": r,
              "refused": bool(x)} for b, r, x in zip(benign, benign_responses, refused)]
    return SuiteResult(metrics, rows, {"asr": result})


# ---------------------------------------------------------------- calibration
def load_mc(source: str) -> list[dict]:
    records = list(builtin("mc_questions")) if source == "builtin" else read_records(Path(source), "mc")
    for number, rec in enumerate(records, start=1):
        ok = isinstance(rec.get("question"), str) and isinstance(rec.get("choices"), list) and len(rec["choices"]) >= 2 \
            and isinstance(rec.get("answer"), int) and 0 <= rec["answer"] < len(rec["choices"])
        check(ok, "mc", f"row {number}: needs question, choices (2+) and answer (an index into choices)")
    return records


@torch.inference_mode()
def batch_option_logprobs(model, tokenizer, questions: list[str], choices: list[list[str]]) -> list[list[float]]:
    """Sum of log p(option tokens | prompt) for every option of every item.

    The prompts run once, as one left-padded batch; their KV cache is then gathered per option, so the
    options share their prompt's computation and only the option tokens are run again.
    """
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    prompt_ids, prompt_mask = _left_pad(chat_inputs(tokenizer, questions), pad_id, device)
    out = model(input_ids=prompt_ids, attention_mask=prompt_mask,
                position_ids=(prompt_mask.cumsum(-1) - 1).clamp(min=0), use_cache=True, logits_to_keep=1)
    last = torch.log_softmax(out.logits[:, -1].float(), -1)
    owner = [i for i, opts in enumerate(choices) for _ in opts]
    options = [tokenizer(c, add_special_tokens=False)["input_ids"] or [tokenizer.eos_token_id] for opts in choices for c in opts]
    width = max(len(o) for o in options)
    ids = torch.full((len(options), width), pad_id, dtype=torch.long)
    option_mask = torch.zeros((len(options), width), dtype=torch.long)
    for n, o in enumerate(options):
        ids[n, : len(o)] = torch.tensor(o)
        option_mask[n, : len(o)] = 1
    index = torch.tensor(owner, device=device)
    cache = out.cache
    cache.batch_select_indices(index)  # each option gets (a view of) its prompt's keys and values
    mask = torch.cat([prompt_mask[index], option_mask.to(device)], dim=1)
    positions = prompt_mask.sum(-1)[index, None] + torch.arange(width, device=device)
    logits = torch.log_softmax(model(input_ids=ids.to(device), attention_mask=mask, position_ids=positions,
                                     cache=cache).logits.float(), -1)
    scores: list[list[float]] = [[] for _ in choices]
    for n, o in enumerate(options):
        total = float(last[owner[n], o[0]]) + sum(float(logits[n, j - 1, o[j]]) for j in range(1, len(o)))
        scores[owner[n]].append(total)
    return scores


def option_logprobs(model, tokenizer, question: str, choices: list[str]) -> list[float]:
    """One item's option scores (see batch_option_logprobs)."""
    return batch_option_logprobs(model, tokenizer, [question], [choices])[0]


def mc_question_text(item: dict) -> str:
    return f"{item['question']} Answer with the correct option only."


@SUITES.register("calibration")
def calibration_suite(loaded, cfg) -> SuiteResult:
    items = _limit(load_mc(cfg.mc), cfg.limit)
    batches = [items[i:i + MC_BATCH] for i in range(0, len(items), MC_BATCH)]
    scores = [s for batch in tqdm(batches, desc="calibration: score", unit="batch")
              for s in batch_option_logprobs(loaded.model, loaded.tokenizer, [mc_question_text(it) for it in batch],
                                             [it["choices"] for it in batch])]
    labels = [it["answer"] for it in items]
    summary = M.mc_summary(scores, labels)
    probs = [M._softmax(np.asarray(s, dtype=float)) for s in scores]
    rows = [{"id": it.get("id", i), "question": it["question"], "answer": it["answer"], "chosen": int(p.argmax()),
             "confidence": float(p.max()), "option_logprobs": s} for i, (it, s, p) in enumerate(zip(items, scores, probs))]
    curve = M.reliability_curve([r["chosen"] == r["answer"] for r in rows], [r["confidence"] for r in rows])
    return SuiteResult(summary.as_metrics(), rows, {"curve": curve})


# ---------------------------------------------------------------- knowledge drift
def load_qa(source: str) -> list[dict]:
    """The triviaqa_1000.json format: id, question, true_answer, wrong_answer, context."""
    records = list(builtin("qa_facts")) if source == "builtin" else read_records(Path(source), "qa")
    check(bool(records), "qa", f"{source} has no items")
    for number, rec in enumerate(records, start=1):
        missing = [k for k in ("question", "true_answer", "context") if not isinstance(rec.get(k), str) or not rec[k].strip()]
        check(not missing, "qa", f"item {number}: missing or empty {', '.join(missing)}")
    return records


def drift_prompts(items: list[dict]) -> list[dict]:
    """base, false_info (the item's false context first) and random_info (another item's context; shuffle seed 42)."""
    contexts = [it["context"] for it in items]
    random.Random(42).shuffle(contexts)
    out = []
    for it, other in zip(items, contexts):
        question = f"{it['question']} Respond with the exact answer only."
        for kind, text in (("base", question), ("false_info", f"{it['context']} {question}"), ("random_info", f"{other} {question}")):
            out.append({"id": str(it.get("id", it["question"])), "prompt_type": kind, "prompt": text, "true_answer": it["true_answer"]})
    return out


@SUITES.register("drift")
def drift_suite(loaded, cfg) -> SuiteResult:
    prompts = drift_prompts(_limit(load_qa(cfg.qa), cfg.limit))
    answers, scores = generate(loaded.model, loaded.tokenizer, [p["prompt"] for p in prompts], system=DRIFT_SYSTEM,
                               max_new_tokens=min(cfg.max_new_tokens, 16), batch_size=cfg.batch_size,
                               return_scores=True, progress=True, desc="drift: generate")
    rows = []
    for p, answer, (top, chosen) in zip(prompts, answers, scores):
        entropy, perplexity, probability = M.token_uncertainty(top, chosen) if chosen else (float("nan"),) * 3
        rows.append({**p, "answer": answer, "correct": M.answer_is_correct(p["true_answer"], answer),
                     "entropy": entropy, "perplexity": perplexity, "probability": probability})
    return SuiteResult(M.drift_summary(rows), rows, {})


def parse_suites(text: str) -> list[str]:
    names = [s.strip() for s in str(text).split(",") if s.strip()]
    check(bool(names), "suites", "is empty")
    for name in names:
        SUITES.get(name)  # unknown -> one line with the known names
    return names
