"""One precision decision (device, weight dtype, autocast) from the request and the probed hardware: the loader,
the trainer and the evaluation use it, and the run's params say what they used."""

import json
from types import SimpleNamespace

import mlflow
import pytest
import torch

from safety_lab.cli import main
from safety_lab.config import TrainConfig
from safety_lab.evaluation import EvalConfig
from safety_lab.evaluations import evaluate_version
from safety_lab.models import base, resolve_precision
from safety_lab.training import sft_config

NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


class _Loaded(Exception):
    """Stops a command where the weights would load."""


def _hardware(monkeypatch, *, gpu: bool, bf16: bool) -> None:
    """Patch the probes `resolve_precision` reads: CUDA, its bf16 support, and oneDNN's bf16 on the CPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: bf16 and not gpu)


@pytest.fixture
def loads(monkeypatch) -> list[tuple[str, torch.dtype]]:
    """(device, dtype) of every weight load; the load itself raises `_Loaded`."""
    seen = []

    def load_hf(source, *, device, dtype, **kwargs):
        seen.append((device, dtype))
        raise _Loaded

    monkeypatch.setattr(base, "_load_hf", load_hf)
    return seen


def _trainer_args(monkeypatch, cfg: TrainConfig) -> SimpleNamespace:
    """The arguments `sft_config` gives TRL (recorded: building an SFTConfig for CUDA needs a real GPU)."""
    import trl

    monkeypatch.setattr(trl, "SFTConfig", lambda **kw: SimpleNamespace(**kw))
    return sft_config(cfg, "/tmp/unused", n_val=1)


def _finetune_to_the_load(tiny_model_dir, tmp_path, *flags: str) -> dict:
    """Run `finetune` until its model load; return the params its run logged."""
    argv = ["finetune", "--base-model", str(tiny_model_dir), "--data", "safe", "--limit", "16", "--evaluate", "false"]
    with pytest.raises(_Loaded):
        main([*argv, "--storage", f"sqlite:///{tmp_path / 'optuna.db'}", "--debug", *flags])
    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    return run.data.params


def test_fp32_on_a_bf16_gpu_loads_fp32_weights_and_trains_without_autocast(
    monkeypatch, tiny_model_dir, tmp_path, mlflow_store, loads
):
    _hardware(monkeypatch, gpu=True, bf16=True)
    params = _finetune_to_the_load(tiny_model_dir, tmp_path, "--precision", "fp32", "--device", "cuda")
    assert loads == [("cuda", torch.float32)]
    used = (params["precision.chosen"], params["precision.weights"], params["precision.autocast"])
    assert used == ("fp32", "fp32", "none")
    args = _trainer_args(monkeypatch, TrainConfig(precision="fp32", device="cuda"))
    assert (args.bf16, args.fp16, args.use_cpu) == (False, False, False)


def test_fp32_on_a_bf16_gpu_evaluates_fp32_weights(monkeypatch, tiny_model_dir, mlflow_store, loads):
    _hardware(monkeypatch, gpu=True, bf16=True)
    with pytest.raises(_Loaded):
        evaluate_version(str(tiny_model_dir), EvalConfig(suites="asr", precision="fp32", device="cuda"))
    with pytest.raises(_Loaded):
        evaluate_version(str(tiny_model_dir), EvalConfig(suites="asr", device="cuda"))
    assert loads == [("cuda", torch.float32), ("cuda", torch.bfloat16)]  # auto: the GPU's bf16


def test_auto_on_a_cpu_without_native_bf16_is_fp32_throughout(
    monkeypatch, tiny_model_dir, tmp_path, mlflow_store, loads
):
    _hardware(monkeypatch, gpu=False, bf16=False)
    params = _finetune_to_the_load(tiny_model_dir, tmp_path)
    assert loads == [("cpu", torch.float32)]
    assert (params["device"], params["precision.weights"], params["precision.autocast"]) == ("cpu", "fp32", "none")
    assert params["precision.bf16_native"] == "false" and params["precision.chosen"] == "fp32"
    args = _trainer_args(monkeypatch, TrainConfig())
    assert (args.bf16, args.fp16, args.use_cpu) == (False, False, True)


@pytest.mark.parametrize(
    "gpu, bf16, request_",
    [
        (False, False, "auto"),
        (False, True, "auto"),
        (False, False, "bf16"),
        (False, True, "fp32"),
        (True, True, "auto"),
        (True, True, "bf16"),
        (True, True, "fp32"),
        (True, False, "auto"),
        (True, False, "fp32"),
    ],
)
def test_what_is_logged_is_what_is_used(
    monkeypatch, tiny_model_dir, tmp_path, mlflow_store, loads, gpu, bf16, request_
):
    _hardware(monkeypatch, gpu=gpu, bf16=bf16)
    params = _finetune_to_the_load(tiny_model_dir, tmp_path, "--precision", request_)
    ((device, dtype),) = loads
    assert (params["device"], params["precision.weights"]) == (device, NAMES[dtype])
    args = _trainer_args(monkeypatch, TrainConfig(precision=request_))
    autocast = "bf16" if args.bf16 else "fp16" if args.fp16 else "none"
    assert params["precision.autocast"] == autocast and args.use_cpu == (device == "cpu")
    assert params["precision.chosen"] == (autocast if autocast != "none" else params["precision.weights"])
    decided = resolve_precision(request_, "auto")
    assert (decided.device, decided.weights) == (device, dtype)  # the evaluation's loader follows the same decision


def test_a_registered_version_reloads_with_the_precision_it_is_asked_for(monkeypatch, tiny_model_dir, tmp_path, loads):
    """The finetune's reload check (and the evaluation that reuses it) loads the version with the run's decision."""
    from safety_lab.registry import SafetyLabModel

    (tmp_path / "adapter_0").mkdir()
    lineage = tmp_path / "lineage.json"
    lineage.write_text(json.dumps({"base_model": str(tiny_model_dir), "adapters": ["adapter_0"]}))
    _hardware(monkeypatch, gpu=True, bf16=True)
    for config, expected in (({"precision": "fp32", "device": "cuda"}, torch.float32), ({}, torch.bfloat16)):
        with pytest.raises(_Loaded):
            SafetyLabModel().load_context(SimpleNamespace(artifacts={"lineage": str(lineage)}, model_config=config))
        assert loads.pop() == ("cuda", expected)
