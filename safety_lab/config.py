"""Stage configs: one dataclass per stage, each field with help text, checked once in __post_init__."""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, get_type_hints

from safety_lab.errors import SafetyLabError, check


def _help(text: str, **kw) -> dict:
    return {"metadata": {"help": text}, **kw}


def _number(value: Any, name: str, kind: type) -> Any:
    """Coerce MLflow/CLI strings to numbers, naming the field when they are not (MLflow passes ints as `4.0`)."""
    if isinstance(value, kind) and not isinstance(value, bool):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SafetyLabError(name, f"must be a number, got {value!r}") from None
    check(math.isfinite(number), name, f"must be a finite number, got {value!r}")
    if kind is int:
        check(number.is_integer(), name, f"must be an integer, got {value!r}")
        return int(number)
    return number


def _optional(value: Any) -> Any:
    return None if value in ("", "None", "none", "null") else value


def _bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    check(text in ("true", "false", "1", "0", "yes", "no"), name, f"must be true or false, got {value!r}")
    return text in ("true", "1", "yes")


def field_type(hint: Any) -> tuple[Any, bool]:
    """(the type a field holds, whether it may be None), read from the resolved annotation: `int | None` -> (int, True).

    A union of several non-None types (e.g. `int | str`) is returned as is and left uncoerced."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        return (args[0] if len(args) == 1 else hint), optional
    return hint, False


_CONVERTERS = {bool: _bool, int: lambda v, name: _number(v, name, int), float: lambda v, name: _number(v, name, float)}


def before(value: Any, name: str, hint: Any) -> Any:
    """The one before-validator: strings from MLflow or a command line (and `4.0` for an int) to the field's type."""
    kind, optional = field_type(hint)
    if optional:
        value = _optional(value)
    if value is None:
        return None
    convert = _CONVERTERS.get(kind)
    return convert(value, name) if convert else value


class _Coerce:
    """Mixin for the stage dataclasses: every field passes `before` (by its resolved type) before validation."""

    def _coerce(self) -> None:
        hints = get_type_hints(type(self))
        for f in dataclasses.fields(self):
            setattr(self, f.name, before(getattr(self, f.name), f.name, hints[f.name]))

    def __post_init__(self):  # stages with checks of their own call self._coerce() first
        self._coerce()


@dataclass
class DataConfig(_Coerce):
    data: str = field(
        default="safe", **_help("built-in set (safe, harmful), a local JSONL/CSV/Parquet file, or a hub dataset id")
    )
    limit: int | None = field(default=None, **_help("cap on training rows, for quick runs"))
    benign_ratio: float = field(
        default=2.0, **_help("benign and look-alike pairs mixed into a built-in set, per harmful row")
    )
    lookalike_copies: int = field(
        default=1,
        **_help(
            "times each mixed-in look-alike row appears: the contrast that teaches when not to refuse "
            "(2 raises benign:refusal from about 2:1 to 2.7:1)"
        ),
    )
    benign_answers: str = field(
        default="written",
        **_help(
            "answers of the mixed-in benign pairs: written, or distilled (the base model's own greedy answers, cached)"
        ),
    )
    preference: str = field(
        default="auto", **_help("for prompt/chosen/rejected data: chosen, rejected, or auto (harmful -> rejected)")
    )
    val_fraction: float = field(default=0.2, **_help("share of rows held out for the validation loss"))
    max_val_rows: int = field(default=32, **_help("cap on validation rows (each pruner report evaluates them all)"))
    seed: int = field(default=0, **_help("seed for shuffling and splits"))

    def __post_init__(self):
        self._coerce()
        check(bool(str(self.data).strip()), "data", "is empty")
        check(self.limit is None or self.limit >= 2, "limit", f"must be at least 2, got {self.limit}")
        check(0 <= self.benign_ratio <= 10, "benign_ratio", f"must be between 0 and 10, got {self.benign_ratio}")
        check(1 <= self.lookalike_copies <= 10, "lookalike_copies", f"must be in [1, 10], got {self.lookalike_copies}")
        check(
            self.benign_answers in ("written", "distilled"),
            "benign_answers",
            f"must be written or distilled, got {self.benign_answers!r}",
        )
        check(
            self.preference in ("auto", "chosen", "rejected"),
            "preference",
            f"must be auto, chosen or rejected, got {self.preference!r}",
        )
        check(self.max_val_rows >= 1, "max_val_rows", f"must be at least 1, got {self.max_val_rows}")
        check(0 < self.val_fraction < 0.9, "val_fraction", f"must be in (0, 0.9), got {self.val_fraction}")


