"""`mlflow models serve -m models:/NAME@champion --env-manager local` answers prompts from a registered version,
honouring `max_new_tokens` (the model's params schema)."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from safety_lab import registry

pytestmark = pytest.mark.server

START_TIMEOUT_S = 180
PROMPT = "Say hello"


@pytest.fixture
def champion(mlflow_store, tiny_model_dir, tmp_path):
    """`tiny` version 1 (tiny base + a random LoRA adapter) under the alias champion."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    ).save_pretrained(tmp_path / "a")
    with mlflow.start_run():
        info = registry.log_model(tmp_path / "a", base_model=str(tiny_model_dir), parent=None, parent_adapters=[])
        mv = registry.register(info.model_uri, "tiny", tags={}, description="test")
    MlflowClient().set_registered_model_alias("tiny", "champion", mv.version)
    return "models:/tiny@champion"


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as resp:
        return json.loads(resp.read())


def _wait_ready(proc, url: str, log) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow models serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"mlflow models serve not ready after {START_TIMEOUT_S}s:\n{log.read_text()[-3000:]}")
        time.sleep(1)


def test_models_serve_answers_from_the_champion_honouring_max_new_tokens(champion, team, tmp_path):
    from safety_lab.models import load_model
    from safety_lab.models.generation import generate

    try:
        port = team.free_port()
    except OSError as exc:
        print(f"[serve] skipped: cannot bind a loopback port ({exc})")
        pytest.skip(f"cannot bind a loopback port ({exc})")
    log = tmp_path / "serve.log"
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "PATH": f"{team.BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }  # it runs `uvicorn` from the venv
    cmd = [
        team.MLFLOW,
        "models",
        "serve",
        "-m",
        champion,
        "--env-manager",
        "local",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-w",
        "1",
    ]
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    server = team.Server(url=f"http://127.0.0.1:{port}", root=tmp_path, proc=proc)
    try:
        _wait_ready(proc, server.url, log)
        short = _post(f"{server.url}/invocations", {"inputs": [PROMPT], "params": {"max_new_tokens": 3}})["predictions"]
        default = _post(f"{server.url}/invocations", {"inputs": [PROMPT]})["predictions"]
    finally:
        team.stop_server(server)
    loaded = load_model(champion)
    assert short == generate(loaded.model, loaded.tokenizer, [PROMPT], max_new_tokens=3)
    assert default == generate(loaded.model, loaded.tokenizer, [PROMPT], max_new_tokens=registry.MAX_NEW_TOKENS)
    assert short != default
