import pytest

from safety_lab.config import DataConfig, TrainConfig, TuneConfig
from safety_lab.errors import SafetyLabError


def test_strings_from_mlflow_parameters_are_coerced():
    cfg = TrainConfig(max_steps="8.0", lora_r="16", learning_rate="1e-3")
    assert (cfg.max_steps, cfg.lora_r, cfg.learning_rate) == (8, 16, 1e-3)
    assert DataConfig(limit="").limit is None
    assert TuneConfig(n_trials="4", study_name="").study_name is None


@pytest.mark.parametrize("cls, field, value, message", [
    (TuneConfig, "n_trials", "four", "n_trials: must be a number"),
    (TuneConfig, "n_trials", 0, "n_trials: must be in"),
    (TrainConfig, "max_steps", 2.5, "max_steps: must be an integer"),
    (TrainConfig, "lora_r", -1, "lora_r: must be in"),
    (TrainConfig, "lora_alpha", 0, "lora_alpha: must be positive"),
    (TrainConfig, "lora_dropout", 1.5, "lora_dropout: must be in"),
    (TrainConfig, "learning_rate", "nan", "learning_rate: must be a finite number"),
    (DataConfig, "limit", 1, "limit: must be at least 2"),
    (TuneConfig, "lr_range", "1e-2,1e-4", "lr_range"),
])
def test_bad_parameters_name_the_field(cls, field, value, message):
    with pytest.raises(SafetyLabError) as info:
        cls(**{field: value})
    assert message in str(info.value)