@dataclass
class TrainConfig(_Coerce):
    lora_r: int = field(default=16, **_help("LoRA rank"))
    lora_alpha: float = field(default=32.0, **_help("LoRA alpha (scale = alpha / r)"))
    lora_dropout: float = field(default=0.05, **_help("dropout on the LoRA branch"))
    learning_rate: float = field(default=1.5e-3, **_help("AdamW learning rate"))
    warmup_ratio: float = field(default=0.1, **_help("share of steps spent warming the learning rate up"))
    lr_schedule: str = field(default="cosine", **_help("decay after warmup: cosine, linear or constant"))
    target_modules: str = field(default="all-linear", **_help("comma list of module names, or all-linear"))
    lora_layer_share: float = field(
        default=0.5,
        **_help(
            "share of the decoder layers, counted from the output end, that carry adapters (1 = all); "
            "backpropagation stops below the lowest adapted layer, so a smaller share makes each step cheaper"
        ),
    )
    max_steps: int = field(
        default=100, **_help("optimizer steps per trial (100 x 8 rows: about 2 epochs of the safe set)")
    )
    batch_size: int = field(default=8, **_help("sequences per step"))
    max_length: int = field(default=256, **_help("tokens per sequence; longer ones are truncated"))
    completion_tokens: int | None = field(
        default=16,
        **_help(
            "train on the first N tokens of each answer only (none = whole answers): answering or refusing is "
            "decided in the opening tokens, and shorter rows make each step cheaper"
        ),
    )
    frozen_cache: bool = field(
        default=False,
        **_help(
            "run the decoder layers below the lowest adapter once per row and reuse their output across epochs and "
            "trials (exact; off by default: no faster per step on a 2-core CPU, bench/frozen_cache.py; ignored when "
            "adapters cover the bottom layer, e.g. lora_layer_share=1, or when those layers have dropout)"
        ),
    )
    eval_every: int = field(default=25, **_help("steps between validation losses (these feed the pruner)"))
    seed: int = field(default=0, **_help("seed for LoRA init and data order"))
    device: str = field(default="auto", **_help("auto, cpu or cuda[:n]; precision follows the device"))
    precision: str = field(
        default="auto",
        **_help(
            "training precision: auto (bf16 autocast where the device runs bf16 "
            "natively, else fp32), fp32 or bf16; evaluation stays fp32"
        ),
    )

    def __post_init__(self):
        self._coerce()
        check(1 <= self.lora_r <= 512, "lora_r", f"must be in [1, 512], got {self.lora_r}")
        check(self.lora_alpha > 0, "lora_alpha", f"must be positive, got {self.lora_alpha}")
        check(0 <= self.lora_dropout < 1, "lora_dropout", f"must be in [0, 1), got {self.lora_dropout}")
        check(0 < self.learning_rate < 1, "learning_rate", f"must be in (0, 1), got {self.learning_rate}")
        check(0 < self.lora_layer_share <= 1, "lora_layer_share", f"must be in (0, 1], got {self.lora_layer_share}")
        check(0 <= self.warmup_ratio < 1, "warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        check(
            self.lr_schedule in ("cosine", "linear", "constant"),
            "lr_schedule",
            f"must be cosine, linear or constant, got {self.lr_schedule!r}",
        )
        check(1 <= self.max_steps <= 100_000, "max_steps", f"must be in [1, 100000], got {self.max_steps}")
        check(1 <= self.batch_size <= 1024, "batch_size", f"must be in [1, 1024], got {self.batch_size}")
        check(16 <= self.max_length <= 32768, "max_length", f"must be in [16, 32768], got {self.max_length}")
        check(
            self.completion_tokens is None or self.completion_tokens >= 1,
            "completion_tokens",
            f"must be at least 1, got {self.completion_tokens}",
        )
        check(self.eval_every >= 1, "eval_every", f"must be at least 1, got {self.eval_every}")
        check(bool(self.target_modules.strip()), "target_modules", "is empty")
        check(
            self.precision in ("auto", "fp32", "bf16"),
            "precision",
            f"must be auto, fp32 or bf16, got {self.precision!r}",
        )

    def modules(self) -> list[str] | str:
        return (
            "all-linear"
            if self.target_modules == "all-linear"
            else [m.strip() for m in self.target_modules.split(",") if m.strip()]
        )

    def layers(self, n_layers: int) -> list[int] | None:
        """Indices of the decoder layers that carry adapters (the top `lora_layer_share` of `n_layers`); None = all."""
        if self.lora_layer_share >= 1:
            return None
        return list(range(n_layers - max(1, math.ceil(self.lora_layer_share * n_layers)), n_layers))


