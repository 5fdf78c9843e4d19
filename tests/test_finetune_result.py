"""FinetuneResult is built from returned values: tuning's choice, then the published version and its evaluation."""

import dataclasses
from types import SimpleNamespace

import pytest

from safety_lab.finetune import FinetuneResult, Timings
from safety_lab.publish import Published


def test_a_result_is_frozen_and_registration_returns_a_new_one():
    tuned = FinetuneResult.tuned("run-1", "m", Timings(), SimpleNamespace(best_value=0.5, best_params={"lora_r": 8}))
    assert (tuned.version, tuned.model_uri, tuned.status, tuned.evaluation) == ("", "", "unevaluated", None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        tuned.version = "1"
    assert tuned.registered(None, None) is tuned  # a tuning worker registers nothing

    published = Published("3", "models:/m/3", reloaded=object())
    unevaluated = tuned.registered(published, None)
    assert (unevaluated.version, unevaluated.model_uri, unevaluated.status) == ("3", "models:/m/3", "unevaluated")
    evaluation = SimpleNamespace(status="pass")
    done = tuned.registered(published, evaluation)
    assert done.status == "pass" and done.evaluation is evaluation and done.best_params == {"lora_r": 8}
    assert tuned.version == "" and not hasattr(done, "reloaded")  # the model in memory stays out of the result
