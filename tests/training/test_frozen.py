"""The frozen-prefix cache gives the losses and LoRA gradients of the uncached model (fp32, tiny model)."""

import tempfile

import torch

from safety_lab.config import DataConfig, TrainConfig
from safety_lab.data import load_dataset
from safety_lab.models import load_model
from safety_lab.training import _trainer, train_lora
from safety_lab.training.frozen import frozen_layer_count, frozen_prefix

# fp32 sums in another order (rows computed in a different packing) differ in the last bits only
TOLERANCE = dict(rtol=1e-5, atol=1e-6)
CFG = dict(max_steps=6, eval_every=3, learning_rate=5e-3, batch_size=4, max_length=96, lora_dropout=0.0)


def _loss_and_grads(trainer, rows):
    model = trainer.model.train()
    model.zero_grad()
    loss = trainer.compute_loss(model, trainer.data_collator(rows))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads


def _close(a, b):
    (loss_a, grads_a), (loss_b, grads_b) = a, b
    assert torch.allclose(loss_a, loss_b, **TOLERANCE), (loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], **TOLERANCE), name


def test_cached_rows_give_the_uncached_loss_and_lora_gradients(tiny_model_dir):
    loaded = load_model(str(tiny_model_dir))
    train, val = load_dataset(DataConfig(data="safe", limit=24, benign_ratio=0)).split(0.25, seed=0)
    cfg = TrainConfig(**CFG, precision="fp32", lora_layer_share=0.5)
    with tempfile.TemporaryDirectory() as out:
        trainer = _trainer(loaded.model, loaded.tokenizer, train, val, cfg, out, quiet=True, padding_free=True)
        rows = [trainer.train_dataset[i] for i in range(8)]
        batches = [rows[0:4], rows[4:8]]
        reference = [_loss_and_grads(trainer, batch) for batch in batches]

        decoder = trainer.model.get_base_model().get_decoder()
        bottom_calls = []
        decoder.layers[0].register_forward_hook(lambda *a: bottom_calls.append(1))
        n_frozen = frozen_layer_count(trainer.model.get_base_model(), cfg.layers(2), padding_free=True)
        assert n_frozen == 1
        store = {}
        with frozen_prefix(trainer.model, n_frozen, store):
            _loss_and_grads(trainer, rows[::-1])  # fills the store, each row packed beside other rows
            assert len(store) == 8 and len(bottom_calls) == 1
            cached = [_loss_and_grads(trainer, batch) for batch in batches]
            assert len(bottom_calls) == 1  # both batches came from the store: the bottom layer did not run
        assert decoder.layers[0].__class__.__name__ == "LlamaDecoderLayer"  # put back on exit
    for a, b in zip(reference, cached):
        _close(a, b)


def test_training_with_the_cache_gives_the_uncached_losses(tiny_model_dir):
    """6 steps of 4 rows over 18 training rows: the second epoch, and the evaluations, read the store."""
    loaded = load_model(str(tiny_model_dir))
    train, val = load_dataset(DataConfig(data="safe", limit=24, benign_ratio=0)).split(0.25, seed=0)
    runs = []
    for frozen_cache in (False, True):
        losses = []
        cfg = TrainConfig(**CFG, precision="fp32", lora_layer_share=0.5, frozen_cache=frozen_cache)
        log = lambda step, logs, losses=losses: "loss" in logs and losses.append(logs["loss"])  # noqa: E731
        result = train_lora(loaded.model, loaded.tokenizer, train, val, cfg, quiet=True, on_log=log)
        runs.append((result, losses))
    (plain, plain_losses), (cached, cached_losses) = runs
    assert len(plain_losses) == len(cached_losses) == 6
    assert torch.allclose(torch.tensor(plain_losses), torch.tensor(cached_losses), **TOLERANCE)
    for a, b in zip(
        [plain.initial_eval_loss, plain.final_eval_loss], [cached.initial_eval_loss, cached.final_eval_loss]
    ):
        assert abs(a - b) < 1e-6, (a, b)
    assert type(cached.model.get_base_model().get_decoder().layers[0]).__name__ == "LlamaDecoderLayer"


def test_the_cache_stands_aside_where_it_cannot_be_exact(tiny_model_dir):
    model = load_model(str(tiny_model_dir)).model
    assert frozen_layer_count(model, [1], padding_free=True) == 1
    assert frozen_layer_count(model, None, padding_free=True) == 0  # adapters on every layer
    assert frozen_layer_count(model, [0, 1], padding_free=True) == 0
    assert frozen_layer_count(model, [1], padding_free=False) == 0  # padded rows are not told apart
    model.config.attention_dropout = 0.1
    assert frozen_layer_count(model, [1], padding_free=True) == 0  # a row's output would change per draw
