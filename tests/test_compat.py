"""safety_lab.compat: the only module that touches private names of optuna, trl and transformers, each checked against
the library version it was written for (CHECKED). After an upgrade, this file says which names still hold."""

from __future__ import annotations

import re
from pathlib import Path

import mlflow
import optuna
import pytest
import torch
import transformers
import trl
from packaging.version import Version

import safety_lab
from safety_lab import compat

PACKAGE = Path(safety_lab.__file__).resolve().parent
ALLOWED = {PACKAGE / "compat.py"}
PRIVATE = re.compile(
    r"\._storage\b|[\"']_MLFLOW_\w+|\._trial_id\b|\._study_id\b|_tracking_service|_use_triton|_ChunkedLogProbFunction|cumulative_length|\bStaticLayer\b"
    # any import from a private module of these libraries (mlflow.tracking._tracking_service, optuna.study._...)
    r"|^\s*(?:from|import)\s+(?:mlflow|optuna|trl|transformers|peft)(?:\.\w+)*\._\w+",
    re.MULTILINE,
)


@pytest.mark.parametrize("library", [mlflow, optuna, trl, transformers], ids=lambda m: m.__name__)
def test_the_installed_version_is_the_checked_one(library):
    assert Version(library.__version__).release[:2] == compat.CHECKED[library.__name__], (
        f"{library.__name__} {library.__version__} is not the version safety_lab.compat was checked against: "
        "rerun tests/test_compat.py, and update CHECKED once every name below holds"
    )


def test_no_module_but_compat_touches_a_private_library_name():
    found = [
        f"{path.relative_to(PACKAGE.parent)}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0).strip()}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path not in ALLOWED
        for text in [path.read_text()]
        for m in PRIVATE.finditer(text)
    ]
    assert found == [], found


def test_the_pattern_catches_each_private_name():
    for line in (
        "storage = self.study._storage",
        "storage.get_trial(trial._trial_id)",
        "key=lambda s: s._study_id",
        "from mlflow.tracking._tracking_service.utils import get_default_host_creds",
        'with mock.patch.object(trl_utils, "_use_triton", compact):',
        "chunked = trl_utils._ChunkedLogProbFunction",
        "class _InPlaceLayer(StaticLayer):",
        "filled = int(self.cumulative_length)",
        'BACKEND_STORE_ENV = "_MLFLOW_SERVER_FILE_STORE"',
    ):
        assert PRIVATE.search(line), line
    assert not PRIVATE.search("from mlflow.utils.credentials import get_default_host_creds")


def test_a_multi_objective_trial_stores_its_curve_for_the_pruner():
    study = optuna.create_study(directions=["minimize", "minimize"])
    trial = study.ask()
    with pytest.raises(NotImplementedError):  # why compat needs the storage: the public report refuses
        trial.report(1.0, 0)
    compat.report_intermediate(study, trial, 0, 2.5)
    stored = compat.report_intermediate(study, trial, 3, 1.5)
    assert isinstance(stored, optuna.trial.FrozenTrial) and stored.number == trial.number
    assert stored.intermediate_values == {0: 2.5, 3: 1.5} and stored.last_step == 3
    assert study.trials[0].intermediate_values == {0: 2.5, 3: 1.5}  # what Optuna's dashboard and pruners read


def test_trl_compacts_the_fused_head_on_every_device_only_within_the_switch():
    from trl.trainer import utils as trl_utils

    cpu = torch.device("cpu")
    assert trl_utils._use_triton(cpu) is False  # as TRL ships on a CPU: every position is scored
    with compat.fused_head_on_labelled_positions():
        assert trl_utils._use_triton(cpu) is True
    assert trl_utils._use_triton(cpu) is False


def test_the_cpu_head_stands_in_for_trls_kernel_only_within_the_switch_and_only_where_triton_is_not(monkeypatch):
    from trl.trainer import utils as trl_utils

    kernel = trl_utils._ChunkedLogProbFunction
    monkeypatch.setattr(kernel, "apply", lambda hidden, *args: "trl kernel")
    monkeypatch.setattr(trl_utils, "_use_triton", lambda device: device.type == "meta")  # meta: a Triton device
    calls = []

    def cpu_head(hidden, *args):
        calls.append(tuple(hidden.shape))
        return "cpu head"

    with compat.fused_head_on_labelled_positions(cpu_head):
        assert trl_utils._ChunkedLogProbFunction.apply(torch.zeros(3, 4), "weight") == "cpu head"
        assert trl_utils._ChunkedLogProbFunction.apply(torch.zeros(3, 4, device="meta"), "weight") == "trl kernel"
    assert calls == [(3, 4)] and trl_utils._ChunkedLogProbFunction is kernel
    with compat.fused_head_on_labelled_positions():  # no CPU head given: TRL's kernel everywhere, as it ships
        assert trl_utils._ChunkedLogProbFunction.apply(torch.zeros(3, 4), "weight") == "trl kernel"


def test_the_in_place_layer_returns_only_the_filled_part_and_drops_rows():
    layer = compat.in_place_layer(10)
    assert isinstance(layer, transformers.cache_utils.StaticLayer) and hasattr(layer, "cumulative_length")
    keys, values = torch.randn(3, 2, 4, 8), torch.randn(3, 2, 4, 8)
    k, v = layer.update(keys, values)
    assert k.shape == (3, 2, 4, 8) and torch.equal(k, keys) and torch.equal(v, values)
    assert layer.get_mask_sizes(1) == (5, 0)  # 4 filled + 1 new, no offset
    step = torch.randn(3, 2, 1, 8)
    k, _ = layer.update(step, step)
    assert k.shape == (3, 2, 5, 8) and torch.equal(k[:, :, 4:], step)
    layer.keep_rows(torch.tensor([True, False, True]))
    assert layer.keys.shape == (2, 2, 10, 8) and torch.equal(layer.keys[1, :, :5], torch.cat([keys, step], 2)[2])
