"""Shared bits for the bench scripts: import path, machine facts, PASS/MISS, fp32 matmul peak, results.jsonl."""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(os.environ.get("SAFETY_LAB_BENCH_OUT") or ROOT / "bench" / "out")  # the test session points it at a tmp dir
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from safety_lab.flops import cpu_model, probe_peak  # noqa: E402

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def machine() -> dict:
    import torch

    return {
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu": cpu_model(),
        "bf16_native": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def matmul_peak_gflops(n: int = 2048, seconds: float = 2.0, dtype=None) -> float:
    """torch.mm peak (GFLOP/s, fp32 unless dtype): the best of several timed repeats of an n x n x n product."""
    import torch

    return probe_peak("bf16" if dtype == torch.bfloat16 else "fp32", n=n, seconds=seconds)


def save(bench: str, quick: bool, results: dict) -> None:
    """Append one JSON line to bench/out/results.jsonl (git-ignored; $SAFETY_LAB_BENCH_OUT moves it)."""
    OUT.mkdir(parents=True, exist_ok=True)
    line = {"bench": bench, "quick": quick, **machine(), **results}
    with open(OUT / "results.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")
    print(f"[bench] appended to {OUT / 'results.jsonl'}")


def quiet() -> None:
    """Progress bars and library warnings off: the figures are what matters here."""
    import warnings

    warnings.filterwarnings("ignore")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        import datasets

        datasets.disable_progress_bars()
    except ImportError:
        pass


quiet()
