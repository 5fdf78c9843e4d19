"""A registered version is code + safetensors, never a pickle; its lineage cannot widen what the loader runs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from safety_lab import registry
from safety_lab.errors import SafetyLabError
from safety_lab.models.registered import LINEAGE_FILE, resolve_version


def _adapter(base_dir: Path, out: Path, seed: int = 0) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base_dir),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    model.save_pretrained(out)
    return out


@pytest.fixture
def version(mlflow_store, tiny_model_dir, tmp_path):
    """Register `tiny` version 1: the tiny base model + one random (non-identity) LoRA adapter."""

    def add(name: str = "tiny", *, parent: str | None = None, adapters: tuple[Path, ...] = ()) -> str:
        adapter = _adapter(tiny_model_dir, tmp_path / f"adapter-{name}-{len(adapters)}", seed=len(adapters))
        with mlflow.start_run():
            info = registry.log_model(
                adapter, base_model=str(tiny_model_dir), parent=parent, parent_adapters=list(adapters)
            )
            mv = registry.register(info.model_uri, name, tags={"safety.status": "unevaluated"}, description="test")
        return f"models:/{name}/{mv.version}"

    return add


def _artifacts(uri: str) -> Path:
    """The version's own folder in the (local) artifact store: what an attacker with write access edits."""
    root = Path(mlflow.artifacts.download_artifacts(artifact_uri=resolve_version(uri).source))
    assert (root / "MLmodel").is_file()
    return root


def _tamper(uri: str, **changes) -> None:
    path = _artifacts(uri) / "artifacts" / LINEAGE_FILE
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_a_version_holds_no_pickle_and_is_logged_as_code(version):
    uri = version()
    root = _artifacts(uri)
    files = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".cloudpickle"))], files
    assert "artifacts/lineage.json" in files and any(f.endswith("adapter_model.safetensors") for f in files)
    conf = (root / "MLmodel").read_text()
    assert "python_model.pkl" not in conf and "model_code_path" in conf, conf
    requirements = (root / "requirements.txt").read_text()
    assert "+cpu" not in requirements and "safety-lab" not in requirements, requirements


def test_pyfunc_reload_matches_the_registry_loader_and_honours_max_new_tokens(version, tiny_model_dir):
    import torch

    from safety_lab.models import load_model
    from safety_lab.models.generation import generate

    uri = version()
    pyfunc = mlflow.pyfunc.load_model(uri)
    loaded = pyfunc.unwrap_python_model().loaded  # what finetune's reload check reads
    direct = load_model(uri)
    for a, b in zip(loaded.model.state_dict().values(), direct.model.state_dict().values()):
        assert torch.equal(a, b)
    short = pyfunc.predict(["Say hello"], params={"max_new_tokens": 2})
    assert short == generate(direct.model, direct.tokenizer, ["Say hello"], max_new_tokens=2)
    long = pyfunc.predict(["Say hello"], params={"max_new_tokens": 12})
    assert long == generate(direct.model, direct.tokenizer, ["Say hello"], max_new_tokens=12) and long != short
    assert "max_new_tokens" in {p.name for p in pyfunc.metadata.get_params_schema().params}


def test_a_lineage_cannot_turn_on_trust_remote_code(version, monkeypatch):
    from safety_lab.models import base as models
    from safety_lab.models import load_model

    seen = []
    real = models._load_hf

    def spy(source, **kwargs):
        seen.append(kwargs["trust_remote_code"])
        return real(source, **kwargs)

    monkeypatch.setattr(models, "_load_hf", spy)
    uri = version()
    _tamper(uri, trust_remote_code=True)
    load_model(uri)  # the caller did not ask for remote code
    mlflow.pyfunc.load_model(uri)
    assert seen == [False, False]
    load_model(uri, trust_remote_code=True)  # caller AND lineage
    assert seen[-1] is True


