"""Stage configs: one pydantic dataclass per stage. Each field declares its help text, default and constraints once;
the constructor checks them and the command-line flags are built from the same declarations."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass
from pydantic.fields import FieldInfo

from safety_lab import names
from safety_lab.errors import SafetyLabError, check

PRECISIONS = ("auto", "fp32", "bf16")  # a precision request; models.resolve_precision decides what it means here


# ---------------------------------------------------------------- strings from MLflow or a command line
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


# ---------------------------------------------------------------- the stage dataclasses and their one error shape
def declared(cls: type) -> dict[str, FieldInfo]:
    """A stage's fields as declared: pydantic's `__pydantic_fields__` (documented on its dataclasses), one FieldInfo
    (annotation, default, description, constraints) per field."""
    return cls.__pydantic_fields__


_FORBID_EXTRA = ConfigDict(extra="forbid")  # a misspelt or retired option is an error, not silently dropped


@pydantic_dataclass(config=_FORBID_EXTRA)
class Stage:
    """Base of the stage configs: every field's value passes `before` (by its declared type) before validation.

    `param_prefix` names the stage in MLflow params (`run.base_model`)."""

    param_prefix: ClassVar[str] = ""

    @field_validator("*", mode="before")
    @classmethod
    def _from_text(cls, value: Any, info: ValidationInfo) -> Any:
        return before(value, info.field_name, declared(cls)[info.field_name].annotation)


def stage(cls: type) -> type:
    """Make `cls` (a subclass of `Stage`) a stage config: a pydantic dataclass whose constructor (and
    `dataclasses.replace`) raises one `SafetyLabError` naming the first bad field, on one line."""
    cls = pydantic_dataclass(cls, config=_FORBID_EXTRA)
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        try:
            init(self, *args, **kwargs)
        except ValidationError as exc:
            raise _one_error(exc, type(self)) from None

    cls.__init__ = __init__
    return cls


def _one_error(exc: ValidationError, cls: type) -> SafetyLabError:
    error = exc.errors()[0]
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, SafetyLabError):  # raised by `before` or a stage's own check
        return cause
    name = str(error["loc"][0]) if error["loc"] else cls.__name__
    value, info = error.get("input"), declared(cls).get(name)
    if error["type"] in ("greater_than", "greater_than_equal", "less_than", "less_than_equal") and info:
        return SafetyLabError(name, f"{_bounds(info)}, got {value}")
    if error["type"] == "literal_error" and info:
        choices = [str(c) for c in typing.get_args(field_type(info.annotation)[0])]
        return SafetyLabError(name, f"must be {', '.join(choices[:-1])} or {choices[-1]}, got {value!r}")
    if error["type"] == "missing":
        return SafetyLabError(name, "is required")
    if error["type"] == "unexpected_keyword_argument":
        return SafetyLabError(name, f"is not an option of {cls.__name__}")
    message = error["msg"]
    return SafetyLabError(name, f"{message[:1].lower()}{message[1:]}, got {value!r}")


def _bounds(info: FieldInfo) -> str:
    """A field's numeric constraints in words: `must be in [1, 512]`, `must be at least 2`, `must be positive`."""
    limits = {k: getattr(m, k) for m in info.metadata for k in ("ge", "gt", "le", "lt") if hasattr(m, k)}
    low = ("[", limits["ge"]) if "ge" in limits else ("(", limits["gt"]) if "gt" in limits else None
    high = (limits["le"], "]") if "le" in limits else (limits["lt"], ")") if "lt" in limits else None
    if low and high:
        return f"must be in {low[0]}{low[1]}, {high[0]}{high[1]}"
    if low and low[0] == "[":
        return f"must be at least {low[1]}"
    if low:
        return "must be positive" if low[1] == 0 else f"must be greater than {low[1]}"
    return f"must be at most {high[0]}" if high[1] == "]" else f"must be below {high[0]}"


def _non_empty(cfg: Any, *names: str) -> None:
    for name in names:
        check(bool(str(getattr(cfg, name)).strip()), name, "is empty")


@stage
class DataConfig(Stage):
    param_prefix: ClassVar[str] = "data"

    data: str = Field(
        "safe", description="built-in set (safe, harmful), a local JSONL/CSV/Parquet file, or a hub dataset id"
    )
    limit: int | None = Field(None, ge=2, description="cap on training rows, for quick runs")
    benign_ratio: float = Field(
        2.0, ge=0, le=10, description="benign and look-alike pairs mixed into a built-in set, per harmful row"
    )
    lookalike_copies: int = Field(
        1,
        ge=1,
        le=10,
        description="times each mixed-in look-alike row appears: the contrast that teaches when not to refuse "
        "(2 raises benign:refusal from about 2:1 to 2.7:1)",
    )
    benign_answers: Literal["written", "distilled"] = Field(
        "written",
        description="answers of the mixed-in benign pairs: written, or distilled (the base model's own greedy "
        "answers, cached)",
    )
    preference: Literal["auto", "chosen", "rejected"] = Field(
        "auto", description="for prompt/chosen/rejected data: chosen, rejected, or auto (harmful -> rejected)"
    )
    val_fraction: float = Field(0.2, gt=0, lt=0.9, description="share of rows held out for the validation loss")
    max_val_rows: int = Field(32, ge=1, description="cap on validation rows (each pruner report evaluates them all)")
    seed: int = Field(0, description="seed for shuffling and splits")

    def __post_init__(self):
        _non_empty(self, "data")


