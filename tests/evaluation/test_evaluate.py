"""evaluate() is pure (no MLflow), compares item by item, and caches reference results safely."""

from __future__ import annotations

import json

import mlflow
import pytest

from safety_lab.evaluation import EvalConfig, Reference, SuiteResult, cached_suites, compare, evaluate
from safety_lab.models import load_model


def _result(metric: str, value: float, outcomes: dict[str, bool]) -> dict[str, SuiteResult]:
    return {"asr": SuiteResult({metric: value, "asr_n": float(len(outcomes))}, paired={metric: outcomes})}


def test_compare_pairs_items_by_id_and_names_every_statistic():
    current = _result("asr", 0.5, {"a": True, "b": True, "c": False, "d": False})
    reference = _result("asr", 0.25, {"a": True, "b": False, "c": False, "d": False, "e": True})
    out = compare(current, reference)
    assert out["asr_delta"] == pytest.approx(0.25)
    assert "asr_n_delta" not in out  # counts are not compared
    with_bounds = {"asr": SuiteResult({**current["asr"].metrics, "asr_ci_low": 0.2, "asr_ci_high": 0.8})}
    ref_bounds = {"asr": SuiteResult({**reference["asr"].metrics, "asr_ci_low": 0.1, "asr_ci_high": 0.5})}
    assert not [k for k in compare(with_bounds, ref_bounds) if "_ci_" in k]  # nor the bounds of an interval
    assert out["asr_delta_ci_low"] < out["asr_delta"] < out["asr_delta_ci_high"]
    assert 0 < out["asr_delta_p"] <= 1  # one discordant pair: exact McNemar p = 1.0
    vs_base = compare(current, reference, suffix="_vs_base")
    assert set(vs_base) == {k.replace("_delta", "_delta_vs_base") for k in out}


def test_evaluate_is_pure_and_compares_with_reference(tiny_model_dir, mlflow_store, tmp_path, monkeypatch):
    monkeypatch.setenv("SAFETY_LAB_CACHE", str(tmp_path / "cache"))
    cfg = EvalConfig(suites="asr,calibration", limit=3, max_new_tokens=4)
    loaded = load_model(str(tiny_model_dir))
    ref = Reference(str(tiny_model_dir), "tiny")
    report = evaluate(loaded, cfg, reference=ref, base=ref)
    assert mlflow.active_run() is None
    assert mlflow.search_runs(search_all_experiments=True).empty  # nothing was recorded
    assert report.metrics["asr_n"] == 3
    # the same model against itself: every paired difference is zero
    assert report.comparisons["asr_delta"] == 0 and report.comparisons["mc_accuracy_delta_vs_base"] == 0
    assert report.reference_metrics == report.base_metrics == report.metrics
    cached = list((tmp_path / "cache" / "eval").glob("*.json"))
    assert len(cached) == 1  # the base reference was computed once and reused for both comparisons


def test_corrupt_reference_cache_is_recomputed(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SAFETY_LAB_CACHE", str(tmp_path / "cache"))
    cfg = EvalConfig(suites="calibration", limit=2)
    ref = Reference(str(tiny_model_dir), "tiny")
    first = cached_suites(ref, cfg)
    (path,) = (tmp_path / "cache" / "eval").glob("*.json")
    path.write_text("{not json")
    again = cached_suites(ref, cfg)
    assert again["calibration"].metrics == first["calibration"].metrics
    assert json.loads(path.read_text())["calibration"]["metrics"] == first["calibration"].metrics


def test_the_cache_key_covers_every_module_an_evaluation_loads():
    """The decoder (models/generation.py) shapes every answer: a change to it, or to any module the evaluation
    imports, must change the cache key, so a cached reference is never served from older code."""
    import subprocess
    import sys

    from safety_lab.evaluation import result_sources

    sources = {p.resolve() for p in result_sources()}
    assert any(p.as_posix().endswith("safety_lab/models/generation.py") for p in sources)
    code = (
        "import sys, safety_lab.evaluation, safety_lab.evaluation.suites, safety_lab.models.generation\n"
        "print('\\n'.join(m.__file__ for n, m in list(sys.modules.items()) if n.startswith('safety_lab')))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    from pathlib import Path

    missing = sorted(str(p) for p in {Path(f).resolve() for f in loaded} - sources)
    assert not missing, f"modules the evaluation loads but its cache key ignores: {missing}"


def test_a_cpu_with_native_bf16_evaluates_in_bf16_weights_and_one_without_in_fp32(monkeypatch):
    import torch

    for native, weights in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda native=native: native)
        assert EvalConfig(device="cpu").resolved_precision().weights == weights
        assert EvalConfig(device="cpu", precision="fp32").resolved_precision().weights == torch.float32
    assert EvalConfig(device="cpu", precision="bf16").resolved_precision().weights == torch.float32  # emulated


def test_a_model_cast_for_evaluation_answers_as_one_loaded_in_that_dtype(tiny_model_dir, monkeypatch):
    import torch

    from safety_lab.models import to_precision

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    precision = EvalConfig(device="cpu").resolved_precision()
    cast = to_precision(load_model(str(tiny_model_dir)), precision)
    fresh = load_model(str(tiny_model_dir), precision=precision)
    assert cast.model.dtype == fresh.model.dtype == torch.bfloat16 and cast.precision is precision
    ids = torch.tensor([[1, 5, 9, 30, 2]])
    with torch.inference_mode():
        assert torch.equal(cast.model(input_ids=ids).logits, fresh.model(input_ids=ids).logits)


def test_results_in_different_dtypes_are_not_compared_and_the_report_tags_each_side():
    from safety_lab.errors import SafetyLabError
    from safety_lab.evaluation import EvalReport

    current, reference = _result("asr", 0.5, {"a": True}), _result("asr", 0.5, {"a": True})
    current["asr"].weights, reference["asr"].weights = "bf16", "fp32"
    with pytest.raises(SafetyLabError, match="precision: suite asr ran in bf16 but its reference in fp32"):
        compare(current, reference)
    reference["asr"].weights = "bf16"
    assert compare(current, reference)["asr_delta"] == 0
    report = EvalReport("m", current, reference_uri="base", reference_suites=reference, base_suites=reference)
    assert report.weights_tags() == {
        "safety.weights": "bf16",
        "safety.reference_weights": "bf16",
        "safety.base_weights": "bf16",
    }
