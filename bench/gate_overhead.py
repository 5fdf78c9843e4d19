"""What the safety-gate server app adds to a request that does not touch the registry.

Starts two tracking servers on the same kind of empty SQLite store, `mlflow server` and `mlflow server --app-name
safety-gate`, and times the same non-registry call (`GET experiments/get?experiment_id=0`) on each, alternating
one call to each so that both see the same machine load. Prints the median latency of each and their difference
(target: the gate adds at most 5 ms to the median). `--quick` makes fewer calls.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
from pathlib import Path

import _common as C

ROOT = Path(__file__).resolve().parents[1]
MLFLOW = str(Path(sys.executable).parent / "mlflow") if (Path(sys.executable).parent / "mlflow").exists() else "mlflow"
CALL = "/api/2.0/mlflow/experiments/get?experiment_id=0"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(tmp: Path) -> dict[str, str]:
    """This checkout first on PYTHONPATH; the entry point from a one-file distribution when it is not installed."""
    paths = [str(ROOT)]
    if "safety-gate" not in {e.name for e in importlib.metadata.entry_points(group="mlflow.app")}:
        value = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["mlflow.app"]
        dist = tmp / "shim" / "safety_lab_gate_shim-0.dist-info"
        dist.mkdir(parents=True)
        (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: safety-lab-gate-shim\nVersion: 0\n")
        (dist / "entry_points.txt").write_text(f"[mlflow.app]\nsafety-gate = {value['safety-gate']}\n")
        paths.append(str(tmp / "shim"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    return {**env, "PYTHONPATH": os.pathsep.join(paths), "MLFLOW_DISABLE_TELEMETRY": "true"}


def _start(root: Path, app: list[str], env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    root.mkdir(parents=True)
    port = _port()
    cmd = [MLFLOW, "server", *app, "--host", "127.0.0.1", "--port", str(port), "-w", "1"]
    cmd += ["--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "a")]
    with open(root / "server.log", "ab") as log:
        proc = subprocess.Popen(cmd, cwd=root, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return proc, f"http://127.0.0.1:{port}"


def _wait(proc: subprocess.Popen, url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"a server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"{url} not healthy after {timeout:.0f}s")


def _call(url: str) -> float:
    start = time.perf_counter()
    with urllib.request.urlopen(url + CALL, timeout=30) as resp:
        resp.read()
    return (time.perf_counter() - start) * 1000


def _hook_us(n: int = 100_000) -> float:
    """What the gate's before-request hook does for a request it does not gate: one path match (microseconds)."""
    from safety_lab.server.routes import action_of  # bench/_common put the checkout on sys.path

    start = time.perf_counter()
    for _ in range(n):
        action_of(CALL.split("?")[0], "GET")
        action_of("/api/2.0/mlflow/runs/search", "POST")
    return (time.perf_counter() - start) / (2 * n) * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=400, help="calls to each server (after 20 warm-up calls)")
    parser.add_argument("--quick", action="store_true", help="40 calls each")
    parser.add_argument("--start-timeout", type=float, default=600.0, help="seconds for each server to start")
    args = parser.parse_args(argv)
    calls = 40 if args.quick else args.calls
    tmp = Path(tempfile.mkdtemp(prefix="gate-bench-"))
    env = _env(tmp)
    servers = {
        "plain": _start(tmp / "plain", [], env),
        "gated": _start(tmp / "gated", ["--app-name", "safety-gate"], env),
    }
    try:
        for proc, url in servers.values():
            _wait(proc, url, args.start_timeout)
        times: dict[str, list[float]] = {name: [] for name in servers}
        for i in range(20 + calls):
            for name, (_, url) in servers.items() if i % 2 == 0 else reversed(servers.items()):
                ms = _call(url)
                if i >= 20:
                    times[name].append(ms)
        med = {name: statistics.median(t) for name, t in times.items()}
        print(f"non-registry call {CALL}, {calls} calls each, alternating")
        for name, t in times.items():
            q = statistics.quantiles(t, n=10)
            print(f"  {name:6s} median {med[name]:.2f} ms  (p10 {q[0]:.2f}, p90 {q[-1]:.2f})")
        added = med["gated"] - med["plain"]
        print(f"gate adds {added:+.2f} ms to the median (target <= 5 ms): {'PASS' if added <= 5 else 'MISS'}")
        hook_us = _hook_us()
        print(f"in process, the gate's look at a non-registry request takes {hook_us:.2f} us")
        C.save(
            "gate_overhead",
            args.quick,
            {
                "calls": calls,
                "median_plain_ms": med["plain"],
                "median_gated_ms": med["gated"],
                "added_ms": added,
                "hook_us": hook_us,
                "target_ms": 5.0,
                "pass": added <= 5,
            },
        )
    finally:
        for proc, _ in servers.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
