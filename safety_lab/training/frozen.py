"""Frozen-prefix cache: the decoder layers below the lowest LoRA adapter run once per training row.

Nothing below the lowest adapted layer changes during training, so a row's hidden states at that layer are the same
every time the row is drawn. `frozen_prefix` puts one module in the place of those layers that looks each packed
row up by its token ids (and the autocast precision), and runs the original layers only for a batch holding a row
it has not seen. The stored rows are kept per base model for the life of the process, so later trials of a study
skip the bottom layers from their first step.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager

import torch

from safety_lab import flops

# base model -> {(frozen layers, autocast dtype, token ids): hidden states [tokens, hidden]}
_STORES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def store_for(base: torch.nn.Module) -> dict:
    """The row store shared by every training run on `base` in this process."""
    return _STORES.setdefault(base, {})


def frozen_layer_count(model: torch.nn.Module, adapted: list[int] | None, *, padding_free: bool) -> int:
    """How many bottom decoder layers the cache can stand in for; 0 where it cannot serve the run exactly:
    adapters on every layer (or the bottom one), padded batches (rows are found by their position ids), a model
    without a `get_decoder().layers` stack, or dropout below the adapters (a row's output would change per draw)."""
    if not adapted or min(adapted) == 0 or not padding_free:
        return 0
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList) or len(layers) <= min(adapted):
        return 0
    config = getattr(model, "config", None)
    settings = config.to_dict() if config is not None else {}
    config_dropouts = [v for k, v in settings.items() if "dropout" in k and isinstance(v, (int, float))]
    module_dropouts = [
        m.p for layer in layers[: min(adapted)] for m in layer.modules() if isinstance(m, torch.nn.Dropout)
    ]
    if any(p > 0 for p in config_dropouts + module_dropouts):
        return 0
    return min(adapted)


class _Skip(torch.nn.Module):
    """A decoder layer whose work `_FrozenPrefix` has already done: hidden states pass through."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


class _FrozenPrefix(torch.nn.Module):
    """Stands in for decoder layers 0..n-1: a batch whose rows are all stored is answered from the store; otherwise
    the original layers run on the whole batch, as without the cache, and each row's slice is stored."""

    def __init__(self, layers: list[torch.nn.Module], store: dict, config):
        super().__init__()
        self.config = config
        self._layers = list(layers)  # not submodules: the model's parameter names stay as they are
        self._store = store
        self.input_ids: torch.Tensor | None = None

    def see_ids(self, module, args, kwargs):
        """Forward pre-hook on the decoder: the token ids of the batch about to run."""
        self.input_ids = kwargs.get("input_ids", args[0] if args else None)

    def _rows(self, hidden_states: torch.Tensor, position_ids: torch.Tensor | None) -> list[tuple] | None:
        """(start, end, key) per packed row of a one-row batch; None when the rows cannot be told apart."""
        ids = self.input_ids
        if ids is None or ids.shape[0] != 1 or ids.shape[1] != hidden_states.shape[1]:
            return None
        starts = [0] if position_ids is None else (position_ids[0] == 0).nonzero().flatten().tolist()
        if not starts or starts[0] != 0:
            return None
        device = hidden_states.device.type
        precision = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
        bounds = zip(starts, starts[1:] + [ids.shape[1]])
        flat = ids[0].tolist()
        return [(s, e, (len(self._layers), precision, tuple(flat[s:e]))) for s, e in bounds]

    def _count(self, hidden_states: torch.Tensor) -> None:
        """The bottom layers' forward FLOPs towards the open stage (`flops.record`), as the uncached model's."""
        device = hidden_states.device.type
        bf16 = torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == torch.bfloat16
        lengths = [hidden_states.shape[1]] * hidden_states.shape[0]
        done = flops.forward_flops(self.config, lengths, layers=len(self._layers), head_tokens=0)
        flops.record(done, "bf16" if bf16 else "fp32")

    def forward(self, hidden_states, *args, position_ids=None, **kwargs):
        rows = self._rows(hidden_states, position_ids)
        if rows is not None and all(key in self._store for _, _, key in rows):
            return torch.cat([self._store[key] for _, _, key in rows]).unsqueeze(0)
        for layer in self._layers:
            hidden_states = layer(hidden_states, *args, position_ids=position_ids, **kwargs)
        self._count(hidden_states)
        for start, end, key in rows or ():
            self._store.setdefault(key, hidden_states[0, start:end].detach().clone())
        return hidden_states


@contextmanager
def frozen_prefix(model: torch.nn.Module, n_frozen: int, store: dict):
    """Within the block, decoder layers 0..n_frozen-1 of `model` (a causal LM, PEFT-wrapped or not) are served from
    `store`; on exit the original layers are back in place."""
    if n_frozen <= 0:
        yield
        return
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = base.get_decoder()
    originals = [decoder.layers[i] for i in range(n_frozen)]
    prefix = _FrozenPrefix(originals, store, base.config)
    hook = decoder.register_forward_pre_hook(prefix.see_ids, with_kwargs=True)
    for i in range(n_frozen):
        decoder.layers[i] = prefix if i == 0 else _Skip()
    try:
        yield
    finally:
        hook.remove()
        for i, layer in enumerate(originals):
            decoder.layers[i] = layer
