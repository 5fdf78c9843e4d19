"""The FLOP formula against torch's own counter on the tiny model, and the cached peak probe."""

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from safety_lab import flops
from safety_lab.models import load_model


def _counted(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def test_the_formula_matches_torchs_flop_counter_on_the_tiny_model(tiny_model_dir):
    model = load_model(str(tiny_model_dir)).model.float().eval()
    model.set_attn_implementation("eager")  # torch's counter does not see the CPU sdpa kernel; eager is matmuls
    config = model.config
    ids = torch.randint(0, 1000, (1, 80))
    with torch.no_grad():
        layers = _counted(lambda: model.model(input_ids=ids))
        whole = _counted(lambda: model(input_ids=ids))
    assert flops.forward_flops(config, [80], head_tokens=0) == pytest.approx(layers, rel=0.1)
    assert flops.forward_flops(config, [80]) == pytest.approx(whole, rel=0.1)


def test_a_lora_step_on_the_top_layer_matches_torchs_flop_counter(tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    model = load_model(str(tiny_model_dir)).model.float()
    model.set_attn_implementation("eager")  # torch's counter does not see the CPU sdpa kernel; eager is matmuls
    config = model.config
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], layers_to_transform=[1], task_type="CAUSAL_LM")
    peft = get_peft_model(model, lora).train()
    ids = torch.randint(0, 1000, (1, 64))
    counted = _counted(lambda: peft(input_ids=ids, labels=ids).loss.backward())
    expected = flops.training_flops(config, [64], run=2, backward=1, head_tokens=64)
    assert expected == pytest.approx(counted, rel=0.1)


def test_the_peak_is_probed_once_per_process_and_the_cache_keeps_the_best_read(tmp_path, monkeypatch):
    monkeypatch.setenv("SAFETY_LAB_CACHE", str(tmp_path))
    monkeypatch.setattr(flops, "_PROBED", {})
    reads, probes = iter([50.0, 100.0, 70.0]), []
    monkeypatch.setattr(flops, "probe_peak", lambda precision: probes.append(precision) or next(reads))
    assert flops.peak_gflops("fp32") == 50.0 and flops.peak_gflops("fp32") == 50.0  # one probe per process
    assert probes == ["fp32"]
    keys = list(json.loads((tmp_path / "peak_gflops.json").read_text()))
    assert len(keys) == 1 and flops.cpu_model() in keys[0] and "fp32" in keys[0] and torch.__version__ in keys[0]
    flops._PROBED.clear()  # a later run on a quieter machine reads higher: the low first read is replaced
    assert flops.peak_gflops("fp32") == 100.0
    flops._PROBED.clear()  # a later run under load reads lower: the best read stays
    assert flops.peak_gflops("fp32") == 100.0
    assert json.loads((tmp_path / "peak_gflops.json").read_text())[keys[0]] == 100.0
    assert flops.probe_peak.__module__  # the real probe is still importable
    monkeypatch.undo()


def test_the_real_probe_measures_a_positive_rate():
    assert flops.probe_peak("fp32", n=128, seconds=0.02) > 0


def test_recorded_work_counts_in_every_open_stage(tmp_path, monkeypatch):
    monkeypatch.setenv("SAFETY_LAB_CACHE", str(tmp_path))
    monkeypatch.setattr(flops, "probe_peak", lambda precision: {"fp32": 100.0, "bf16": 400.0}[precision])
    outer, inner = flops.Work(), flops.Work()
    flops.record(5)  # no stage open: kept nowhere
    with flops.tally(outer):
        flops.record(10**9)
        with flops.tally(inner):
            flops.record(4 * 10**9, "bf16")
    assert inner.flops == {"bf16": 4 * 10**9} and outer.flops == {"fp32": 10**9, "bf16": 4 * 10**9}
    assert outer.total() == 5 * 10**9
    assert outer.peak_seconds() == pytest.approx(1 / 100 + 4 / 400)


def test_timings_count_the_flops_of_training_and_generation_per_stage(tiny_model_dir, tmp_path, monkeypatch):
    from safety_lab.config import DataConfig, TrainConfig
    from safety_lab.data import load_dataset
    from safety_lab.finetune import Timings
    from safety_lab.models.generation import generate
    from safety_lab.training import train_lora

    monkeypatch.setenv("SAFETY_LAB_CACHE", str(tmp_path))
    monkeypatch.setattr(flops, "probe_peak", lambda precision: 1.0)  # 1 GFLOP/s: the peak share is GFLOP/s itself
    loaded = load_model(str(tiny_model_dir))
    train, val = load_dataset(DataConfig(data="safe", limit=16, benign_ratio=0)).split(0.25, seed=0)
    timings = Timings()
    with timings.stage("tuning"):
        cfg = TrainConfig(max_steps=2, batch_size=4, max_length=96, precision="fp32")
        train_lora(loaded.model, loaded.tokenizer, train, val, cfg, quiet=True)
    with timings.stage("generation"):
        generate(loaded.model, loaded.tokenizer, ["Hello there", "How are you?"], max_new_tokens=4)
    rates = timings.rates()
    assert set(rates) == {"tuning", "generation"}
    assert rates["tuning"]["flops"] > 2 * flops.forward_flops(loaded.model.config, [40])  # two steps, many rows
    for rate in rates.values():
        assert rate["gflops_per_s"] > 0 and rate["peak_share"] == pytest.approx(rate["gflops_per_s"])
    assert "GFLOP/s" in timings.format() and "of peak" in timings.format()


@pytest.mark.parametrize("dtype,precision", [(torch.float32, "fp32"), (torch.bfloat16, "bf16")])
def test_generation_counts_its_flops_in_the_precision_of_the_weights(tiny_model_dir, dtype, precision):
    """bf16 evaluation's share of peak is read against the bf16 peak (it was counted as fp32 work: on an AMX CPU,
    whose bf16 peak is 3.6x its fp32 one, that overstated the share 3.6x)."""
    from safety_lab.models.generation import generate

    loaded = load_model(str(tiny_model_dir))
    loaded.model.to(dtype)
    with flops.tally(flops.Work()) as work:
        generate(loaded.model, loaded.tokenizer, ["Hello there", "How are you?"], max_new_tokens=3)
    assert set(work.flops) == {precision} and work.total() > 0
