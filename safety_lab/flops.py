"""FLOPs of a decoder from its config and the tokens it processed, the machine's matmul peak, and a per-stage tally.

Counted as the usual model-FLOPs rule: 2 FLOPs per weight per token through the linear layers, plus the attention
scores and values (QK^T and AV, 4 * length^2 * width per row and layer, as the kernels compute the full square);
a backward pass through frozen weights costs one forward (the input gradients; no weight gradients), through
trained weights two. LoRA's own low-rank products (about 5% of a layer at r=16), norms, activations and rotary
embeddings are left out. Packed rows count as one row: the attention kernel computes the whole masked square.
"""

from __future__ import annotations

import contextvars
import json
import os
import platform
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

PROBE_SECONDS = 0.3  # the peak probe's timed budget per precision


def layer_params(config) -> int:
    """Weights of one decoder layer's linear maps (attention q, k, v, o and a gated MLP)."""
    hidden = config.hidden_size
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    kv = (getattr(config, "num_key_value_heads", None) or heads) * head_dim
    return hidden * heads * head_dim * 2 + 2 * hidden * kv + 3 * hidden * config.intermediate_size


def _attention_width(config) -> int:
    heads = config.num_attention_heads
    return heads * (getattr(config, "head_dim", None) or config.hidden_size // heads)


def forward_flops(config, row_lengths: list[int], *, layers: int | None = None, head_tokens: int | None = None) -> int:
    """FLOPs of one forward pass over packed rows of `row_lengths` through `layers` decoder layers (default all) and
    the LM head on `head_tokens` positions (default every token)."""
    layers = config.num_hidden_layers if layers is None else layers
    tokens = sum(row_lengths)
    head_tokens = tokens if head_tokens is None else head_tokens
    per_layer = 2 * layer_params(config) * tokens + 4 * _attention_width(config) * sum(n * n for n in row_lengths)
    return layers * per_layer + 2 * config.hidden_size * config.vocab_size * head_tokens


def training_flops(config, row_lengths: list[int], *, run: int, backward: int, head_tokens: int) -> int:
    """A LoRA training step: forward through the top `run` layers and the head on `head_tokens` positions, then the
    input gradients (one forward's worth: the base weights are frozen) through the head and the top `backward`
    layers."""
    forward = forward_flops(config, row_lengths, layers=run, head_tokens=head_tokens)
    return forward + forward_flops(config, row_lengths, layers=backward, head_tokens=head_tokens)


def generation_flops(config, prompt_lengths: list[int], new_tokens: list[int]) -> int:
    """Greedy generation: each prompt's prefill (head on its last position) and one position per new token, which
    attends to the whole context so far."""
    total = 0
    for prompt, new in zip(prompt_lengths, new_tokens):
        total += forward_flops(config, [prompt], head_tokens=1)
        if new:
            step = forward_flops(config, [1], head_tokens=1)
            contexts = sum(prompt + i for i in range(new))
            total += new * step + config.num_hidden_layers * 4 * _attention_width(config) * contexts
    return total


# --------------------------------------------------------------------------------------------- peak of this machine
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _peak_file() -> Path:
    return Path(os.environ.get("SAFETY_LAB_CACHE", Path.home() / ".cache" / "safety_lab")) / "peak_gflops.json"


def probe_peak(precision: str, *, n: int = 1024, seconds: float = PROBE_SECONDS) -> float:
    """GFLOP/s of the best timed n x n x n torch.mm in `precision` (fp32 or bf16) on this machine's threads."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)  # warm-up: thread pool, packing buffers
    best, end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


_PROBED: dict[tuple[str, str], float] = {}  # (cache file, key) -> this process's read


def peak_gflops(precision: str) -> float:
    """This machine's matmul peak in `precision`: the best read of any run (key: CPU model, precision, torch version,
    threads). Each process probes once and the cache keeps the highest read, so a first probe taken while other
    jobs held the cores (a read at half the peak was seen) is replaced by the next quieter one."""
    import torch

    key = f"{cpu_model()}|{precision}|{torch.__version__}|{torch.get_num_threads()} threads"
    path = _peak_file()
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if (str(path), key) not in _PROBED:
        read = _PROBED[str(path), key] = round(probe_peak(precision), 1)
        if read > known.get(key, 0.0):
            known[key] = read
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(known, indent=1, sort_keys=True))
    return float(max(known.get(key, 0.0), _PROBED[str(path), key]))


# ------------------------------------------------------------------------------------------------ per-stage tally
@dataclass
class Work:
    """FLOPs done within one stage, by precision."""

    flops: dict[str, int] = field(default_factory=dict)

    def add(self, flops: int, precision: str) -> None:
        self.flops[precision] = self.flops.get(precision, 0) + int(flops)

    def total(self) -> int:
        return sum(self.flops.values())

    def peak_seconds(self) -> float:
        """Seconds the machine's peak would need for this work (each precision at its own peak)."""
        return sum(f / (peak_gflops(p) * 1e9) for p, f in self.flops.items() if f)


_OPEN: contextvars.ContextVar[tuple[Work, ...]] = contextvars.ContextVar("safety_lab_flops_open", default=())


@contextmanager
def tally(work: Work):
    """Within the block, `record` adds to `work` (and to every enclosing tally: stages nest)."""
    token = _OPEN.set(_OPEN.get() + (work,))
    try:
        yield work
    finally:
        _OPEN.reset(token)


def precision_of(model) -> str:
    """The precision a model's matmuls run in, as `record` and `peak_gflops` name it: its weights' dtype."""
    import torch

    dtype = getattr(model, "dtype", None) or next(model.parameters()).dtype
    return "bf16" if dtype == torch.bfloat16 else "fp32"


def record(flops: int, precision: str = "fp32") -> None:
    """Count `flops` done in `precision` towards every open tally (none open: nothing is kept)."""
    for work in _OPEN.get():
        work.add(flops, precision)
