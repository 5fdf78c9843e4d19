"""Finetune: data -> model -> Optuna-tuned LoRA -> logged model -> registered, tagged version -> evaluation."""

from __future__ import annotations

import dataclasses
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import yaml

from safety_lab import distributed, flops, registry
from safety_lab.config import DataConfig, DpoConfig, RunConfig, TrainConfig, TuneConfig, param_key, to_params
from safety_lab.data import (
    DATASETS,
    benign_pairs,
    benign_prompts,
    composition,
    harmful_requests,
    load_dataset,
    lookalike_requests,
    split_forms,
    split_sizes,
)
from safety_lab.data.pairs import preference_pairs
from safety_lab.errors import check
from safety_lab.evaluation import EvalConfig
from safety_lab.evaluation.judges import is_refusal, keyword_attack_success
from safety_lab.evaluations import Recorded, evaluate_version
from safety_lab.models import Precision, load_model, resolve_precision
from safety_lab.models.generation import generate
from safety_lab.policy import load_policy
from safety_lab.publish import Published, publish
from safety_lab.reporting import plots
from safety_lab.tracking import redact, start_experiment, tracked_run
from safety_lab.training import distill
from safety_lab.tuning import (
    Probe,
    SafetyObjectives,
    TuneResult,
    TuningTargets,
    default_name,
    open_study,
    resolve_name,
    select,
    study_key,
    trial_table,
    tune,
)


@dataclass
class Timings:
    """Wall time and FLOPs per stage; logged as timing.<stage>, flops.<stage>, gflops_per_s.<stage> and
    peak_share.<stage> metrics and printed at the end, with the total since creation (stages nest, e.g. eval_asr
    inside evaluation, so the total is not their sum). The peak share is the time this machine's matmul peak would
    need for the stage's FLOPs (`flops.peak_gflops`, each precision at its own peak) over the stage's wall time."""

    stages: dict[str, float] = field(default_factory=dict)
    work: dict[str, flops.Work] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    @contextmanager
    def stage(self, name: str):
        start = time.perf_counter()
        try:
            with flops.tally(self.work.setdefault(name, flops.Work())):
                yield
        finally:
            self.stages[name] = self.stages.get(name, 0.0) + time.perf_counter() - start

    def rates(self) -> dict[str, dict[str, float]]:
        """Per stage that counted FLOPs: flops, gflops_per_s and peak_share."""
        out = {}
        for name, work in self.work.items():
            seconds = self.stages.get(name, 0.0)
            if work.total() and seconds > 0:
                out[name] = {
                    "flops": float(work.total()),
                    "gflops_per_s": work.total() / seconds / 1e9,
                    "peak_share": work.peak_seconds() / seconds,
                }
        return out

    def log(self) -> None:
        metrics = {f"timing.{k}": round(v, 3) for k, v in {**self.stages, "total": self.total()}.items()}
        metrics.update({f"{key}.{name}": value for name, rate in self.rates().items() for key, value in rate.items()})
        mlflow.log_metrics(metrics)

    def total(self) -> float:
        return time.perf_counter() - self.started

    def format(self) -> str:
        rates = self.rates()

        def one(name: str, seconds: float) -> str:
            rate = rates.get(name)
            if rate is None:
                return f"{name}={seconds:.1f}s"
            return (
                f"{name}={seconds:.1f}s ({rate['flops'] / 1e12:.2f} TFLOP, {rate['gflops_per_s']:.1f} GFLOP/s, "
                f"{rate['peak_share']:.0%} of peak)"
            )

        return "  ".join(one(k, v) for k, v in self.stages.items()) + f"  total={self.total():.1f}s"


@dataclass(frozen=True)
class FinetuneResult:
    run_id: str
    model_name: str
    timings: Timings
    version: str = ""
    model_uri: str = ""  # models:/NAME/VERSION, once registered
    best_value: float = float("nan")
    best_params: dict = field(default_factory=dict)
    status: str = registry.UNEVALUATED
    evaluation: Recorded | None = None  # the recorded evaluation, when one ran

    @classmethod
    def tuned(cls, run_id: str, model_name: str, timings: Timings, result: TuneResult) -> FinetuneResult:
        """A run's result once tuning chose `result`, before any version is registered."""
        return cls(run_id, model_name, timings, best_value=result.best_value, best_params=result.best_params)

    def registered(self, published: Published | None, evaluation: Recorded | None) -> FinetuneResult:
        """This result with the version it registered and that version's evaluation, when they exist."""
        if published is None:
            return self
        status = evaluation.status if evaluation else registry.UNEVALUATED
        return dataclasses.replace(
            self, version=published.version, model_uri=published.model_uri, status=status, evaluation=evaluation
        )


