"""Concurrent moves of one version: retried tag writes, exact outcomes, and override records that commute."""

from __future__ import annotations

import json

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import BAD_REQUEST
from mlflow.tracking import MlflowClient

from safety_lab.cli import EXIT_MOVED_UNRECORDED, main
from safety_lab.errors import SafetyLabError
from safety_lab.registry import lifecycle, writes
from safety_lab.registry.audit import AUDIT_EXPERIMENT
from safety_lab.registry.lifecycle import RecordNotWritten, promote
from safety_lab.registry.overrides import override_history
from safety_lab.reporting.views import lineage_tree

# What a tracking server answers when two requests insert the same version tag at once (mlflow/mlflow#8442).
SQLITE_RACE = (
    "(sqlite3.IntegrityError) UNIQUE constraint failed: model_version_tags.key, model_version_tags.name, "
    "model_version_tags.version"
)
PG_RACE = 'duplicate key value violates unique constraint "model_version_tag_pk"'


class Flaky:
    """A real MlflowClient whose named writes fail with `error` the first `times` calls (None: every call)."""

    def __init__(self, fail: dict[str, int | None], error: str = SQLITE_RACE):
        self.client, self.fail, self.error, self.calls = MlflowClient(), dict(fail), error, {}

    def __getattr__(self, name):
        real = getattr(self.client, name)
        if name not in self.fail:
            return real

        def write(*args, **kwargs):
            self.calls[name] = self.calls.get(name, 0) + 1
            left = self.fail[name]
            if left is None or left > 0:
                self.fail[name] = None if left is None else left - 1
                raise MlflowException(self.error, BAD_REQUEST)
            return real(*args, **kwargs)

        return write


@pytest.fixture
def versions(mlflow_store, tmp_path, monkeypatch):
    """Model 'm' with unevaluated versions (the gate refuses them: every move here is forced); no backoff waits."""
    monkeypatch.setattr(writes.time, "sleep", lambda s: None)
    client = MlflowClient()
    (tmp_path / "src").mkdir()

    def add(name: str = "m") -> str:
        if not client.search_registered_models(f"name = '{name}'"):
            client.create_registered_model(name)
        return str(client.create_model_version(name, source=str(tmp_path / "src")).version)

    return add


def _use(monkeypatch, client) -> None:
    monkeypatch.setattr(lifecycle, "_client", lambda: client)


def _aliases(name: str = "m") -> dict[str, str]:
    return {a: str(v) for a, v in MlflowClient().get_registered_model(name).aliases.items()}


def _audit(run_id: str):
    return MlflowClient().get_run(run_id)


def _all_audit_runs():
    client = MlflowClient()
    return client.search_runs([client.get_experiment_by_name(AUDIT_EXPERIMENT).experiment_id])


@pytest.mark.parametrize("error", [SQLITE_RACE, PG_RACE])
def test_a_tag_write_that_loses_the_race_is_retried_and_the_move_completes(versions, monkeypatch, error):
    v = versions()
    flaky = Flaky({"set_model_version_tag": 1, "set_registered_model_alias": 1}, error)
    _use(monkeypatch, flaky)
    result = promote("m", version=v, stage="Staging", alias="champion", force=True, reason="r")
    assert flaky.calls == {"set_model_version_tag": 2, "set_registered_model_alias": 2}
    mv = MlflowClient().get_model_version("m", v)
    assert mv.current_stage == "Staging" and _aliases() == {"champion": v}
    (override,) = override_history(mv.tags)
    assert override["audit_run"] == result.run_id and override["target"] == "Staging @champion"
    assert _audit(result.run_id).info.status == "FINISHED"


def test_other_errors_are_not_retried():
    calls = []

    def write():
        calls.append(1)
        raise MlflowException("RESOURCE_DOES_NOT_EXIST: no such version", BAD_REQUEST)

    with pytest.raises(MlflowException):
        writes.retried(write, sleep=lambda s: None)
    assert len(calls) == 1
    assert not writes.is_conflict(ValueError(SQLITE_RACE))  # only MLflow's errors


def test_moved_but_override_not_written_says_exactly_that(versions, monkeypatch, capsys):
    v = versions()
    flaky = Flaky({"set_model_version_tag": None})
    _use(monkeypatch, flaky)
    code = main(["promote", "--model-name", "m", "--version", v, "--stage", "Staging", "--force", "--reason", "r"])
    err = capsys.readouterr().err.strip()
    assert code == EXIT_MOVED_UNRECORDED == 3
    assert flaky.calls["set_model_version_tag"] == writes.ATTEMPTS
    (run,) = _all_audit_runs()
    assert err == (
        f"error: record: m version {v} moved to Staging; the override record could not be written: "
        f"audit run {run.info.run_id} holds it ({SQLITE_RACE})"
    )
    assert "failed part-way" not in err
    assert MlflowClient().get_model_version("m", v).current_stage == "Staging"
    assert run.info.status == "FINISHED" and run.data.tags["outcome"] == err.removeprefix("error: record: ")
    assert json.loads(run.data.tags["safety.override"])["reason"] == "r"  # the audit run holds the override


