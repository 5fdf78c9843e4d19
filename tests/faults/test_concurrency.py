"""Two processes at once: two finetunes against one store, and two model-cache conversions."""

import json
import os
import subprocess
import sys

from mlflow.tracking import MlflowClient


def test_two_finetunes_at_once_give_two_complete_versions(tiny_model_dir, mlflow_store, tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_store}
    args = [
        sys.executable,
        "-m",
        "safety_lab",
        "finetune",
        "--base-model",
        str(tiny_model_dir),
        "--data",
        "harmful",
        "--limit",
        "8",
        "--batch-size",
        "4",
        "--max-steps",
        "1",
        "--n-trials",
        "1",
        "--model-name",
        "twin",
        "--evaluate",
        "false",
    ]
    procs = [
        subprocess.Popen(
            args + ["--storage", f"sqlite:///{tmp_path}/optuna-{i}.db"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-1500:]
    versions = MlflowClient().search_model_versions("name='twin'")
    assert sorted(int(v.version) for v in versions) == [1, 2]
    runs = {v.tags["training.run_id"] for v in versions}
    assert len(runs) == 2
    for v in versions:
        assert {"data.sha256", "tuning.best_value", "safety.status"} <= set(v.tags)
        assert v.tags["safety.status"] == "unevaluated"


def test_two_processes_converting_the_model_cache_at_once_leave_a_valid_cache(tmp_path):
    env = {**os.environ, "SAFETY_LAB_CACHE": str(tmp_path / "cache")}
    code = (
        "from safety_lab.models.base import ensure_default_model, _cache_is_valid; "
        "p = ensure_default_model(); print(_cache_is_valid(p))"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-800:] for _, e in outs]
    assert all(o.strip().endswith("True") for o, _ in outs)
    target = tmp_path / "cache" / "smollm2-135m-instruct"
    manifest = json.loads((target / "safety_lab_manifest.json").read_text())
    assert "model.safetensors" in manifest["files"]
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".convert-")]
