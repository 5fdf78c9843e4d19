"""Optuna studies keyed by what makes trials comparable; opening, creating and (explicitly) resuming them."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time

import optuna

from safety_lab.config import DpoConfig, TrainConfig, TuneConfig, refusal_tau_of
from safety_lab.errors import SafetyLabError, check, first_line
from safety_lab.tracking import redact

KEY_ATTR = "safety_lab.key"  # study user attrs: the short key and what it was computed from
KEY_PARTS_ATTR = "safety_lab.key_parts"
SEARCH_FIELDS = (
    "r_choices",
    "lr_range",
    "dropout_range",
    "alpha_multipliers",
    "objective",
    "probe_prompts",
    "probe_tokens",
)
DPO_SEARCH_FIELDS = ("dpo_steps_range", "dpo_beta_range", "dpo_lr_range")
NOT_SETTINGS = ("device",)  # where a trial ran does not change what it learns


def study_key(
    *,
    base_model: str,
    data_sha256: str,
    train_cfg: TrainConfig,
    tune_cfg: TuneConfig,
    split: dict | None = None,
    dpo_cfg: DpoConfig | None = None,
) -> tuple[str, dict]:
    """A 12-hex key over base model, data hash, training settings, search space and objective (+ the val split; + the
    preference stage's settings and search ranges when it is on, and the refusal decision when it is on, so a study
    without them keeps its key)."""
    parts = {
        "base_model": base_model,
        "data_sha256": data_sha256,
        "split": split or {},
        "train": {k: v for k, v in dataclasses.asdict(train_cfg).items() if k not in NOT_SETTINGS},
        "search": {k: getattr(tune_cfg, k) for k in SEARCH_FIELDS},
    }
    if dpo_cfg is not None and dpo_cfg.dpo_steps > 0:
        parts["dpo"] = dataclasses.asdict(dpo_cfg)
        parts["search"].update({k: getattr(tune_cfg, k) for k in DPO_SEARCH_FIELDS})
    if tune_cfg.objective == "safety" and refusal_tau_of(tune_cfg.refusal_tau) is not None:  # trials measured with it
        parts["search"]["refusal_tau"] = tune_cfg.refusal_tau
        if tune_cfg.refusal_answers != "tuned":  # keys of studies from before the field are kept
            parts["search"]["refusal_answers"] = tune_cfg.refusal_answers
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
    return digest[:12], parts


def default_name(model_name: str, data_name: str, key: str) -> str:
    return f"{model_name}-{data_name}-{key}"


def _sampler(cfg: TuneConfig) -> optuna.samplers.BaseSampler:
    if cfg.objective == "safety":  # multi-objective TPE; constraints (the tuning targets) steer it to passing trials
        return optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=2, constraints_func=trial_constraints)
    return optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=2)


def trial_constraints(trial: optuna.trial.FrozenTrial) -> tuple[float, ...]:
    """Optuna's feasibility values (<= 0 feasible), stored by the trial when it measured its objectives."""
    return tuple(trial.user_attrs.get("constraints", (1.0, 1.0, 1.0)))


def directions(cfg: TuneConfig) -> list[str]:
    return ["minimize"] * (3 if cfg.objective == "safety" else 1)