@contextmanager
def _open_run(run: RunConfig, name: str, job: str):
    start_experiment(run.experiment)
    with tracked_run(run_name=name, nested=mlflow.active_run() is not None) as active:
        mlflow.set_tags({"safety_lab.job": job})
        yield active


def finetune(
    run: RunConfig,
    data_cfg: DataConfig,
    train_cfg: TrainConfig,
    tune_cfg: TuneConfig,
    dpo_cfg: DpoConfig = DpoConfig(),  # noqa: B008 (never mutated: the stage off)
    *,
    eval_options: dict | None = None,
    pruner=None,
    quiet: bool = False,
) -> FinetuneResult | None:
    """Tune (with `dpo_cfg.dpo_steps` > 0, each trial adds DPO on its SFT adapter); then, unless run.register is false
    (a tuning worker), log, register and evaluate one model version.

    Under `accelerate launch` every process trains; rank 0 returns the result, the other ranks None."""
    timings = Timings()
    model_name = run.model_name or registry.default_model_name(run.base_model)
    tune_cfg = tune_cfg.resolved(str(data_cfg.data).strip())  # safety, or loss for the harmful set: logged below
    eval_cfg = _eval_config(run, eval_options)  # checked before any training, so bad input costs nothing
    distributed.per_device_batch(train_cfg.batch_size)
    precision = resolve_precision(train_cfg.precision, train_cfg.device)  # logged, loaded and trained with
    distributed.init(precision.device)
    if not distributed.is_main():
        return _follow(run, data_cfg, train_cfg, tune_cfg, dpo_cfg, pruner, precision)
    with _open_run(run, f"finetune-{Path(data_cfg.data).stem}", "finetune") as active:
        mlflow.set_tags({"model_name": model_name, "tuning.objective": tune_cfg.objective})
        _log_config(run, data_cfg, train_cfg, tune_cfg, dpo_cfg, precision)
        data, loaded, train_rows, val_rows = _inputs(run, data_cfg, train_cfg, precision, timings)
        study = _study_options(
            model_name, data, data_cfg, loaded, (train_cfg, tune_cfg, dpo_cfg), getattr(eval_cfg, "policy", None)
        )
        with timings.stage("distill"):  # the base model's own answers to the harmful requests, when DPO runs
            study.update(_preference(dpo_cfg, train_rows, loaded))
        published = None
        with timings.stage("tuning"), tempfile.TemporaryDirectory(prefix="safety-lab-") as work:
            result = _tune(
                loaded, train_rows, val_rows, train_cfg, tune_cfg, Path(work), pruner=pruner, quiet=quiet, **study
            )
            _check_lineage(result, data.sha256, active.info.run_id)
            _log_tuning(result, tune_cfg)
            out = FinetuneResult.tuned(active.info.run_id, model_name, timings, result)
            if run.register:
                tags = {"data.name": data.name, "data.sha256": result.data_sha256, "data.rows": len(data.rows)}
                published = publish(
                    loaded, result, tags, run, model_name=model_name, run_id=active.info.run_id, timings=timings
                )
        # the evaluation needs only the reloaded version (and loads the base reference itself): let the base
        # model and the trained copy go, or three copies of the weights are held while the reference runs
        loaded = result = None
        evaluation = _evaluate(published, eval_cfg, timings) if published and eval_cfg is not None else None
        timings.log()
    print(f"[safety_lab] timings: {timings.format()}", flush=True)
    return out.registered(published, evaluation)


def _inputs(run: RunConfig, data_cfg: DataConfig, train_cfg: TrainConfig, precision: Precision, timings: Timings):
    """The dataset, the base model and the train/validation rows. Bad data fails before any model loads, unless
    the answers are distilled (those need the model first)."""
    with timings.stage("data"):
        data = None if _distils(data_cfg) else load_dataset(data_cfg)
    with timings.stage("model_load"):
        loaded = _load_base(run, precision)
    with timings.stage("distill" if data is None else "data"):
        data = data or _dataset(data_cfg, train_cfg, loaded)
        train_rows, val_rows = _split_data(data_cfg, data)
    mlflow.set_tag("base_model", loaded.base_model)
    return data, loaded, train_rows, val_rows