@stage
class TrainConfig(Stage):
    param_prefix: ClassVar[str] = "train"

    lora_r: int = Field(16, ge=1, le=512, description="LoRA rank")
    lora_alpha: float = Field(32.0, gt=0, description="LoRA alpha (scale = alpha / r)")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the LoRA branch")
    learning_rate: float = Field(1.5e-3, gt=0, lt=1, description="AdamW learning rate")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="share of steps spent warming the learning rate up")
    lr_schedule: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="decay after warmup: cosine, linear or constant"
    )
    target_modules: str = Field("all-linear", description="comma list of module names, or all-linear")
    lora_layer_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="share of the decoder layers, counted from the output end, that carry adapters (1 = all); "
        "backpropagation stops below the lowest adapted layer, so a smaller share makes each step cheaper",
    )
    max_steps: int = Field(
        100, ge=1, le=100_000, description="optimizer steps per trial (100 x 8 rows: about 2 epochs of the safe set)"
    )
    batch_size: int = Field(8, ge=1, le=1024, description="sequences per step")
    max_length: int = Field(256, ge=16, le=32768, description="tokens per sequence; longer ones are truncated")
    completion_tokens: int | None = Field(
        16,
        ge=1,
        description="train on the first N tokens of each answer only (none = whole answers): answering or refusing "
        "is decided in the opening tokens, and shorter rows make each step cheaper",
    )
    frozen_cache: bool = Field(
        True,
        description="run the decoder layers below the lowest adapter once per row and reuse their output across "
        "epochs and trials (exact; a step that finds its rows stored takes about 0.84x the time on a 2-core CPU, "
        "bench/frozen_cache.py; ignored when adapters cover the bottom layer, e.g. lora_layer_share=1, or when "
        "those layers have dropout)",
    )
    eval_every: int = Field(25, ge=1, description="steps between validation losses (these feed the pruner)")
    seed: int = Field(0, description="seed for LoRA init and data order")
    device: str = Field("auto", description="auto, cpu or cuda[:n]")
    precision: Literal[PRECISIONS] = Field(
        "auto",
        description="auto (bf16 where the device runs it natively: bf16 weights on a GPU, bf16 autocast over fp32 "
        "weights on a CPU; fp16 on a GPU without bf16; else fp32), fp32 (fp32 weights, no autocast) or bf16; "
        "the evaluation follows it, with bf16 weights where a CPU runs bf16 natively",
    )

    def __post_init__(self):
        _non_empty(self, "target_modules")

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


@stage
class DpoConfig(Stage):
    """The preference stage: DPO on the chosen SFT adapter (harmful requests prefer a refusal, safe ones the answer)."""

    param_prefix: ClassVar[str] = "dpo"

    dpo_steps: int = Field(
        0, ge=0, le=100_000, description="DPO steps after SFT, on the same adapter (0 = no preference stage)"
    )
    dpo_beta: float = Field(0.3, gt=0, le=10, description="DPO beta: how far the policy may move from the SFT adapter")
    dpo_learning_rate: float = Field(5e-4, gt=0, lt=1, description="AdamW learning rate of the preference stage")
    dpo_sft_weight: float = Field(
        3.0,
        ge=0,
        le=10,
        description="weight of the chosen answers' own likelihood (TRL's sft loss) beside DPO's (3: tune-split ASR "
        "0.172 at weight 1 and beta 1, 0.109 at weight 3 and beta 0.3, docs/safety_tuning.md)",
    )
    dpo_max_length: int = Field(160, ge=16, le=32768, description="tokens per prompt+answer; longer ones are cut")
    dpo_answer_tokens: int = Field(
        16,
        ge=0,
        le=32768,
        description="train on the first N tokens of each chosen and rejected answer only (0 = whole answers): "
        "refusing or answering is decided in the opening, and shorter pairs make each step cheaper; a cut answer "
        "keeps no end-of-turn token (16: tune-split ASR 0.109 and over-refusal 0.070 as with whole answers, in 0.58x "
        "the time, docs/safety_tuning.md)",
    )


