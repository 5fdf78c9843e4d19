"""End to end: `make run`'s job (`python -m safety_lab finetune --data safe`, defaults) in a scratch folder.

    python bench/end_to_end.py [--quick] [--fresh-cache] [--keep]

Runs the finetune command in a temporary working directory with its own MLflow store (sqlite:///<tmp>/mlflow.db)
and Optuna store (sqlite:///optuna.db in that cwd), so nothing of the repository's state is read or written.
Defaults = `make run` (4 trials x 8 steps, full evaluation); --quick = --n-trials 1 --max-steps 2 --limit 16
--eval-limit 8. `make run` goes through `mlflow run . -e finetune --env-manager local`, which calls the same
library code (`python -m safety_lab finetune` -> safety_lab.cli); the MLflow project launcher itself is left out.

--fresh-cache points SAFETY_LAB_CACHE at an empty temporary folder: the run then also converts the GGUF and
evaluates the base model for reference (a first run on a new machine). Without it the real cache is used, where
the base model's reference evaluation is normally already cached.

Reports wall time, peak RSS of the child (getrusage(RUSAGE_CHILDREN).ru_maxrss), and the finetune run's timing.*
metrics from MLflow (stages nest: tuning includes log_model; evaluation includes eval_*).
Target: <= 10 min (stretch 5 min).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import _common as C

NESTED = {
    "log_model": "tuning",
    "eval_asr": "evaluation",
    "eval_calibration": "evaluation",
    "eval_drift": "evaluation",
    "eval_reference": "evaluation",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="--n-trials 1 --max-steps 2 --limit 16 --eval-limit 8")
    parser.add_argument("--fresh-cache", action="store_true", help="empty SAFETY_LAB_CACHE (GGUF conversion included)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (its path is printed)")
    args = parser.parse_args()

    print("machine:", C.machine())
    work = tempfile.mkdtemp(prefix="bench-e2e-")
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{work}/mlflow.db",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": str(C.ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    if args.fresh_cache:
        env["SAFETY_LAB_CACHE"] = os.path.join(work, "cache")
    command = [sys.executable, "-m", "safety_lab", "finetune", "--data", "safe"]
    if args.quick:
        command += ["--n-trials", "1", "--max-steps", "2", "--limit", "16", "--eval-limit", "8"]
    print("$", " ".join(command[1:]), f"  (cwd {work})")

    start = time.perf_counter()
    proc = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    peak_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
        raise SystemExit(f"finetune failed with exit code {proc.returncode}")
    print("\n".join(line for line in proc.stdout.splitlines() if line.startswith(("[safety_lab]", "models:/"))))

    import mlflow

    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    runs = mlflow.search_runs(
        experiment_names=["safety_lab"], filter_string="tags.`safety_lab.job` = 'finetune'", output_format="list"
    )
    timings = {k.split(".", 1)[1]: v for k, v in runs[0].data.metrics.items() if k.startswith("timing.")}
    top = sum(v for k, v in timings.items() if k not in NESTED)

    print(f"\nwall {wall:.1f} s ({wall / 60:.2f} min), peak RSS {peak_rss_mb:.0f} MB")
    for name, secs in timings.items():
        if name in NESTED:
            continue
        print(f"  {name:18s} {secs:7.1f} s  {secs / wall:6.1%}")
        for sub, parent in NESTED.items():
            if parent == name and sub in timings:
                print(f"    {sub:16s} {timings[sub]:7.1f} s  {timings[sub] / wall:6.1%}")
    print(
        f"  {'(outside stages)':18s} {wall - top:7.1f} s  {(wall - top) / wall:6.1%}  "
        "(interpreter start, imports, MLflow setup)"
    )
    print(f"{C.verdict(wall <= 600)}  {wall / 60:.2f} min (target <= 10 min; stretch 5 min: {C.verdict(wall <= 300)})")

    if args.keep:
        print("kept", work)
    else:
        shutil.rmtree(work, ignore_errors=True)
    C.save(
        "end_to_end",
        args.quick,
        {
            "command": command[1:],
            "fresh_cache": args.fresh_cache,
            "wall_s": wall,
            "peak_rss_mb": peak_rss_mb,
            "timings": timings,
            "outside_stages_s": wall - top,
            "pass": {"10min": wall <= 600, "5min": wall <= 300},
        },
    )


if __name__ == "__main__":
    main()