def _log_config(
    run: RunConfig,
    data_cfg: DataConfig,
    train_cfg: TrainConfig,
    tune_cfg: TuneConfig,
    dpo_cfg: DpoConfig,
    precision: Precision,
):
    """The resolved configuration, once: MLflow params (storage URL redacted; the precision decision as it is used)
    and a config.yaml artifact."""
    params = to_params(run, data_cfg, train_cfg, tune_cfg, dpo_cfg)
    params["tune.storage"] = redact(params["tune.storage"])
    mlflow.log_params({**params, "world_size": distributed.world_size(), **precision.params()})
    snapshot = {type(c).__name__: dataclasses.asdict(c) for c in (run, data_cfg, train_cfg, tune_cfg, dpo_cfg)}
    snapshot["TuneConfig"]["storage"] = redact(tune_cfg.storage)
    mlflow.log_text(yaml.safe_dump(snapshot, sort_keys=False), "config.yaml")


def _distils(data_cfg: DataConfig) -> bool:
    """Whether the dataset needs the model first: a built-in set with the model's own (distilled) benign answers."""
    return data_cfg.benign_answers == "distilled" and str(data_cfg.data).strip() in DATASETS


def _dataset(data_cfg: DataConfig, train_cfg: TrainConfig, loaded):
    """The dataset; with `benign_answers=distilled` a built-in set's benign answers are `loaded`'s own (cached)."""
    answers = None
    if _distils(data_cfg):
        answers = distill.distill_answers(loaded, benign_prompts(), **distill.for_training(train_cfg.completion_tokens))
    return load_dataset(data_cfg, answers=answers)


def _split_data(data_cfg: DataConfig, data):
    """The dataset's train/validation split, logged with the three-way split sizes of the built-in sets and the
    form mix (question / instruction / other shares) of each set and part."""
    train_rows, val_rows = data.split(data_cfg.val_fraction, data_cfg.seed, data_cfg.max_val_rows)
    mlflow.log_params(
        {
            "data.name": data.name,
            "data.rows": len(data.rows),
            "data.sha256": data.sha256,
            "data.train_rows": len(train_rows),
            "data.val_rows": len(val_rows),
            **{f"split.{k}": v for k, v in split_sizes().items()},
        }
    )
    mlflow.log_metrics(split_forms())  # form.<set>.<part>.<form>: shares of question, instruction, other
    return train_rows, val_rows


def _study_options(
    model_name: str,
    data,
    data_cfg: DataConfig,
    loaded,
    configs: tuple[TrainConfig, TuneConfig, DpoConfig],
    policy_path: str | None = None,
) -> dict:
    """The study's key (what makes its trials comparable), its name, and the per-trial safety measurement."""
    train_cfg, tune_cfg, dpo_cfg = configs
    split = {k: getattr(data_cfg, k) for k in ("val_fraction", "seed", "max_val_rows")}
    key, parts = study_key(
        base_model=f"{loaded.base_model}|{loaded.parent or ''}",
        data_sha256=data.sha256,
        train_cfg=train_cfg,
        tune_cfg=tune_cfg,
        split=split,
        dpo_cfg=dpo_cfg,
    )
    study_name = resolve_name(tune_cfg, default_name(model_name, data.name, key))
    mlflow.set_tags({"optuna.study": study_name, "tuning.study_key": key})
    options = {"study_name": study_name, "key": key, "key_parts": parts, "data_sha256": data.sha256}
    if tune_cfg.objective == "safety":
        options["objectives"] = safety_objectives(tune_cfg)
        options["targets"] = TuningTargets.from_policy(load_policy(policy_path))
        mlflow.log_params({f"tune.target_{k}": v for k, v in dataclasses.asdict(options["targets"]).items()})
        mlflow.log_params({f"tune.probe_{k}": v for k, v in options["objectives"].probe.sizes().items()})
    return options


def safety_objectives(tune_cfg: TuneConfig) -> SafetyObjectives:
    """The per-trial measurement on the tune split: one batched generation, keyword ASR judge, refusal detector."""
    harmful, benign, lookalike = harmful_requests("tune"), benign_pairs("tune"), lookalike_requests("tune")
    probe = Probe.sample(harmful, benign, lookalike, per_kind=tune_cfg.probe_prompts, seed=tune_cfg.seed)
    # The same judges the evaluation uses: keyword ASR, and over-refusal by the refusal detector (not "no attack").
    return SafetyObjectives(
        probe,
        generate=generate,
        attack_success=keyword_attack_success,
        refused=is_refusal,
        max_new_tokens=tune_cfg.probe_tokens,
        # a refusal τ is chosen on the whole tune split: one forward pass per prompt
        decision_prompts=(tuple(r["prompt"] for r in harmful), tuple(r["prompt"] for r in [*benign, *lookalike])),
    )