@stage
class TuneConfig(Stage):
    param_prefix: ClassVar[str] = "tune"

    n_trials: int = Field(2, ge=1, le=10_000, description="Optuna trials (per worker, when several share a study)")
    storage: str = Field(
        "sqlite:///optuna.db", description="Optuna storage URL; share it (and study_name) across workers"
    )
    study_name: str | None = Field(None, description="Optuna study name; default derived from model_name and data")
    seed: int = Field(0, description="sampler seed")
    r_choices: str = Field("16", description="LoRA ranks to try")
    lr_range: str = Field("1e-3,2.5e-3", description="learning-rate range, log scale (LoRA on a small model)")
    dropout_range: str = Field("0.0,0.1", description="LoRA dropout range")
    alpha_multipliers: str = Field("2", description="alpha = multiplier x r")
    objective: Literal["safety", "loss"] | None = Field(
        None,
        description="safety (ASR, over-refusal, knowledge on the tune split; default for data=safe and user files) "
        "or loss (the paper's single-objective validation loss; default for data=harmful)",
    )
    resume: bool = Field(False, description="continue the latest study with the same key instead of a fresh one")
    dpo_steps_range: str = Field("30,50", description="DPO steps to try (when the preference stage is on)")
    dpo_beta_range: str = Field("0.2,1.0", description="DPO beta range, log scale (when the preference stage is on)")
    dpo_lr_range: str = Field("3e-4,8e-4", description="DPO learning-rate range, log scale (when it is on)")
    probe_prompts: int = Field(
        16, ge=1, le=1000, description="tune-split prompts per kind (harmful, benign, look-alike) per trial"
    )
    probe_tokens: int = Field(32, ge=1, le=512, description="new tokens per answer in the per-trial safety measurement")
    refusal_tau: str = Field(
        "off",
        description="the refusal decision (safety_lab.models.refusal): off; auto = each trial's τ chosen on the "
        "tune-split prompts (the most harmful ones refused with at most half the over-refusal limit; off under the "
        "loss objective, which measures no trial); or a fixed τ in (0, 1) (safety objective only)",
    )
    refusal_answers: Literal["tuned", "parent"] = Field(
        "tuned",
        description="with a refusal decision, who answers the prompts it does not refuse: tuned = the tuned weights; "
        "parent = the parent's weights (the base model for a first tune), the adapter only deciding and refusing "
        "(LoRA-Guard's dual path, safety_lab.models.refusal)",
    )

    def __post_init__(self):
        _non_empty(self, "storage")
        for name in ("r_choices", "lr_range", "dropout_range", "alpha_multipliers"):
            comma_floats(getattr(self, name), name)
        lo, hi = comma_floats(self.lr_range, "lr_range")
        check(0 < lo < hi < 1, "lr_range", f"must be 'low,high' with 0 < low < high < 1, got {self.lr_range!r}")
        lo, hi = comma_floats(self.dropout_range, "dropout_range")
        check(0 <= lo <= hi < 1, "dropout_range", f"must be 'low,high' within [0, 1), got {self.dropout_range!r}")
        refusal_tau_of(self.refusal_tau)
        for name, low, high in (("dpo_steps_range", 1, 100_000), ("dpo_beta_range", 0, 10), ("dpo_lr_range", 0, 1)):
            lo, hi = _pair(getattr(self, name), name)
            check(
                low <= lo <= hi <= high and lo > 0, name, f"must be 'low,high' within ({low}, {high}], got {lo}, {hi}"
            )

    def resolved(self, data_name: str) -> TuneConfig:
        """The objective made explicit: `loss` for the harmful set (the attack replication is not tuned for safety)."""
        return (
            self
            if self.objective
            else dataclasses.replace(self, objective="loss" if data_name == "harmful" else "safety")
        )


def refusal_tau_of(text: str) -> float | str | None:
    """`refusal_tau` read: None (off), "auto", or a τ strictly between 0 and 1."""
    value = str(text).strip().lower()
    if value in ("off", "auto"):
        return None if value == "off" else "auto"
    try:
        tau = float(value)
    except ValueError:
        tau = float("nan")
    check(0 < tau < 1, "refusal_tau", f"must be off, auto or a number strictly between 0 and 1, got {text!r}")
    return tau


def _pair(text: str, name: str) -> tuple[float, float]:
    values = comma_floats(text, name)
    check(len(values) == 2, name, f"must be 'low,high', got {text!r}")
    return values[0], values[1]


def comma_floats(text: str, name: str) -> list[float]:
    """A comma list of numbers (`"1e-3,2.5e-3"`), or an error naming the field."""
    try:
        values = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise SafetyLabError(name, f"must be a comma list of numbers, got {text!r}") from None
    check(bool(values), name, "is empty")
    return values