def test_a_traversal_adapter_name_is_refused(version, tiny_model_dir, tmp_path):
    from safety_lab.models import load_model

    uri = version()
    root = _artifacts(uri) / "artifacts"
    outside = _adapter(tiny_model_dir, tmp_path / "outside", seed=7)  # a real adapter, outside the version
    _tamper(uri, adapters=[os.path.relpath(outside, root)])  # today: loaded and merged without a word
    with pytest.raises(SafetyLabError, match="adapter_<n> inside"):
        load_model(uri)
    _tamper(uri, adapters=["../../.."])
    with pytest.raises(SafetyLabError, match="adapter_<n> inside"):
        load_model(uri)
    with pytest.raises(Exception, match="adapter_<n> inside"):
        mlflow.pyfunc.load_model(uri)


def test_a_lineage_whose_base_is_another_registry_uri_is_refused(version):
    from safety_lab.models import load_model

    first = version("first")
    second = version("second")
    _tamper(second, base_model=first)
    with pytest.raises(SafetyLabError, match="another registry URI"):
        load_model(second)


def test_a_chain_of_two_adapters_still_loads(version, tiny_model_dir, tmp_path):
    from safety_lab.models import load_model

    parent = version("chain")
    adapter = _adapter(tiny_model_dir, tmp_path / "p", seed=0)
    child = version("chain", parent=parent, adapters=(adapter,))
    loaded = load_model(child)
    assert [p.name for p in loaded.adapters] == ["adapter_0", "adapter_1"] and loaded.parent == child


@pytest.mark.parametrize("name", ["it's", "a b", "x/y", ""])
def test_bad_registered_names_fail_in_one_line(mlflow_store, name):
    with pytest.raises(SafetyLabError, match="^model_name: "):
        registry.find_versions(name, {})
    with pytest.raises(SafetyLabError, match="^model_name: "):
        registry.register("runs:/0/model", name, tags={}, description="")
    assert MlflowClient().search_registered_models() == []


def test_the_cache_identity_of_a_version_follows_its_adapter_weights(version, tiny_model_dir, tmp_path):
    import shutil

    from safety_lab.registry.record import source_identity as _source_identity

    uri = version()
    before = _source_identity(uri)
    assert _source_identity(uri) == before
    swapped = _adapter(tiny_model_dir, tmp_path / "swap", seed=5)  # same name, version and source; other weights
    shutil.copy(
        swapped / "adapter_model.safetensors", _artifacts(uri) / "artifacts" / "adapter_0" / "adapter_model.safetensors"
    )
    assert _source_identity(uri) != before


def test_a_failed_version_lookup_is_an_error_not_an_empty_registry(mlflow_store, monkeypatch):
    """register-best's duplicate check reads find_versions: a transient server error must not read as "none yet"."""
    from mlflow.exceptions import MlflowException

    def unavailable(self, *args, **kwargs):
        raise MlflowException("TEMPORARILY_UNAVAILABLE: the tracking server is restarting")

    monkeypatch.setattr(MlflowClient, "search_model_versions", unavailable)
    with pytest.raises(SafetyLabError, match="^model_name: could not list the versions of 'twin': TEMPORARILY"):
        registry.find_versions("twin", {"optuna.study": "s"})


def test_a_version_is_evaluated_in_the_experiment_of_its_training_run(mlflow_store):
    """`make run` trains in one experiment; a later `evaluate` of that version must not scatter its evidence into
    another one (it used to create and use `safety_lab` whatever experiment held the finetune)."""
    from types import SimpleNamespace

    from safety_lab.registry.record import use_experiment_of

    team = mlflow.set_experiment("team-x").experiment_id
    with mlflow.start_run() as training:
        pass
    mlflow.set_experiment("tests")
    use_experiment_of(SimpleNamespace(tags={"training.run_id": training.info.run_id}))
    with mlflow.start_run() as evaluation:
        assert evaluation.info.experiment_id == team
    use_experiment_of(None)  # the base model, or a version without a training run: the project's experiment
    with mlflow.start_run() as other:
        assert MlflowClient().get_experiment(other.info.experiment_id).name == "safety_lab"