def test_record_not_written_carries_the_outcome(versions, monkeypatch):
    v = versions()
    _use(monkeypatch, Flaky({"set_model_version_tag": None}))
    with pytest.raises(RecordNotWritten) as info:
        promote("m", version=v, alias="champion", force=True, reason="r")
    assert info.value.result.target == "@champion" and info.value.result.forced
    assert _aliases() == {"champion": v}


def test_a_move_that_reached_only_its_stage_fails_part_way_saying_so(versions, monkeypatch):
    v = versions()
    _use(monkeypatch, Flaky({"set_registered_model_alias": None}, "INTERNAL_ERROR: disk full"))
    with pytest.raises(SafetyLabError) as info:
        promote("m", version=v, stage="Staging", alias="champion", force=True, reason="r")
    (run,) = _all_audit_runs()
    assert str(info.value) == (
        f"registry: m version {v} -> Staging @champion failed part-way (audit run {run.info.run_id}): "
        "moved to Staging, not to @champion: INTERNAL_ERROR: disk full"
    )
    assert run.info.status == "FAILED"
    assert MlflowClient().get_model_version("m", v).current_stage == "Staging"


def test_a_move_that_reached_nothing_fails_part_way_saying_nothing_moved(versions, monkeypatch):
    v = versions()
    _use(monkeypatch, Flaky({"transition_model_version_stage": None}, "INTERNAL_ERROR: disk full"))
    with pytest.raises(SafetyLabError, match=r"failed part-way \(audit run \w+\): nothing moved: "):
        promote("m", version=v, stage="Staging", force=True, reason="r")
    (run,) = _all_audit_runs()
    assert run.info.status == "FAILED" and MlflowClient().get_model_version("m", v).current_stage == "None"


def test_a_write_that_committed_before_its_error_counts_as_moved(versions, monkeypatch):
    """The server applied the alias but the answer was lost: read back, it holds, so the move is done."""
    v = versions()
    real = MlflowClient()

    class LostAnswer(Flaky):
        def __getattr__(self, name):
            if name != "set_registered_model_alias":
                return getattr(real, name)

            def write(*args, **kwargs):
                real.set_registered_model_alias(*args, **kwargs)
                raise MlflowException("INTERNAL_ERROR: connection reset", BAD_REQUEST)

            return write

    _use(monkeypatch, LostAnswer({}))
    result = promote("m", version=v, alias="champion", force=True, reason="r")
    assert _audit(result.run_id).info.status == "FINISHED"
    assert override_history(real.get_model_version("m", v).tags)[0]["audit_run"] == result.run_id


def _interleaved(monkeypatch, name: str, order: list[dict]) -> None:
    """Every move resolves the version before any writes (what processes started at once see), then they run in
    `order`."""
    real_find, seen = lifecycle._find_version, {}

    def stale_find(client, model_name, version, from_alias):
        if (model_name, version) not in seen:
            seen[model_name, version] = real_find(client, model_name, version, from_alias)
        return seen[model_name, version]

    monkeypatch.setattr(lifecycle, "_find_version", stale_find)
    for kwargs in order:
        promote(name, version="1", force=True, **kwargs)
    monkeypatch.setattr(lifecycle, "_find_version", real_find)


def _state(name: str) -> tuple:
    client = MlflowClient()
    mv = client.get_model_version(name, "1")
    overrides = sorted((o["target"], o["reason"]) for o in override_history(mv.tags))
    return mv.current_stage, _aliases(name), overrides


def test_the_writes_of_two_moves_commute(versions, monkeypatch):
    """Two forced moves of one version, both resolved before either writes, in each order: the same end state, and
    neither override is lost (one slot plus a read-modify-write history keeps only the later one)."""
    versions("m"), versions("n")
    moves = [{"stage": "Staging", "reason": "to staging"}, {"alias": "champion", "reason": "to champion"}]
    _interleaved(monkeypatch, "m", moves)
    _interleaved(monkeypatch, "n", moves[::-1])
    assert (
        _state("m")
        == _state("n")
        == (
            "Staging",
            {"champion": "1"},
            [("@champion", "to champion"), ("Staging", "to staging")],
        )
    )


def test_lineage_lists_every_override(versions, monkeypatch):
    v = versions()
    first = promote("m", version=v, stage="Staging", force=True, reason="first")
    second = promote("m", version=v, alias="champion", force=True, reason="second")
    lines = lineage_tree("m").splitlines()
    assert lines[1].startswith(f"v{v}  ") and lines[1].endswith("[Staging] @champion")
    assert lines[2].startswith("    override: ") and lines[2].endswith(f"reason: first audit run {first.run_id}")
    assert "-> Staging (was unevaluated)" in lines[2]
    assert lines[3].endswith(f"reason: second audit run {second.run_id}") and "-> @champion" in lines[3]