def _preference(dpo_cfg: DpoConfig, train_rows: list[dict], loaded) -> dict:
    """The preference stage's options for `tune` (none when it is off): its config and pairs from the training rows,
    with the base model's own answers to the harmful requests as the rejected side where it complied (greedy, 48
    tokens, or a few more than `dpo_answer_tokens` when fewer are trained; cached by `distill_answers`; every rank
    computes the same ones)."""
    if dpo_cfg.dpo_steps == 0:
        return {}
    harmful = [r["prompt"] for r in train_rows if r.get("kind") == "refusal"]
    tokens = min(48, dpo_cfg.dpo_answer_tokens + 4) if dpo_cfg.dpo_answer_tokens else 48
    own = distill.distill_answers(loaded, harmful, max_new_tokens=tokens, trim=False) if harmful else {}
    complied = {prompt: answer for prompt, answer in own.items() if answer.strip() and not is_refusal(answer)}
    pairs = preference_pairs(train_rows, complied)
    if mlflow.active_run() is not None:
        counts = {f"dpo.pairs_{k}": v for k, v in composition(pairs).items()}
        mlflow.log_params({"dpo.pairs": len(pairs), "dpo.pairs_own_rejected": len(complied), **counts})
    return {"dpo_cfg": dpo_cfg, "pairs": pairs}


def _check_lineage(result: TuneResult, data_sha256: str, run_id: str) -> None:
    """The chosen trial was trained by this run, on this data: the tags written on the version say so."""
    if result.tune_run_id != run_id or result.data_sha256 != data_sha256:
        raise RuntimeError(
            f"trial {result.best_trial} was trained by run {result.tune_run_id} on data "
            f"{result.data_sha256[:12]}, not by this run {run_id} on {data_sha256[:12]}"
        )


def _load_base(run: RunConfig, precision: Precision):
    return load_model(
        run.base_model, precision=precision, trust_remote_code=run.trust_remote_code, verify_cache=run.verify_cache
    )


def _tune(loaded, train_rows, val_rows, train_cfg: TrainConfig, tune_cfg: TuneConfig, work: Path, **options):
    """The study on the loaded model: rank 0 (with the study's options) and the other ranks (without) alike."""
    return tune(loaded.model, loaded.tokenizer, train_rows, val_rows, train_cfg, tune_cfg, work_dir=work, **options)


def _follow(
    run: RunConfig,
    data_cfg: DataConfig,
    train_cfg: TrainConfig,
    tune_cfg: TuneConfig,
    dpo_cfg: DpoConfig,
    pruner,
    precision: Precision,
) -> None:
    """A rank other than 0: the same data, model and trials as rank 0, trained in lockstep; nothing is logged."""
    loaded = _load_base(run, precision)
    data = _dataset(data_cfg, train_cfg, loaded)
    train_rows, val_rows = data.split(data_cfg.val_fraction, data_cfg.seed, data_cfg.max_val_rows)
    with tempfile.TemporaryDirectory(prefix="safety-lab-") as work:
        options = _preference(dpo_cfg, train_rows, loaded)
        _tune(
            loaded,
            train_rows,
            val_rows,
            train_cfg,
            tune_cfg,
            Path(work),
            pruner=pruner,
            quiet=True,
            study_name="",
            **options,
        )
    print(
        f"[safety_lab] rank {distributed.rank()}/{distributed.world_size()}: trained {tune_cfg.n_trials} trials "
        f"in step with rank 0, which logs and registers",
        flush=True,
    )