def open_study(
    cfg: TuneConfig,
    study_name: str,
    pruner: optuna.pruners.BasePruner | None = None,
    *,
    key: str | None = None,
    key_parts: dict | None = None,
    create: bool = True,
) -> optuna.Study:
    """Create or join `study_name`. With `key`, a study holding another key is refused; a new one records it.

    Retried, because workers starting together race to create the schema."""
    import sqlalchemy.exc

    study, error = None, None
    for attempt in range(6):
        try:
            if create:
                study = optuna.create_study(
                    study_name=study_name,
                    storage=cfg.storage,
                    directions=directions(cfg),
                    load_if_exists=True,
                    sampler=_sampler(cfg),
                    pruner=pruner,
                )
            else:
                study = optuna.load_study(
                    study_name=study_name, storage=cfg.storage, sampler=_sampler(cfg), pruner=pruner
                )
            break
        except (
            sqlalchemy.exc.OperationalError,
            sqlalchemy.exc.IntegrityError,
            optuna.exceptions.DuplicatedStudyError,
        ) as exc:
            error = exc
            time.sleep(0.5 * 2**attempt)
        except KeyError:
            raise SafetyLabError("study_name", f"no study {study_name!r} in {redact(cfg.storage)}") from None
        except (ValueError, ImportError, optuna.exceptions.StorageInternalError) as exc:
            error = exc
            break
    if study is None:
        raise SafetyLabError(
            "storage", f"cannot open Optuna storage {redact(cfg.storage)} ({redact(first_line(error))})"
        ) from None
    if key is not None:
        _check_key(study, key, key_parts or {}, cfg)
    return study


def _changed(held: dict, parts: dict) -> list[str]:
    """The key parts that differ, by field where a part is a mapping (`train.lora_r`)."""
    out = []
    for name in sorted(set(held) | set(parts)):
        old, new = held.get(name), parts.get(name)
        if isinstance(old, dict) and isinstance(new, dict):
            out += [
                f"{name}.{k}: {old.get(k)!r} -> {new.get(k)!r}"
                for k in sorted(set(old) | set(new))
                if old.get(k) != new.get(k)
            ]
        elif old != new:
            out.append(name)
    return out


def _check_key(study: optuna.Study, key: str, parts: dict, cfg: TuneConfig) -> None:
    held = study.user_attrs.get(KEY_ATTR)
    if held is None and not study.trials:  # new (or never used): claim it
        study.set_user_attr(KEY_ATTR, key)
        study.set_user_attr(KEY_PARTS_ATTR, parts)
        return
    if held != key:
        changed = _changed(study.user_attrs.get(KEY_PARTS_ATTR, {}), json.loads(json.dumps(parts, default=str)))
        check(
            False,
            "study_name",
            f"study {study.study_name!r} holds trials keyed {held or 'by nothing'}, this run is "
            f"keyed {key} (differs in: {', '.join(changed) or 'unknown'}); use a new --study-name",
        )
    n_directions = len(study.directions)
    check(
        n_directions == len(directions(cfg)),
        "objective",
        f"study {study.study_name!r} has {n_directions} objective(s); this run's objective {cfg.objective!r} needs "
        f"{len(directions(cfg))}",
    )


def resolve_name(cfg: TuneConfig, prefix: str) -> str:
    """The study this run uses. An explicit name is joined (resumed) if it exists. Otherwise a fresh `prefix` study
    (`prefix-2`, `-3`, ... when taken), or with --resume the latest existing study named `prefix[-n]`."""
    if cfg.study_name:
        return cfg.study_name
    try:
        summaries = optuna.study.get_all_study_summaries(cfg.storage, include_best_trial=False)
    except (ValueError, ImportError) as exc:
        raise SafetyLabError(
            "storage", f"cannot open Optuna storage {redact(cfg.storage)} ({type(exc).__name__})"
        ) from None
    taken = {s.study_name: s for s in summaries if s.study_name == prefix or s.study_name.startswith(prefix + "-")}
    if cfg.resume:
        check(bool(taken), "resume", f"no study to resume: none named {prefix!r} in {redact(cfg.storage)}")
        latest = max(taken.values(), key=lambda s: (s.datetime_start is not None, s.datetime_start, _nth(s, prefix)))
        return latest.study_name
    n = 1
    while (name := prefix if n == 1 else f"{prefix}-{n}") in taken:
        n += 1
    return name


def _nth(summary: optuna.study.StudySummary, prefix: str) -> int:
    """Which fresh study of `prefix` this is (`prefix` 1, `prefix-n` n, another name 0): the order they were made."""
    suffix = summary.study_name[len(prefix) + 1 :]
    return 1 if summary.study_name == prefix else int(suffix) if suffix.isdigit() else 0
