"""Every benchmark runs in --quick mode and prints its figures (no assertion on time: speed lives in bench/)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
SCRIPTS = [
    "train_throughput.py",
    "generation.py",
    "loglik.py",
    "load.py",
    "end_to_end.py",
    "judge_agreement.py",
    "generalisation.py",
    "frozen_cache.py",
    "dpo_step.py",
    "form_shortcut.py",
    "eval_precision.py",
    "frozen_head.py",
    "step_changes.py",
]


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_runs_in_quick_mode(script, tmp_path):
    extra = []
    if script == "judge_agreement.py":
        reference = Path(os.environ.get("SAFETY_LAB_REFERENCE") or BENCH.parents[1] / "shared" / "reference")
        if not reference.is_dir():
            pytest.skip("the labelled completions (../shared/reference or SAFETY_LAB_REFERENCE) are not here")
        extra = ["--reference-dir", str(reference / "harmbench_llama_guard")]
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "SAFETY_LAB_BENCH_OUT": str(tmp_path / "out"),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    before = _files(BENCH)
    done = subprocess.run(
        [sys.executable, str(BENCH / script), "--quick", *extra],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,  # end_to_end --quick evaluates a real model and its base reference (with form_swap, ~800 answers)
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert any(ch.isdigit() for ch in done.stdout)
    assert _files(BENCH) <= before, "the bench wrote into the repository"


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if "__pycache__" not in p.parts}