@stage
class RunConfig(Stage):
    param_prefix: ClassVar[str] = "run"

    base_model: str = Field(
        "smollm2-135m-instruct",
        description="embedded default, a local HF directory, a hub id, or models:/NAME/VERSION or models:/NAME@ALIAS",
    )
    model_name: str | None = Field(None, description="registered model name; default derived from the base model")
    experiment: str = Field("safety_lab", description="MLflow experiment name")
    evaluate: bool = Field(True, description="evaluate the registered version (sets its safety status)")
    register: bool = Field(
        True, description="register the best model; false = a tuning worker (run register-best after)"
    )
    trust_remote_code: bool = Field(False, description="allow model code from the hub (off unless you ask)")
    verify_cache: bool = Field(
        False, description="re-hash the cached embedded model even when its sizes and mtimes match"
    )

    def __post_init__(self):
        _non_empty(self, "base_model")
        if self.model_name is not None:
            names.model_name(self.model_name)


# ---------------------------------------------------------------- command lines (python -m safety_lab, MLproject)
@dataclass(frozen=True)
class Group:
    """One stage on a command line: a `--flag` per field (dashes for underscores), built from the fields alone.

    A field that two groups share (`seed`) is one flag that sets both. `prefixed` fields take `prefix` instead,
    so a second stage keeps its own value: `Group(EvalConfig, prefix="eval_", prefixed=("limit",))` -> `--eval-limit`.
    `only` / `skip` choose fields. New stage fields become flags with no edit here."""

    cls: type
    prefix: str = ""
    prefixed: tuple[str, ...] = ()
    only: tuple[str, ...] | None = None
    skip: tuple[str, ...] = ()

    def dests(self) -> dict[str, str]:
        """field name -> argparse dest."""
        names = [
            name for name in declared(self.cls) if name not in self.skip and (self.only is None or name in self.only)
        ]
        return {name: self.prefix + name if name in self.prefixed else name for name in names}

    def values(self, args: dict[str, Any]) -> dict[str, Any]:
        """The values given for this group. An empty value (MLproject's "not set") leaves the field's default."""
        return {name: args[dest] for name, dest in self.dests().items() if dest in args and args[dest] != ""}

    def build(self, args: dict[str, Any], **overrides):
        return self.cls(**{**self.values(args), **overrides})


def _argument(info: FieldInfo, dest: str, shared: list[str]) -> dict[str, Any]:
    """argparse keywords for one field. Values stay strings: the stage coerces them (`before`), so MLflow,
    the CLI and Python callers go through one validator."""
    kind, _ = field_type(info.annotation)
    text = (info.description or "").replace("%", "%%")
    if not info.is_required() and "default" not in text:
        text = f"{text} (default: {info.get_default(call_default_factory=True)})".strip()
    if len(shared) > 1:
        text += f"; one flag for {', '.join(shared)}"
    kw: dict[str, Any] = {"dest": dest, "default": argparse.SUPPRESS, "help": text}  # absent: each stage's default
    if info.is_required():
        kw["required"] = True
    if kind is bool:  # `--force` alone or `--force true|false`
        kw.update(nargs="?", const="true", metavar="true|false")
    elif typing.get_origin(kind) is Literal:  # listed, not enforced here: "" (MLproject's "not set") must pass
        kw["metavar"] = "|".join(str(c) for c in typing.get_args(kind))
    return kw


def add_arguments(parser: argparse.ArgumentParser, *groups: Group | type) -> list[Group]:
    """Declare the flags of every group (a stage, or a `Group` of one) on `parser`, a field shared by several groups
    once; returns the groups."""
    groups_ = [g if isinstance(g, Group) else Group(g) for g in groups]
    owners: dict[str, list[tuple[Group, str]]] = {}
    for group in groups_:
        for name, dest in group.dests().items():
            owners.setdefault(dest, []).append((group, name))
    for dest, pairs in owners.items():
        group, name = pairs[0]
        shared = [g.cls.__name__ for g, _ in pairs]
        parser.add_argument("--" + dest.replace("_", "-"), **_argument(declared(group.cls)[name], dest, shared))
    return groups_


def from_args(cls: type, values: dict[str, Any], **overrides):
    """The stage `cls` built from parsed flags (`vars(parser.parse_args())`), with `overrides` on top."""
    return Group(cls).build(values, **overrides)


def param_key(cls: type, name: str) -> str:
    """The MLflow param that holds field `name` of stage `cls`: `param_key(RunConfig, "base_model")` ->
    `run.base_model`."""
    return f"{cls.param_prefix}.{name}"


def to_params(*configs: Stage) -> dict[str, Any]:
    """The resolved configs as flat MLflow params, each under its stage's `param_prefix` (no clashes)."""
    return {param_key(type(cfg), k): v for cfg in configs for k, v in dataclasses.asdict(cfg).items()}
