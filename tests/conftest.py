"""Shared fixtures: a tiny random Llama with the real SmolLM2 tokenizer, and a private MLflow store per test.

The session never writes into the repository or the user's cache: SAFETY_LAB_CACHE and the bench output folder
point at a temporary folder (the converted default model is linked in read-only from the real cache when it is
there), and the summary names every file the tests left in the checkout and every skip with its reason.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import tempfile
from collections import Counter
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
# The harmless reference files, vendored with their source and licence (tests/fixtures/reference/README.md).
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "reference"
# The Llama Guard completions hold harmful text: read in place only, never copied into the repository.
REFERENCE = Path(os.environ.get("SAFETY_LAB_REFERENCE") or ROOT.parent / "shared" / "reference")
LLAMA_GUARD = REFERENCE / "harmbench_llama_guard"
_LLAMA_GUARD_SKIPS = ("harmbench_llama_guard", "Llama Guard", "labelled completions")  # in the skip reasons
_SKIP_IGNORED = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache"}


# The full-pipeline layer (subprocess runs, multi-process launches, GGUF conversion, every bench script) is marked
# `slow`: `make test-fast` leaves it out. Listing a test file or test id here is the only edit a new one needs.
SLOW = (
    "tests/test_bench.py",
    "tests/test_experiment.py",
    "tests/test_finetune.py",
    "tests/faults/test_interrupt.py",
    "tests/faults/test_concurrency.py",
    "tests/team/test_ddp.py::test_accelerate_ddp_finetune_matches_one_process",
    "tests/team/test_ddp.py::test_batch_size_must_split_over_the_processes",
    "tests/team/test_ddp.py::test_a_rank_killed_mid_trial_fails_the_run_and_registers_nothing",
    "tests/faults/test_security.py::test_a_corrupt_model_cache_is_detected_and_rebuilt",
)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.nodeid.startswith(SLOW):
            item.add_marker(pytest.mark.slow)


def _checkout_files() -> dict[str, float]:
    """Every file of the checkout with its mtime (the virtualenv and caches aside)."""
    files = {}
    for folder, dirs, names in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in _SKIP_IGNORED and not d.endswith(".egg-info")]
        for name in names:
            path = os.path.join(folder, name)
            try:
                files[os.path.relpath(path, ROOT)] = os.stat(path).st_mtime
            except OSError:
                continue
    return files


def _session_cache(real: Path, scratch: Path) -> None:
    """Link the converted default model of the real cache into the session's cache (read only: links, no copy)."""
    from safety_lab.models.base import _MANIFEST

    model = real / "smollm2-135m-instruct"
    if not (model / _MANIFEST).is_file():  # then converted into the scratch cache, never into the real one
        return  # (links to a broken copy are caught by the checksums on first use and replaced in the scratch cache)
    (scratch / model.name).mkdir(parents=True)
    for path in model.iterdir():
        if path.is_file():
            (scratch / model.name / path.name).symlink_to(path)


def pytest_configure(config):
    from safety_lab.models import cache_dir

    scratch = Path(tempfile.mkdtemp(prefix="safety-lab-tests-"))
    config._safety_lab_scratch = scratch
    config._safety_lab_files = _checkout_files()
    _session_cache(cache_dir(), scratch / "cache")
    os.environ["SAFETY_LAB_CACHE"] = str(scratch / "cache")  # inherited by the subprocesses tests start
    os.environ["SAFETY_LAB_BENCH_OUT"] = str(scratch / "bench-out")


def pytest_unconfigure(config):
    scratch = getattr(config, "_safety_lab_scratch", None)
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Loud lines: what was skipped and why (nothing is installed to avoid it); files written into the checkout."""
    reasons = Counter()
    for report in terminalreporter.stats.get("skipped", []):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reasons[reason.removeprefix("Skipped: ")] += 1
    llama_guard_skips = sum(n for r, n in reasons.items() if any(k in r for k in _LLAMA_GUARD_SKIPS))
    if llama_guard_skips:
        terminalreporter.write_sep(
            "!",
            f"{llama_guard_skips} judge-agreement tests did not run: no Llama Guard completions at {LLAMA_GUARD} "
            "(set SAFETY_LAB_REFERENCE: read in place, never vendored)",
            yellow=True,
            bold=True,
        )
    if reasons:
        terminalreporter.write_sep("-", f"{sum(reasons.values())} skipped: what this machine lacks", yellow=True)
        for reason, n in reasons.most_common():
            terminalreporter.write_line(f"{n:4d} x {reason}")
    before = getattr(config, "_safety_lab_files", None)
    if before is not None:
        after = _checkout_files()
        written = sorted(p for p, mtime in after.items() if before.get(p) != mtime)
        if written:
            terminalreporter.write_sep("!", "tests wrote into the checkout (use tmp_path)", red=True, bold=True)
            for path in written[:20]:
                terminalreporter.write_line(f"  {path}")


@pytest.fixture(scope="session")
def reference_fixtures() -> Path:
    """The vendored harmless reference files (TriviaQA items and answers, HarmBench behaviours)."""
    return FIXTURES


@pytest.fixture(scope="session")
def llama_guard_dir() -> Path:
    """The Llama Guard-labelled completions, read in place; the test is skipped (loudly) where they are absent."""
    if not LLAMA_GUARD.is_dir():
        pytest.skip(
            f"Llama Guard completions not found at {LLAMA_GUARD} (harmful text: read in place only; "
            "set SAFETY_LAB_REFERENCE)"
        )
    return LLAMA_GUARD


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer random Llama (hidden 64) saved with the real SmolLM2 tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from safety_lab.models import ensure_default_model

    tokenizer = AutoTokenizer.from_pretrained(ensure_default_model())
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def _empty_mlflow_db(tmp_path_factory) -> Path:
    """An empty tracking database with MLflow's schema: copying it takes milliseconds, migrating one takes seconds."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    folder = tmp_path_factory.mktemp("mlflow-empty")
    store = SqlAlchemyStore(f"sqlite:///{folder / 'mlflow.db'}", str(folder / "mlruns"))
    store.engine.dispose()
    return folder / "mlflow.db"


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch, _empty_mlflow_db):
    """A fresh SQLite tracking store and artifact root for one test; returns the tracking URI."""
    import mlflow

    db = tmp_path / "mlflow.db"
    shutil.copyfile(_empty_mlflow_db, db)
    with contextlib.closing(sqlite3.connect(db)) as con, con:  # the Default experiment's artifacts: this test's
        con.execute(
            "UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0", (str(tmp_path / "mlruns" / "0"),)
        )
    uri = f"sqlite:///{db}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("tests")  # never inherit an experiment id from another test's store
    yield uri
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.tracking.fluent._active_experiment_id = None
    mlflow.set_tracking_uri(None)
