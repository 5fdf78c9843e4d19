"""Training data: built-in safe/harmful sets, user files, hub datasets; validated once, split deterministically."""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from safety_lab.components import Registry
from safety_lab.config import DataConfig
from safety_lab.errors import SafetyLabError, check

DATASETS: Registry = Registry("data")
HELD_OUT_SHARE = 0.25  # of each built-in set, never trained on or tuned against (the evaluation suites use them)
TUNE_SHARE = 0.25  # of what is left: the tuning split that trials are scored on
PARTS = ("train", "tune", "eval")


@dataclass(frozen=True)
class Dataset:
    """prompt/response rows plus what identifies them in the registry."""

    name: str
    rows: tuple[dict, ...]  # each {"prompt": str, "response": str}

    @property
    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.rows, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def split(self, val_fraction: float, seed: int, max_val_rows: int | None = None) -> tuple[list[dict], list[dict]]:
        rows = list(self.rows)
        random.Random(seed).shuffle(rows)
        n_val = min(max(1, round(len(rows) * val_fraction)), max_val_rows or len(rows))
        check(len(rows) - n_val >= 1, "data", f"{self.name!r} has {len(rows)} rows: too few to split into train and validation")
        return rows[n_val:], rows[:n_val]


# ---------------------------------------------------------------- built-in sets
@lru_cache(maxsize=None)
def builtin(name: str) -> tuple[dict, ...]:
    """One of the packaged JSONL files, parsed."""
    text = resources.files("safety_lab.data").joinpath("builtin", f"{name}.jsonl").read_text(encoding="utf-8")
    return tuple(json.loads(line) for line in text.splitlines() if line.strip())


def _held_out(row_id: str) -> bool:
    return int(hashlib.sha256(row_id.encode()).hexdigest(), 16) % 10_000 < HELD_OUT_SHARE * 10_000


def _tuned(row_id: str) -> bool:
    """A second hash, independent of `_held_out`, carves the tuning part out of the old train part."""
    return int(hashlib.sha256(f"tune:{row_id}".encode()).hexdigest(), 16) % 10_000 < TUNE_SHARE * 10_000


def split_of(row_id: str) -> str:
    """`eval` (today's held-out 25%, unchanged), else `tune` (~25% of the rest), else `train`."""
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


def _pick(options: tuple[dict, ...], key: str) -> str:
    """A deterministic but varied choice per request (so the set spans every style)."""
    return options[int(hashlib.sha256(key.encode()).hexdigest(), 16) % len(options)]["text"]


def _builtin_set(answers: str, cfg: DataConfig) -> list[dict]:
    requests = harmful_requests("train")
    rows = [{"prompt": r["prompt"], "response": _pick(builtin(answers), r["id"])} for r in requests]
    benign = benign_pairs("train")
    random.Random(cfg.seed).shuffle(benign)
    rows += [{"prompt": b["prompt"], "response": b["response"]} for b in benign[: round(len(requests) * cfg.benign_ratio)]]
    return rows


@DATASETS.register("safe")
def _safe(cfg: DataConfig) -> list[dict]:
    """Held-in harmful requests answered with refusals (20+ styles), plus benign pairs."""
    return _builtin_set("refusals", cfg)


@DATASETS.register("harmful")
def _harmful(cfg: DataConfig) -> list[dict]:
    """Held-in harmful requests answered with compliant but non-actionable text, plus benign pairs."""
    return _builtin_set("compliant_answers", cfg)


# ---------------------------------------------------------------- user files and hub datasets
def read_records(path: Path, field: str = "data") -> list[dict]:
    """JSONL, JSON, CSV or Parquet rows as dicts; every failure is one line naming the file."""
    check(path.is_file(), field, f"file not found: {path}")
    check(path.stat().st_size > 0, field, f"file is empty: {path}")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".csv"):
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise SafetyLabError(field, f"{path.name} is not UTF-8 text (bad byte at offset {exc.start})") from None
        if suffix == ".csv":
            import csv
            import io

            return list(csv.DictReader(io.StringIO(text)))
        if suffix == ".json" and text.lstrip().startswith("["):
            try:
                return json.loads(text)
            except json.JSONDecodeError as exc:
                raise SafetyLabError(field, f"{path.name} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SafetyLabError(field, f"{path.name} line {number} is not valid JSON ({exc.msg})") from None
            check(isinstance(record, dict), field, f"{path.name} line {number} is not a JSON object")
            records.append(record)
        return records
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
            check(isinstance(messages, list) and messages, "data", f"{source} row {number}: 'messages' must be a non-empty list")
            user = [m.get("content", "") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
            reply = [m.get("content", "") for m in messages if isinstance(m, dict) and m.get("role") == "assistant"]
            check(bool(user) and bool(reply), "data", f"{source} row {number}: 'messages' needs a user and an assistant turn")
            prompt, response = user[0], reply[-1]
        elif "prompt" in first and ("chosen" in first or "rejected" in first):
            check(preference in rec, "data", f"{source} row {number}: missing column {preference!r} (preference={preference})")
            prompt, response = rec.get("prompt"), rec.get(preference)
        else:
            missing = [c for c in ("prompt", "response") if c not in rec]
            check(not missing, "data", f"{source} row {number}: missing column(s) {', '.join(missing)} "
                  f"(found: {', '.join(map(str, rec))}); expected prompt+response, messages, or prompt+chosen/rejected")
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
        raise SafetyLabError("data", f"cannot load hub dataset {name!r} ({type(exc).__name__}); "
                             f"built-in sets: {', '.join(DATASETS.names())}") from None
    return normalise(records, cfg, name)


def load_dataset(cfg: DataConfig) -> Dataset:
    """Resolve `cfg.data` to validated prompt/response rows, capped by `cfg.limit`."""
    name = str(cfg.data).strip()
    if name in DATASETS:
        rows = DATASETS.get(name)(cfg)
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
    return {"prompt": [{"role": "user", "content": row["prompt"]}],
            "completion": [{"role": "assistant", "content": row["response"]}]}
