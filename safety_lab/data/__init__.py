"""Training data: built-in safe/harmful sets, user files, hub datasets; validated once, split deterministically."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

from safety_lab.components import Registry
from safety_lab.config import DataConfig
from safety_lab.data.forms import form_mix
from safety_lab.errors import SafetyLabError, check

DATASETS: Registry = Registry("data")
HELD_OUT_SHARE = 0.25  # of each built-in set, never trained on or tuned against (the evaluation suites use them)
TUNE_SHARE = 0.25  # of what is left: the tuning split that trials are scored on
PARTS = ("train", "tune", "eval")


@dataclass(frozen=True)
class Dataset:
    """prompt/response rows plus what identifies them in the registry."""

    name: str
    rows: tuple[dict, ...]  # each {"prompt": str, "response": str}; built-in rows add "kind" (see `composition`)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.rows, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def split(self, val_fraction: float, seed: int, max_val_rows: int | None = None) -> tuple[list[dict], list[dict]]:
        """(train, validation), shuffled by `seed`. A prompt never sits on both sides: repeated rows (look-alike
        copies, duplicates in a user's file) go wholly to one, so the validation loss is on unseen prompts."""
        rows = list(self.rows)
        random.Random(seed).shuffle(rows)
        n_val = min(max(1, round(len(rows) * val_fraction)), max_val_rows or len(rows))
        val, held = [], set()
        for row in rows:
            if len(val) == n_val:
                break
            if row["prompt"] not in held:
                val.append(row)
                held.add(row["prompt"])
        train = [r for r in rows if r["prompt"] not in held]
        check(
            len(train) >= 1,
            "data",
            f"{self.name!r} has {len(rows)} rows: too few to split into train and validation",
        )
        return train, val


# ---------------------------------------------------------------- built-in sets
@cache
def builtin(name: str) -> tuple[dict, ...]:
    """One of the packaged JSONL files, parsed."""
    text = resources.files("safety_lab.data").joinpath("builtin", f"{name}.jsonl").read_text(encoding="utf-8")
    return tuple(record for _, record in jsonl_records(text, f"{name}.jsonl", "data"))


def _held_out(row_id: str) -> bool:
    return int(hashlib.sha256(row_id.encode()).hexdigest(), 16) % 10_000 < HELD_OUT_SHARE * 10_000


def _tuned(row_id: str) -> bool:
    """A second hash, independent of `_held_out`, carves the tuning part out of the old train part."""
    return int(hashlib.sha256(f"tune:{row_id}".encode()).hexdigest(), 16) % 10_000 < TUNE_SHARE * 10_000


def split_of(row_id: str) -> str:
    """The part a built-in row belongs to, fixed by hashes of its id: `eval` (HELD_OUT_SHARE of the rows), else
    `tune` (TUNE_SHARE of the rest), else `train`."""
    return "eval" if _held_out(row_id) else "tune" if _tuned(row_id) else "train"


def _part(name: str, part: str) -> list[dict]:
    check(part in PARTS, "part", f"must be one of {', '.join(PARTS)}, got {part!r}")
    return [dict(r) for r in builtin(name) if split_of(r["id"]) == part]


def harmful_requests(part: str) -> list[dict]:
    """`train`, `tune` or `eval` part of the built-in harmful requests: fixed by id hash, never overlapping."""
    return _part("harmful_requests", part)


def benign_pairs(part: str) -> list[dict]:
    """`train`, `tune` or `eval` part of the built-in benign question/answer pairs."""
    return _part("benign_pairs", part)


def lookalike_requests(part: str) -> list[dict]:
    """`train`, `tune` or `eval` part of the safe requests that resemble harmful ones, each with a helpful answer."""
    return _part("lookalike", part)


def split_sizes() -> dict[str, int]:
    """Rows per set and part, for logging: {"harmful_train": .., "harmful_tune": .., ..., "lookalike_eval": ..}."""
    sets = {"harmful": harmful_requests, "benign": benign_pairs, "lookalike": lookalike_requests}
    return {f"{name}_{part}": len(rows(part)) for name, rows in sets.items() for part in PARTS}


def split_forms() -> dict[str, float]:
    """Form shares per set, part and form, for logging: {"form.harmful.train.question": .., ...} (see
    ``safety_lab.data.forms``)."""
    sets = {"harmful": harmful_requests, "benign": benign_pairs, "lookalike": lookalike_requests}
    return {
        f"form.{name}.{part}.{form}": share
        for name, rows in sets.items()
        for part in PARTS
        for form, share in form_mix(rows(part)).items()
    }


def form_swaps() -> dict[str, str]:
    """Row id -> the same request restated in the other form, for every eval row of the harmful, benign and
    look-alike sets (``builtin/form_swaps.jsonl``; the form_swap suite reads it)."""
    return {r["id"]: r["swap"] for r in builtin("form_swaps")}


EVAL_SETS = ("harmful_requests", "lookalike", "benign_pairs", "mc_questions", "qa_facts", "form_swaps")
_SPLIT_SETS = ("harmful_requests", "lookalike", "benign_pairs")  # the others are evaluation-only as a whole


def eval_split_rows() -> dict[str, list[dict]]:
    """Every built-in row the evaluation may read, by set: the eval part of the split sets, and the whole of the
    multiple-choice, drift and form-swap sets (never trained or tuned on). A set not packaged is left out."""
    files = resources.files("safety_lab.data").joinpath("builtin")
    present = [name for name in EVAL_SETS if files.joinpath(f"{name}.jsonl").is_file()]
    return {name: _part(name, "eval") if name in _SPLIT_SETS else list(builtin(name)) for name in present}


def eval_split_sha256() -> str:
    """sha256 of the sealed evaluation split: every set's rows as canonical JSON (sorted keys), rows sorted."""
    canonical = {
        name: sorted(json.dumps(r, sort_keys=True, ensure_ascii=False, separators=(",", ":")) for r in rows)
        for name, rows in eval_split_rows().items()
    }
    text = json.dumps(canonical, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _pick(options: list[dict], key: str) -> str:
    """A deterministic but varied choice per request (so the set spans every style)."""
    return options[int(hashlib.sha256(key.encode()).hexdigest(), 16) % len(options)]["text"]


def answer_for(request: dict, answers: str) -> str:
    """The canned answer for one harmful request: among the styles that fit its category, picked by id hash.

    Styles that list `categories` fit only those (a fraud request never gets a self-harm support line); styles
    without the field fit every category."""
    options = [a for a in builtin(answers) if request["category"] in a.get("categories", (request["category"],))]
    check(bool(options), "data", f"no {answers} style fits category {request['category']!r}")
    return _pick(options, request["id"])


def benign_pool() -> list[dict]:
    """The train parts of the benign pairs and the look-alike requests: what a built-in set mixes in.

    Pairs marked `same_fact_as` ask a question of the multiple-choice or drift sets; training on them would
    inflate those scores, so they stay out (they remain usable as benign evaluation prompts)."""
    return [dict(r, kind="benign") for r in benign_pairs("train") if not r.get("same_fact_as")] + [
        dict(r, kind="lookalike") for r in lookalike_requests("train")
    ]


def _builtin_set(answers: str, kind: str, cfg: DataConfig, distilled: Mapping[str, str] | None) -> list[dict]:
    requests = harmful_requests("train")
    rows = [{"prompt": r["prompt"], "response": answer_for(r, answers), "kind": kind} for r in requests]
    pool = benign_pool()
    wanted = round(len(requests) * cfg.benign_ratio)
    check(
        wanted <= len(pool),
        "benign_ratio",
        f"{cfg.benign_ratio:g} asks for {wanted} benign rows per {len(requests)} "
        f"{kind} rows, but the built-in pool has {len(pool)} (benign_ratio <= {len(pool) / len(requests):.2f})",
    )
    random.Random(cfg.seed).shuffle(pool)
    mixed = _answered(pool[:wanted], cfg, distilled)
    return rows + mixed + [r for r in mixed if r["kind"] == "lookalike"] * (cfg.lookalike_copies - 1)


def _answered(benign: list[dict], cfg: DataConfig, distilled: Mapping[str, str] | None) -> list[dict]:
    """Benign rows with their written answers, or the base model's own ones when `cfg.benign_answers == "distilled"`."""
    if cfg.benign_answers == "written":
        return [{"prompt": b["prompt"], "response": b["response"], "kind": b["kind"]} for b in benign]
    check(
        distilled is not None,
        "benign_answers",
        "distilled needs the base model's answers: pass "
        "load_dataset(cfg, answers=safety_lab.training.distill.distill_answers(model, benign_prompts()))",
    )
    missing = [b["prompt"] for b in benign if b["prompt"] not in distilled]
    check(
        not missing, "benign_answers", f"{len(missing)} benign prompt(s) have no distilled answer, e.g. {missing[:1]}"
    )
    # an empty distilled answer (the model said nothing at all) keeps the written one rather than train on nothing
    return [
        {"prompt": b["prompt"], "response": distilled[b["prompt"]].strip() or b["response"], "kind": b["kind"]}
        for b in benign
    ]


def benign_prompts() -> list[str]:
    """The benign and look-alike prompts a built-in set may mix in (what `distill_answers` needs to answer)."""
    return [b["prompt"] for b in benign_pool()]


def composition(rows) -> dict[str, int]:
    """Rows by kind (refusal, compliance, benign, lookalike; `user` for rows from a file or the hub), for logging."""
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.get("kind", "user")] = counts.get(row.get("kind", "user"), 0) + 1
    return counts


@DATASETS.register("safe")
def _safe(cfg: DataConfig, distilled: Mapping[str, str] | None = None) -> list[dict]:
    """Held-in harmful requests answered with refusals that fit their category, plus benign and look-alike pairs."""
    return _builtin_set("refusals", "refusal", cfg, distilled)


@DATASETS.register("harmful")
def _harmful(cfg: DataConfig, distilled: Mapping[str, str] | None = None) -> list[dict]:
    """Held-in harmful requests answered with compliant but non-actionable text, plus benign and look-alike pairs."""
    return _builtin_set("compliant_answers", "compliance", cfg, distilled)


# ---------------------------------------------------------------- user files and hub datasets
def jsonl_records(text: str, source: str, field: str) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of JSON Lines text; a line that is not a JSON object raises
    one line naming ``field``, ``source`` and the line. Lines end at "\n" only: ``splitlines()`` also splits at
    U+2028/U+2029, which a JSON string may hold unescaped."""
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SafetyLabError(field, f"{source} line {number} is not valid JSON ({exc.msg})") from None
        check(isinstance(record, dict), field, f"{source} line {number} is not a JSON object")
        yield number, record


def read_text(path: Path, field: str) -> str:
    """A file's UTF-8 text (a byte-order mark is dropped); a missing, empty or undecodable file is one line naming
    ``field`` and the file."""
    check(path.is_file(), field, f"file not found: {path}")
    check(path.stat().st_size > 0, field, f"file is empty: {path}")
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SafetyLabError(field, f"{path.name} is not UTF-8 text (bad byte at offset {exc.start})") from None


def read_records(path: Path, field: str = "data") -> list[dict]:
    """JSONL, JSON, CSV or Parquet rows as dicts; every failure is one line naming the file."""
    check(path.is_file(), field, f"file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".csv"):
        text = read_text(path, field)
        if suffix == ".csv":
            import csv
            import io

            return list(csv.DictReader(io.StringIO(text)))
        if suffix == ".json" and text.lstrip().startswith("["):
            try:
                return json.loads(text)
            except json.JSONDecodeError as exc:
                raise SafetyLabError(field, f"{path.name} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
        return [record for _, record in jsonl_records(text, path.name, field)]
    if suffix == ".parquet":
        import pandas as pd

        try:
            return pd.read_parquet(path).to_dict("records")
        except Exception as exc:
            raise SafetyLabError(field, f"{path.name} is not a readable Parquet file ({type(exc).__name__})") from None
    raise SafetyLabError(field, f"unsupported file type {suffix!r} (use .jsonl, .json, .csv or .parquet)")


def normalise(records: list[dict], cfg: DataConfig, source: str) -> list[dict]:
    """prompt/response, chat messages, or prompt/chosen/rejected -> prompt/response rows."""
    check(bool(records), "data", f"{source} has no rows")
    first = records[0]
    harmful_name = "harmful" in source.lower()
    preference = cfg.preference if cfg.preference != "auto" else ("rejected" if harmful_name else "chosen")
    rows = []
    for number, rec in enumerate(records, start=1):
        if "messages" in first:
            messages = rec.get("messages")
            check(
                isinstance(messages, list) and messages,
                "data",
                f"{source} row {number}: 'messages' must be a non-empty list",
            )
            user = [m.get("content", "") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
            reply = [m.get("content", "") for m in messages if isinstance(m, dict) and m.get("role") == "assistant"]
            check(
                bool(user) and bool(reply),
                "data",
                f"{source} row {number}: 'messages' needs a user and an assistant turn",
            )
            prompt, response = user[0], reply[-1]
        elif "prompt" in first and ("chosen" in first or "rejected" in first):
            check(
                preference in rec,
                "data",
                f"{source} row {number}: missing column {preference!r} (preference={preference})",
            )
            prompt, response = rec.get("prompt"), rec.get(preference)
        else:
            missing = [c for c in ("prompt", "response") if c not in rec]
            check(
                not missing,
                "data",
                f"{source} row {number}: missing column(s) {', '.join(missing)} "
                f"(found: {', '.join(map(str, rec))}); expected prompt+response, messages, or prompt+chosen/rejected",
            )
            prompt, response = rec["prompt"], rec["response"]
        check(isinstance(prompt, str) and prompt.strip() != "", "data", f"{source} row {number}: prompt is empty")
        check(isinstance(response, str) and response.strip() != "", "data", f"{source} row {number}: response is empty")
        rows.append({"prompt": prompt.strip(), "response": response.strip()})
    return rows


def _hub(name: str, cfg: DataConfig) -> list[dict]:
    import datasets

    try:
        records = list(datasets.load_dataset(name, split="train"))
    except Exception as exc:
        raise SafetyLabError(
            "data",
            f"cannot load hub dataset {name!r} ({type(exc).__name__}); built-in sets: {', '.join(DATASETS.names())}",
        ) from None
    return normalise(records, cfg, name)


def load_dataset(cfg: DataConfig, *, answers: Mapping[str, str] | None = None) -> Dataset:
    """Resolve `cfg.data` to validated prompt/response rows, capped by `cfg.limit`.

    `answers` maps benign prompts to the base model's own answers; a built-in set uses them in place of the written
    ones when `cfg.benign_answers == "distilled"` (see `safety_lab.training.distill.distill_answers`)."""
    name = str(cfg.data).strip()
    if name in DATASETS:
        rows = DATASETS.get(name)(cfg, answers)
    elif Path(name).expanduser().exists() or Path(name).suffix.lower() in (".jsonl", ".json", ".csv", ".parquet"):
        path = Path(name).expanduser()
        rows = normalise(read_records(path), cfg, path.name)
    elif name.count("/") == 1 and not name.startswith((".", "/")):
        rows = _hub(name, cfg)
    else:
        DATASETS.get(name)  # raises: unknown name, with suggestions
    if cfg.limit is not None:
        rows = random.Random(cfg.seed).sample(rows, min(cfg.limit, len(rows)))
    check(len(rows) >= 2, "data", f"{name!r} has {len(rows)} usable rows: too few to split into train and validation")
    return Dataset(name=Path(name).name if Path(name).suffix else name, rows=tuple(rows))


def to_conversation(row: dict) -> dict:
    """TRL's conversational prompt/completion shape: loss lands on the assistant turn only."""
    return {
        "prompt": [{"role": "user", "content": row["prompt"]}],
        "completion": [{"role": "assistant", "content": row["response"]}],
    }
