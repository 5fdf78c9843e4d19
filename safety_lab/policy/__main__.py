"""`python -m safety_lab.policy --eval-split-sha256` prints the evaluation split's hash; `--seal` writes it into the
packaged default.yaml and bumps the policy's version when it changed (a change to eval data is a new policy)."""

from __future__ import annotations

import argparse
import re
import sys
from importlib import resources
from pathlib import Path

from safety_lab.data import eval_split_sha256

_HASH = re.compile(r"^eval_split_sha256: *(\S*) *$", re.MULTILINE)
_VERSION = re.compile(r"^version: *(\d+) *$", re.MULTILINE)


def seal(text: str, digest: str) -> tuple[str, bool]:
    """The policy text with `digest` as its eval_split_sha256 and the version bumped; unchanged if it already is."""
    found, version = _HASH.search(text), _VERSION.search(text)
    if found is None or version is None:
        raise ValueError("default.yaml has no top-level 'eval_split_sha256:' or 'version:' line")
    if found.group(1) == digest:
        return text, False
    text = _HASH.sub(f"eval_split_sha256: {digest}", text, count=1)
    return _VERSION.sub(f"version: {int(version.group(1)) + 1}", text, count=1), True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m safety_lab.policy", description=__doc__)
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--eval-split-sha256", action="store_true", help="print the evaluation split's sha256")
    action.add_argument("--seal", action="store_true", help="write it into the packaged default.yaml")
    args = parser.parse_args(argv)
    digest = eval_split_sha256()
    if args.eval_split_sha256:
        print(digest)
        return 0
    path = Path(str(resources.files("safety_lab.policy").joinpath("default.yaml")))
    text, changed = seal(path.read_text(encoding="utf-8"), digest)
    if changed:
        path.write_text(text, encoding="utf-8")
    print(f"{path}: eval_split_sha256 {digest}" + (" (version bumped)" if changed else " (already sealed)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
