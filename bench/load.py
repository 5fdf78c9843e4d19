"""Model load: `load_model()` from the safetensors cache vs converting the embedded GGUF from scratch.

    python bench/load.py [--quick] [--repeats N]

  cached      `load_model("smollm2-135m-instruct")` with the cache in place (the real cache, ~/.cache/safety_lab
              or $SAFETY_LAB_CACHE): size/mtime check of the cached files against the manifest written at
              conversion, then from_pretrained(safetensors)
  conversion  the same call with SAFETY_LAB_CACHE pointing at a fresh temporary folder, so it dequantises the Q4_1
              GGUF, saves safetensors + tokenizer, hashes them, then loads (what the first run on a machine pays)

Both run in this process after a warm-up load (imports and the page cache are warm for both). Also timed: the cache
check alone (`_cache_is_valid`) and the full re-hash that `--verify-cache` asks for (`verify=True`).
Target (issue 14): >= 40x.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import _common as C

from safety_lab.models import base as models  # noqa: E402


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 cached loads, 1 conversion")
    parser.add_argument(
        "--repeats", type=int, default=None, help="cached loads (default 5, quick 3); conversions: 2 (quick 1)"
    )
    args = parser.parse_args()
    repeats = args.repeats or (3 if args.quick else 5)
    conversions = 1 if args.quick else 2

    print("machine:", C.machine())
    models.load_base()  # warm-up: imports, page cache; also creates the real cache if missing
    target = models.ensure_default_model()
    size = sum(p.stat().st_size for p in target.iterdir() if p.is_file())
    cached = [timed(models.load_base) for _ in range(repeats)]
    checksum = [timed(lambda: models._cache_is_valid(target)) for _ in range(repeats)]
    verify = [timed(lambda: models._cache_is_valid(target, verify=True)) for _ in range(min(repeats, 2))]

    converted = []
    saved = os.environ.get("SAFETY_LAB_CACHE")
    try:
        for _ in range(conversions):
            with tempfile.TemporaryDirectory(prefix="bench-cache-") as tmp:
                os.environ["SAFETY_LAB_CACHE"] = tmp
                converted.append(timed(models.load_base))
    finally:
        if saved is None:
            os.environ.pop("SAFETY_LAB_CACHE", None)
        else:
            os.environ["SAFETY_LAB_CACHE"] = saved

    c, s, v = statistics.median(cached), statistics.median(checksum), statistics.median(converted)
    h = statistics.median(verify)
    speedup = v / c
    print(f"\ncached load        {c:6.2f} s (median of {repeats}: {', '.join(f'{x:.2f}' for x in cached)})")
    print(f"  of which check   {s:6.3f} s (size + mtime of the cached files)")
    print(f"--verify-cache     {h:6.2f} s more ({size / 1e6:.0f} MB re-hashed; what every load paid before)")
    print(f"conversion + load  {v:6.2f} s ({', '.join(f'{x:.2f}' for x in converted)})")
    print(
        f"{C.verdict(speedup >= 40)}  speed-up {speedup:.1f}x  (target >= 40x); "
        f"with the full re-hash it would be {v / (c - s + h):.1f}x"
    )

    C.save(
        "load",
        args.quick,
        {
            "cached_s": c,
            "cached_all": cached,
            "check_s": s,
            "verify_s": h,
            "cache_bytes": size,
            "conversion_s": v,
            "conversion_all": converted,
            "speedup": speedup,
            "pass": {"speedup_40x": speedup >= 40},
        },
    )


if __name__ == "__main__":
    main()
