"""The MLflow UI (served by the same real server) shows the registered version, its safety tag and the eval run.

Headless Chromium from the OS (/usr/bin/chromium) driven by the Python `playwright` package; `playwright
install` is never needed. Screenshots go to $SAFETY_LAB_TEST_ARTIFACTS (default: a folder in the system temp
dir); docs/registry.png (the README's picture) is rewritten only with SAFETY_LAB_UPDATE_DOCS=1.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("SAFETY_LAB_CHROMIUM", "/usr/bin/chromium")
DOCS_SHOT = Path(__file__).resolve().parents[2] / "docs" / "registry.png"
TIMEOUT_MS = 60_000
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.server,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)"),
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None, reason="pip install playwright"),
]


@pytest.fixture(scope="module")
def page(team):
    from playwright.sync_api import sync_playwright

    team.ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        context.set_default_timeout(TIMEOUT_MS)
        # keep the "MLflow Assistant" side panel closed: it covers a third of every screenshot
        context.add_init_script("""try {
            localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');
            localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');
        } catch (e) {}""")
        page = context.new_page()
        yield page
        context.close()
        browser.close()


def _open(page, url: str, shot: Path, *texts: str | re.Pattern) -> None:
    """Load a UI route, wait (generously: a React SPA) for each text, scroll the last into view, screenshot."""
    page.goto(url, wait_until="domcontentloaded")
    try:
        for text in texts:
            found = page.get_by_text(text).first
            found.wait_for(state="visible", timeout=TIMEOUT_MS)
        if texts:
            found.scroll_into_view_if_needed()
    finally:
        page.screenshot(path=str(shot))


def test_model_page_lists_the_version(page, team, team_version, mlflow_server):
    url = f"{mlflow_server.url}/#/models/team"
    _open(page, url, team.ARTIFACTS / "ui-model.png", re.compile(r"^\s*Version 1\s*$"))
    assert page.get_by_role("link", name=re.compile(r"Version 1")).count() >= 1
    if os.environ.get("SAFETY_LAB_UPDATE_DOCS") == "1":  # tests write nothing into the checkout unless asked
        DOCS_SHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(DOCS_SHOT))


def test_version_page_shows_the_safety_status(page, team, team_version, mlflow_server):
    status = team_version.tags["safety.status"]
    url = f"{mlflow_server.url}/#/models/team/versions/1"
    _open(page, url, team.ARTIFACTS / "ui-version.png", "safety.status")
    body = page.locator("body").inner_text()
    assert "safety.status" in body and status in body
    assert team_version.tags["safety.eval_run_id"] in page.content() or "safety.eval_run_id" in body


def test_eval_run_page_shows_the_asr_metric(page, team, team_version, mlflow_server):
    from mlflow.tracking import MlflowClient

    run = MlflowClient(tracking_uri=mlflow_server.url).get_run(team_version.tags["safety.eval_run_id"])
    url = f"{mlflow_server.url}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    _open(page, url, team.ARTIFACTS / "ui-eval-run.png", re.compile(r"^\s*asr\s*$"))
    body = page.locator("body").inner_text()
    assert re.search(r"(^|\s)asr(\s|$)", body)
    assert run.info.run_name in body


def test_eval_run_shows_a_response_row_of_the_item_table(page, team, team_version, mlflow_server):
    """The per-item rows are logged with mlflow.log_table: the UI's artifact view shows prompts and responses."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server.url)
    run = client.get_run(team_version.tags["safety.eval_run_id"])
    table = json.loads(Path(client.download_artifacts(run.info.run_id, "evaluation/asr_items.json")).read_text())
    assert {"prompt", "response", "refused"} <= set(table["columns"])  # mlflow.log_table's layout
    row = dict(zip(table["columns"], table["data"][0]))
    url = (
        f"{mlflow_server.url}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
        f"/artifacts/evaluation/asr_items.json"
    )
    words = " ".join(str(row["prompt"]).split()[:4])
    _open(page, url, team.ARTIFACTS / "ui-eval-items.png", "asr_items.json")
    page.get_by_text(words).first.wait_for(state="visible", timeout=TIMEOUT_MS)
    body = page.locator("body").inner_text()
    assert words in body and "response" in body  # the row, under the table's response column
