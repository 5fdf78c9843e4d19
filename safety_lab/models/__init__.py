"""Models: base models (embedded default, local directory, hub id) and registered versions (models:/ URIs)."""

from __future__ import annotations

from safety_lab.models.base import (
    DEFAULT_MODEL,
    PRECISIONS,
    LoadedModel,
    Precision,
    apply_adapters,
    bf16_native,
    cache_dir,
    dir_sha256,
    dtype_name,
    ensure_default_model,
    evaluation_precision,
    load_base,
    resolve_device,
    resolve_precision,
    to_precision,
    weights_sha256,
)
from safety_lab.models.registered import chain_sha256, load_registered, parse_uri, resolve_version


def load_model(
    spec: str = DEFAULT_MODEL,
    *,
    precision: Precision | None = None,
    trust_remote_code: bool = False,
    verify_cache: bool = False,
) -> LoadedModel:
    """Load any supported `base_model` spec: a registered version (models:/...) or a base model, on `precision`'s
    device and weight dtype (default: `resolve_precision()`)."""
    if (spec or "").strip().startswith("models:/"):
        return load_registered(spec.strip(), precision=precision, trust_remote_code=trust_remote_code)
    return load_base(spec, precision=precision, trust_remote_code=trust_remote_code, verify_cache=verify_cache)


__all__ = [
    "DEFAULT_MODEL",
    "PRECISIONS",
    "LoadedModel",
    "Precision",
    "apply_adapters",
    "bf16_native",
    "cache_dir",
    "chain_sha256",
    "dir_sha256",
    "dtype_name",
    "ensure_default_model",
    "evaluation_precision",
    "load_base",
    "load_model",
    "load_registered",
    "parse_uri",
    "resolve_device",
    "resolve_precision",
    "resolve_version",
    "to_precision",
    "weights_sha256",
]