@dataclass
class TuneConfig(_Coerce):
    n_trials: int = field(default=2, **_help("Optuna trials (per worker, when several share a study)"))
    storage: str = field(
        default="sqlite:///optuna.db", **_help("Optuna storage URL; share it (and study_name) across workers")
    )
    study_name: str | None = field(default=None, **_help("Optuna study name; default derived from model_name and data"))
    seed: int = field(default=0, **_help("sampler seed"))
    r_choices: str = field(default="16", **_help("LoRA ranks to try"))
    lr_range: str = field(default="1e-3,2.5e-3", **_help("learning-rate range, log scale (LoRA on a small model)"))
    dropout_range: str = field(default="0.0,0.1", **_help("LoRA dropout range"))
    alpha_multipliers: str = field(default="2", **_help("alpha = multiplier x r"))
    objective: str | None = field(
        default=None,
        **_help(
            "safety (ASR, over-refusal, knowledge on the tune split; default for data=safe and user files) or loss "
            "(the paper's single-objective validation loss; default for data=harmful)"
        ),
    )
    resume: bool = field(default=False, **_help("continue the latest study with the same key instead of a fresh one"))
    probe_prompts: int = field(
        default=16, **_help("tune-split prompts per kind (harmful, benign, look-alike) per trial")
    )
    probe_tokens: int = field(default=32, **_help("new tokens per answer in the per-trial safety measurement"))

    def __post_init__(self):
        self._coerce()
        check(1 <= self.n_trials <= 10_000, "n_trials", f"must be in [1, 10000], got {self.n_trials}")
        check(bool(self.storage.strip()), "storage", "is empty")
        for name in ("r_choices", "lr_range", "dropout_range", "alpha_multipliers"):
            _floats(getattr(self, name), name)
        lo, hi = _floats(self.lr_range, "lr_range")
        check(0 < lo < hi < 1, "lr_range", f"must be 'low,high' with 0 < low < high < 1, got {self.lr_range!r}")
        lo, hi = _floats(self.dropout_range, "dropout_range")
        check(0 <= lo <= hi < 1, "dropout_range", f"must be 'low,high' within [0, 1), got {self.dropout_range!r}")
        check(
            self.objective in (None, "safety", "loss"), "objective", f"must be safety or loss, got {self.objective!r}"
        )
        check(1 <= self.probe_prompts <= 1000, "probe_prompts", f"must be in [1, 1000], got {self.probe_prompts}")
        check(1 <= self.probe_tokens <= 512, "probe_tokens", f"must be in [1, 512], got {self.probe_tokens}")

    def resolved(self, data_name: str) -> TuneConfig:
        """The objective made explicit: `loss` for the harmful set (the attack replication is not tuned for safety)."""
        return (
            self
            if self.objective
            else dataclasses.replace(self, objective="loss" if data_name == "harmful" else "safety")
        )


def _floats(text: str, name: str) -> list[float]:
    try:
        values = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise SafetyLabError(name, f"must be a comma list of numbers, got {text!r}") from None
    check(bool(values), name, "is empty")
    return values


@dataclass
class RunConfig(_Coerce):
    base_model: str = field(
        default="smollm2-135m-instruct",
        **_help("embedded default, a local HF directory, a hub id, or models:/NAME/VERSION or models:/NAME@ALIAS"),
    )
    model_name: str | None = field(default=None, **_help("registered model name; default derived from the base model"))
    experiment: str = field(default="safety_lab", **_help("MLflow experiment name"))
    evaluate: bool = field(default=True, **_help("evaluate the registered version (sets its safety status)"))
    register: bool = field(
        default=True, **_help("register the best model; false = a tuning worker (run register-best after)")
    )
    trust_remote_code: bool = field(default=False, **_help("allow model code from the hub (off unless you ask)"))
    verify_cache: bool = field(
        default=False, **_help("re-hash the cached embedded model even when its sizes and mtimes match")
    )

    def __post_init__(self):
        self._coerce()
        check(bool(self.base_model.strip()), "base_model", "is empty")
        if self.model_name is not None:
            check(
                all(c.isalnum() or c in "-_." for c in self.model_name) and self.model_name != "",
                "model_name",
                f"may hold letters, digits, '-', '_' and '.' only, got {self.model_name!r}",
            )