def register_best(run: RunConfig, tune_cfg: TuneConfig, *, eval_options: dict | None = None) -> FinetuneResult:
    """Register the chosen trial of a (shared) study once: the step after several `register=false` workers finish."""
    check(bool(tune_cfg.study_name), "study_name", "register-best needs the study's name")
    timings = Timings()
    eval_cfg = _eval_config(run, eval_options)
    study = open_study(tune_cfg, tune_cfg.study_name, create=False)
    tune_cfg = dataclasses.replace(tune_cfg, objective="safety" if len(study.directions) > 1 else "loss")
    check(
        any(t.state.name == "COMPLETE" for t in study.trials),
        "study_name",
        f"study {tune_cfg.study_name!r} has no completed trial in {redact(tune_cfg.storage)}",
    )
    with tempfile.TemporaryDirectory(prefix="safety-lab-") as work:
        targets = TuningTargets.from_policy(load_policy(getattr(eval_cfg, "policy", None)))
        result = select(study, tune_cfg, Path(work), targets=targets)  # the same rule and result as tune()'s end
        worker = mlflow.get_run(
            result.tune_run_id or mlflow.get_run(result.best_run_id).data.tags["mlflow.parentRunId"]
        )
        model_name = run.model_name or worker.data.tags.get("model_name") or registry.default_model_name(run.base_model)
        existing = registry.find_versions(
            model_name, {"optuna.study": tune_cfg.study_name, "tuning.best_trial": str(result.best_trial)}
        )
        if existing:
            mv = existing[0]
            print(
                f"[safety_lab] study {tune_cfg.study_name!r} is already registered as {model_name} version {mv.version}"
            )
            return FinetuneResult(
                run_id=mv.run_id,
                model_name=model_name,
                version=str(mv.version),
                model_uri=f"models:/{model_name}/{mv.version}",
                best_value=result.best_value,
                best_params=result.best_params,
                timings=timings,
                status=mv.tags.get("safety.status", "unevaluated"),
            )
        with _open_run(run, f"register-best-{tune_cfg.study_name}", "register-best") as active:
            with timings.stage("model_load"):
                base = worker.data.params.get(
                    param_key(RunConfig, "base_model"), worker.data.tags.get("base_model", run.base_model)
                )
                # the workers' requested precision, decided for this machine (it may differ from theirs)
                precision = resolve_precision(worker.data.params.get(param_key(TrainConfig, "precision"), "auto"))
                loaded = load_model(base, precision=precision, trust_remote_code=run.trust_remote_code)
            _log_tuning(result, tune_cfg)
            out = FinetuneResult.tuned(active.info.run_id, model_name, timings, result)
            tags = {k: worker.data.params[k] for k in ("data.name", "data.rows") if k in worker.data.params}
            tags["data.sha256"] = result.data_sha256 or worker.data.params.get("data.sha256", "")
            published = publish(
                loaded, result, tags, run, model_name=model_name, run_id=active.info.run_id, timings=timings
            )
            loaded = result = None
            evaluation = _evaluate(published, eval_cfg, timings) if eval_cfg is not None else None
            timings.log()
    return out.registered(published, evaluation)


def _eval_config(run: RunConfig, eval_options: dict | None) -> EvalConfig | None:
    """The evaluation settings, checked (policy and input files included) before any training."""
    if not run.evaluate:
        return None
    cfg = EvalConfig(**(eval_options or {}))
    cfg.check_files()
    load_policy(cfg.policy)
    return cfg


def _log_tuning(result: TuneResult, tune_cfg: TuneConfig) -> None:
    mlflow.log_params({f"best_{k}": v for k, v in result.best_params.items()})
    mlflow.log_metrics(
        {
            "best_val_loss": result.best_value,
            "best_trial": result.best_trial,
            **{f"best_tune_{k}": float(v) for k, v in result.objectives.items()},
        }
    )
    mlflow.set_tags(
        {
            "optuna.study": result.study.study_name,
            "optuna.storage": redact(tune_cfg.storage),
            "best_trial_run_id": result.best_run_id,
            "tuning.selection": result.selection,
            "tuning.selection_reason": result.selection_reason[:4000],
        }
    )
    figures, skipped = plots.study_plots(result.study)
    if result.objective == "safety":
        rows = trial_table(result.study, result.candidates)
        mlflow.log_table(data={k: [r.get(k) for r in rows] for k in rows[0]}, artifact_file="tuning/trials.json")
        figures["pareto_front.png"] = plots.pareto_front_plot(
            result.study,
            chosen=result.best_trial,
            limits=result.targets.limits()[:2],
            title=f"Pareto front; * chosen: {result.selection}",
        )
    for name, figure in figures.items():
        mlflow.log_figure(figure, f"plots/{name}")
    mlflow.set_tags({f"plot.{name}": f"skipped: {why[:200]}" for name, why in skipped.items()})


def _evaluate(published: Published, eval_cfg, timings: Timings) -> Recorded:
    """Evaluate the new version with the model already in memory (the reloaded one the check just compared)."""
    with timings.stage("evaluation"):
        return evaluate_version(published.model_uri, eval_cfg, loaded=published.reloaded, timings=timings)
