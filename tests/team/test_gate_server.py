"""`mlflow server --app-name safety-gate`: the promotion gate inside the tracking server, whatever the client.

Each test talks to a REAL gated server (SQLite backend, a free port) through `requests` and `MlflowClient`. The
versions' evidence is recorded by the real recorder (`evaluations.evaluate_version`) over REST, with the suites replaced
by fixed measurements, so the recorder's own writes pass through the gate too. When the package's entry point is
not installed in this environment (an editable install made before it was added), the server finds it through a
one-file distribution on PYTHONPATH that declares the very entry point pyproject.toml declares.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import re
import secrets
import tomllib
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
import requests
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from safety_lab import evaluations
from safety_lab.evaluation import EvalConfig, EvalReport, SuiteResult
from safety_lab.registry.audit import AUDIT_EXPERIMENT
from safety_lab.registry.overrides import override_history

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parents[2]
MEASURED = {  # what the suites "measure" for each status under the packaged policy (ASR max 0.20)
    "pass": {"asr": 0.07, "asr_ci_low": 0.03, "asr_ci_high": 0.16, "asr_n": 120.0},
    "fail": {"asr": 0.91, "asr_ci_low": 0.82, "asr_ci_high": 0.96, "asr_n": 120.0},
}
for _m in MEASURED.values():  # every other rule of the packaged policy measured, on enough items, within its limit
    _m.update({f"over_refusal_rate{form}": 0.04 for form in ("", "_question", "_instruction")})
    _m.update({n: 260.0 for n in ("over_refusal_n", "over_refusal_rate_question_n", "over_refusal_rate_instruction_n")})
    _m.update(non_answer_rate=0.02, non_answer_n=120.0, asr_delta=0.0, asr_delta_p=1.0)
    _m.update({f"{m}_delta{ref}": 0.0 for m in ("drift_accuracy_false_info",) for ref in ("", "_vs_base")})
    _m.update({f"{m}_delta_vs_base_ci_low": -0.01 for m in ("mc_accuracy", "drift_accuracy_base")})
    _m.update({f"smooth_ece_delta{ref}_ci_high": 0.02 for ref in ("", "_vs_base")})
ADMIN, APPROVER, EDITOR, READER, RECORDER = "admin", "alice", "bob", "carol", "eval-bot"


def entry_point_value() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["mlflow.app"]["safety-gate"]


def server_env(tmp: Path, config: str, **extra: str) -> dict[str, str]:
    """PYTHONPATH: this checkout first, then (if needed) a distribution declaring the package's entry point."""
    paths = [str(ROOT)]
    if "safety-gate" not in {e.name for e in importlib.metadata.entry_points(group="mlflow.app")}:
        dist = tmp / "shim" / "safety_lab_gate_shim-0.dist-info"
        dist.mkdir(parents=True, exist_ok=True)
        (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: safety-lab-gate-shim\nVersion: 0\n")
        (dist / "entry_points.txt").write_text(f"[mlflow.app]\nsafety-gate = {entry_point_value()}\n")
        paths.append(str(tmp / "shim"))
    (tmp / "gate.yaml").write_text(config)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    return {**env, "PYTHONPATH": os.pathsep.join(paths), "SAFETY_LAB_GATE_CONFIG": str(tmp / "gate.yaml"), **extra}


def start_gated(team, root: Path, config: str, **extra: str):
    root.mkdir(parents=True, exist_ok=True)
    env = server_env(root, config, **extra)
    return team.start_server(root, args=("--app-name", "safety-gate"), env=env, timeout=600)


@pytest.fixture(scope="module")
def gated(team, tmp_path_factory):
    server = start_gated(team, tmp_path_factory.mktemp("gated"), 'environments: {"prod-*": Production}\n')
    yield server
    team.stop_server(server)


@pytest.fixture
def measured(monkeypatch):
    """The suites return MEASURED[...] per model URI; the recorder around them is the real one."""
    by_uri: dict[str, dict] = {}

    def fake_evaluate(loaded, cfg, *, reference=None, base=None, timings=None):
        return EvalReport(model_uri=loaded.spec, suites={"asr": SuiteResult(dict(by_uri[loaded.spec]))})

    monkeypatch.setattr(evaluations, "evaluate", fake_evaluate)
    monkeypatch.setattr(evaluations, "load_model", lambda spec, **kw: SimpleNamespace(spec=spec))
    monkeypatch.setattr(evaluations, "_log_card", lambda *a, **k: None)
    return by_uri


def add_version(client: MlflowClient, name: str, status: str, measured: dict) -> str:
    """A new version of `name`, evaluated by the recorder through the server so that its status is `status`."""
    with contextlib.suppress(MlflowException):
        client.create_registered_model(name)
    run = client.create_run(mlflow.set_experiment("gate-tests").experiment_id)
    client.set_terminated(run.info.run_id)
    mv = client.create_model_version(
        name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id, tags={"safety.status": "unevaluated"}
    )
    uri = f"models:/{name}/{mv.version}"
    measured[uri] = MEASURED[status]
    assert evaluations.evaluate_version(uri, EvalConfig(suites="asr")).status == status
    assert client.get_model_version(name, mv.version).tags["safety.status"] == status
    return str(mv.version)


def post(url: str, endpoint: str, body: dict, *, api: str = "api", method: str = "POST", auth=None):
    return requests.request(method, f"{url}/{api}/2.0/mlflow/{endpoint}", json=body, auth=auth, timeout=60)


def refused(resp, *words: str) -> str:
    assert resp.status_code == 403, resp.text
    body = resp.json()
    assert body["error_code"] == "PERMISSION_DENIED" and body["message"].startswith("safety gate: ")
    assert "\n" not in body["message"] and all(w in body["message"] for w in words), body["message"]
    return body["message"]


def audit_runs(client: MlflowClient, kind: str) -> list:
    exp = client.get_experiment_by_name(AUDIT_EXPERIMENT)
    runs = [] if exp is None else client.search_runs([exp.experiment_id], max_results=500)
    return [r for r in runs if r.data.tags.get("safety_lab.audit") == kind]


# --------------------------------------------------------------------------- without authentication


def test_a_fail_version_cannot_move_be_copied_aliased_or_relabelled(gated, team, tmp_path, measured):
    with team.pointed_at(gated.url, tmp_path):
        client = MlflowClient()
        v = add_version(client, "gm", "fail", measured)
        for api in ("api", "ajax-api"):  # the REST API and the UI's endpoints
            body = {"name": "gm", "version": v, "stage": "Production", "archive_existing_versions": False}
            refused(
                post(gated.url, "model-versions/transition-stage", body, api=api), "is 'fail'", "Production needs pass"
            )
            body = {"name": "gm", "alias": "champion", "version": v}
            refused(post(gated.url, "registered-models/alias", body, api=api), "@champion needs pass")
            body = {"name": "gm", "version": v, "key": "safety.status", "value": "pass"}
            refused(post(gated.url, "model-versions/set-tag", body, api=api), "safety.status")
            body = {"name": "prod-gm", "source": f"models:/gm/{v}"}
            post(gated.url, "registered-models/create", {"name": "prod-gm"}, api=api)
            refused(post(gated.url, "model-versions/create", body, api=api), "copy into 'prod-gm'", "needs pass")
        for attempt in (
            lambda: client.transition_model_version_stage("gm", v, "Production"),
            lambda: client.set_registered_model_alias("gm", "champion", v),
            lambda: client.set_model_version_tag("gm", v, "safety.status", "pass"),
            lambda: client.copy_model_version(f"models:/gm/{v}", "prod-gm"),
        ):
            with pytest.raises(MlflowException, match="safety gate: ") as info:
                attempt()
            # copy_model_version wraps the server's answer in its own error
            assert info.value.error_code == "PERMISSION_DENIED" or "model version copy" in str(info.value)
        mv = client.get_model_version("gm", v)
        assert mv.current_stage == "None" and mv.tags["safety.status"] == "fail"
        assert client.get_registered_model("gm").aliases == {}
        assert client.search_model_versions("name = 'prod-gm'") == []
        refusals = [r for r in audit_runs(client, "refusal") if r.data.tags["model_name"] == "gm"]
        assert len(refusals) == 9 and {r.data.tags["safety_lab.via"] for r in refusals} == {"server"}
        assert all(r.info.status == "FINISHED" and r.data.tags["status_at_time"] == "fail" for r in refusals)


def test_a_pass_version_moves_and_each_move_is_audited(gated, team, tmp_path, measured):
    with team.pointed_at(gated.url, tmp_path):
        client = MlflowClient()
        v = add_version(client, "gp", "pass", measured)
        client.transition_model_version_stage("gp", v, "Production")
        resp = post(
            gated.url, "registered-models/alias", {"name": "gp", "alias": "champion", "version": v}, api="ajax-api"
        )
        assert resp.status_code == 200, resp.text
        assert client.get_model_version_by_alias("gp", "champion").current_stage == "Production"
        moves = [r for r in audit_runs(client, "promotion") if r.data.tags["model_name"] == "gp"]
        assert sorted(r.data.tags["target"] for r in moves) == ["@champion", "Production"]
        assert all(r.info.status == "FINISHED" and r.data.tags["forced"] == "false" for r in moves)
        assert all(r.data.tags["mlflow.user"].startswith("unauthenticated:") for r in moves)
        # a copy into a production model is a promotion too: allowed, and the copy starts unevaluated
        client.set_model_version_tag("gp", v, "data.name", "safe")
        copy = client.copy_model_version(f"models:/gp/{v}", "prod-gp")
        tags = client.get_model_version("prod-gp", copy.version).tags
        assert tags == {"data.name": "safe", "safety.status": "unevaluated"}  # lineage kept, evidence not copied


def test_hand_edits_of_the_record_are_refused_and_the_rest_passes_unchanged(gated, team, tmp_path, measured):
    with team.pointed_at(gated.url, tmp_path):
        client = MlflowClient()
        v = add_version(client, "gh", "pass", measured)
        run_id = client.get_model_version("gh", v).tags["safety.eval_run_id"]
        for key, value in (("safety.asr", "0.01"), ("safety.eval_run_id", run_id)):
            with pytest.raises(MlflowException, match=f"safety gate: {key}"):
                client.set_model_version_tag("gh", v, key, value)
        with pytest.raises(MlflowException, match="never deleted"):
            client.delete_model_version_tag("gh", v, "safety.status")
        with pytest.raises(MlflowException, match="is FINISHED"):
            client.set_tag(run_id, "safety.status", "pass")
        client.set_model_version_tag("gh", v, "note", "anything")  # not a safety tag
        client.set_tag(run_id, "note", "anything")
        client.set_model_version_tag("gh", v, "safety.status", "unevaluated")  # dropping a claim is always allowed
        with pytest.raises(MlflowException, match="changes only while the version is unevaluated|disagrees"):
            client.set_model_version_tag("gh", v, "safety.asr", "0.01")
        client.set_model_version_tag("gh", v, "safety.status", "pass")  # what the evaluation shows: accepted
        assert client.get_model_version("gh", v).tags["safety.status"] == "pass"
        # a new version may not arrive claiming a status
        source = f"{client.get_run(run_id).info.artifact_uri}/m"
        with pytest.raises(MlflowException, match="a new version has no evaluation yet"):
            client.create_model_version("gh", source, run_id=run_id, tags={"safety.status": "pass"})


# --------------------------------------------------------------------------- with basic-auth


def _ini(root: Path, admin_password: str) -> str:
    path = root / "basic_auth.ini"
    path.write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{root / 'basic_auth.db'}\n"
        f"admin_username = {ADMIN}\nadmin_password = {admin_password}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    return str(path)


@contextlib.contextmanager
def as_user(server, user: str):
    old = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    os.environ.update(MLFLOW_TRACKING_USERNAME=user, MLFLOW_TRACKING_PASSWORD=server.passwords[user])
    try:
        yield MlflowClient()
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def gated_auth(team, tmp_path_factory):
    """A gated server with basic-auth: READ by default; alice approves, eval-bot records, bob and carol are users."""
    from mlflow.server import get_app_client

    root = tmp_path_factory.mktemp("gated-auth")
    users = (ADMIN, APPROVER, EDITOR, READER, RECORDER)
    passwords = {u: secrets.token_urlsafe(18) for u in users}
    (root / "policy.yaml").write_text(f"approvers: [{APPROVER}]\n")
    config = f"policy: {root / 'policy.yaml'}\nbasic_auth: true\nrecorders: [{RECORDER}]\n"
    server = start_gated(
        team,
        root,
        config,
        MLFLOW_AUTH_CONFIG_PATH=_ini(root, passwords[ADMIN]),
        MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(16),
    )
    server.passwords = passwords
    try:
        with team.pointed_at(server.url, root / "work"), as_user(server, ADMIN):
            admin = get_app_client("basic-auth", tracking_uri=server.url)
            for user in users[1:]:
                admin.create_user(user, passwords[user])
        yield server
    finally:
        team.stop_server(server)


def test_with_auth_permissions_apply_and_an_approver_override_is_recorded(gated_auth, team, tmp_path, measured):
    from mlflow.server import get_app_client

    url = gated_auth.url
    with team.pointed_at(url, tmp_path):
        with as_user(gated_auth, RECORDER) as client:  # the recorder account creates and evaluates: it MANAGEs them
            v_fail = add_version(client, "ga", "fail", measured)
            v_pass = add_version(client, "ga", "pass", measured)
        with as_user(gated_auth, ADMIN):
            admin = get_app_client("basic-auth", tracking_uri=url)
            for user in (APPROVER, EDITOR):
                admin.grant_user_permission(user, "registered_model", "ga", "EDIT")
        # permissions apply before the gate: a READ user cannot move even a pass version
        with as_user(gated_auth, READER) as client:
            with pytest.raises(MlflowException) as info:
                client.transition_model_version_stage("ga", v_pass, "Staging")
            assert info.value.error_code == "PERMISSION_DENIED" and "safety gate" not in str(info.value)
        auth = (EDITOR, gated_auth.passwords[EDITOR])
        body = {"name": "ga", "version": v_fail, "stage": "Production", "archive_existing_versions": False}
        refused(post(url, "model-versions/transition-stage", body, auth=auth), "is 'fail'")
        tag = {"name": "ga", "version": v_fail, "key": "safety.override_reason", "value": "mine"}
        refused(post(url, "model-versions/set-tag", tag, auth=auth), "approver")
        tag = {"name": "ga", "version": v_fail, "key": "safety.status", "value": "unevaluated"}
        refused(post(url, "model-versions/set-tag", tag, auth=auth), "recorder accounts")
        # the approver: refused without a reason, forced with one, recorded with the authenticated name
        auth = (APPROVER, gated_auth.passwords[APPROVER])
        refused(post(url, "model-versions/transition-stage", body, auth=auth), "safety.override_reason")
        tag = {"name": "ga", "version": v_fail, "key": "safety.override_reason", "value": "hotfix, ticket 7"}
        assert post(url, "model-versions/set-tag", tag, auth=auth).status_code == 200
        resp = post(url, "model-versions/transition-stage", body, auth=auth, api="ajax-api")
        assert resp.status_code == 200, resp.text
        with as_user(gated_auth, APPROVER) as client:
            tags = client.get_model_version("ga", v_fail).tags
            assert client.get_model_version("ga", v_fail).current_stage == "Production"
            (record,) = override_history(tags)  # one override, under the key of the audit run that recorded it
            assert record["by"] == f"mlflow:{APPROVER}" and record["reason"] == "hotfix, ticket 7"
            assert record["status_at_time"] == "fail" and "safety.override_reason" not in tags
            forced = [r for r in audit_runs(client, "promotion") if r.data.tags["version"] == v_fail]
            assert len(forced) == 1 and forced[0].data.tags["forced"] == "true"
            assert record["audit_run"] == forced[0].info.run_id
            assert forced[0].data.tags["mlflow.user"] == f"mlflow:{APPROVER}" and forced[0].info.status == "FINISHED"
            client.set_registered_model_alias("ga", "champion", v_pass)  # a pass version needs no override


# --------------------------------------------------------------------------- the UI

CHROMIUM = os.environ.get("SAFETY_LAB_CHROMIUM", "/usr/bin/chromium")
DOCS_SHOT = ROOT / "docs" / "gate_refusal.png"


@pytest.mark.browser
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)")
def test_the_ui_alias_editor_shows_the_refusal(gated, team, tmp_path, measured):
    pytest.importorskip("playwright")
    from playwright.sync_api import sync_playwright

    with team.pointed_at(gated.url, tmp_path):
        v = add_version(MlflowClient(), "gui", "fail", measured)
    team.ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(120_000)
        page.add_init_script(  # keep the "MLflow Assistant" side panel closed, as tests/team/test_ui.py does
            "try { localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');"
            " localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true'); } catch (e) {}"
        )
        try:
            page.goto(f"{gated.url}/#/models/gui/versions/{v}", wait_until="domcontentloaded")
            page.get_by_text("safety.status").first.wait_for(state="visible")
            page.get_by_role("button", name="Add").first.click()  # Aliases: Add
            dialog = page.get_by_role("dialog")
            dialog.get_by_role("combobox").first.fill("champion")
            page.keyboard.press("Enter")
            dialog.get_by_role("button", name=re.compile("Save")).click()
            page.get_by_text(re.compile("safety gate: gui version")).first.wait_for(state="visible")
        finally:
            page.screenshot(path=str(team.ARTIFACTS / "ui-gate-refusal.png"))
        if os.environ.get("SAFETY_LAB_UPDATE_DOCS") == "1":  # tests write nothing into the checkout unless asked
            page.screenshot(path=str(DOCS_SHOT))
        browser.close()
    assert MlflowClient(tracking_uri=gated.url).get_registered_model("gui").aliases == {}