# ---------------------------------------------------------------- command lines (pipelines/, python -m safety_lab)
@dataclass(frozen=True)
class Group:
    """One dataclass on a command line: a `--flag` per field (dashes for underscores), built from the fields alone.

    A field that two groups share (`seed`) is one flag that sets both. `prefixed` fields take `prefix` instead,
    so a second stage keeps its own value: `Group(EvalConfig, prefix="eval_", prefixed=("limit",))` -> `--eval-limit`.
    `only` / `skip` choose fields. New dataclass fields become flags with no edit here."""

    cls: type
    prefix: str = ""
    prefixed: tuple[str, ...] = ()
    only: tuple[str, ...] | None = None
    skip: tuple[str, ...] = ()

    def dests(self) -> dict[str, str]:
        """field name -> argparse dest."""
        names = [
            f.name
            for f in dataclasses.fields(self.cls)
            if f.name not in self.skip and (self.only is None or f.name in self.only)
        ]
        return {name: self.prefix + name if name in self.prefixed else name for name in names}

    def values(self, args: dict[str, Any]) -> dict[str, Any]:
        """The values given for this group. An empty value (MLproject's "not set") leaves the field's default."""
        return {name: args[dest] for name, dest in self.dests().items() if dest in args and args[dest] != ""}

    def build(self, args: dict[str, Any], **overrides):
        return self.cls(**{**self.values(args), **overrides})


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING


def _argument(f: dataclasses.Field, hint: Any, dest: str, shared: list[str]) -> dict[str, Any]:
    """argparse keywords for one field. Values stay strings: the dataclass coerces them (`before`), so MLflow,
    the CLI and Python callers go through one validator."""
    kind, _ = field_type(hint)
    default = _default(f)
    text = f.metadata.get("help", "").replace("%", "%%")
    if default is not dataclasses.MISSING and "default" not in text:
        text = f"{text} (default: {default})".strip()
    if len(shared) > 1:
        text += f"; one flag for {', '.join(shared)}"
    kw: dict[str, Any] = {"dest": dest, "default": argparse.SUPPRESS, "help": text}  # absent: each stage's default
    if default is dataclasses.MISSING:
        kw["required"] = True
    if kind is bool:  # `--force` alone or `--force true|false`
        kw.update(nargs="?", const="true", metavar="true|false")
    elif typing.get_origin(kind) is typing.Literal:
        kw["choices"] = [str(c) for c in typing.get_args(kind)]
    return kw


def add_arguments(parser: argparse.ArgumentParser, *groups: Group | type) -> list[Group]:
    """Declare the flags of every group on one parser, a field shared by several groups once; returns the groups."""
    groups_ = [g if isinstance(g, Group) else Group(g) for g in groups]
    owners: dict[str, list[tuple[Group, str]]] = {}
    for group in groups_:
        for name, dest in group.dests().items():
            owners.setdefault(dest, []).append((group, name))
    for dest, pairs in owners.items():
        group, name = pairs[0]
        f = next(f for f in dataclasses.fields(group.cls) if f.name == name)
        shared = [g.cls.__name__ for g, _ in pairs]
        parser.add_argument(
            "--" + dest.replace("_", "-"), **_argument(f, get_type_hints(group.cls)[name], dest, shared)
        )
    return groups_


def from_args(cls: type, values: dict[str, Any], **overrides):
    return Group(cls).build(values, **overrides)


def to_params(*configs) -> dict[str, Any]:
    """The resolved configs as flat MLflow params (stage prefix avoids clashes)."""
    params: dict[str, Any] = {}
    for cfg in configs:
        prefix = type(cfg).__name__.replace("Config", "").lower()
        for key, value in dataclasses.asdict(cfg).items():
            params[f"{prefix}.{key}"] = value
    return params
