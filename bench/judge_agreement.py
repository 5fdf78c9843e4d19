"""Agreement of the offline judges (gcg, keyword) with Llama Guard 3 labels on the HarmBench reference completions.

    python bench/judge_agreement.py [--quick] [--reference-dir ../shared/reference/harmbench_llama_guard]

Reads the reference parquets in place. --quick judges every 4th row of each file.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from safety_lab.errors import SafetyLabError  # noqa: E402
from safety_lab.evaluation.judges import agreement_report, get_judge  # noqa: E402

DEFAULT_REFERENCE = ROOT.parent / "shared" / "reference" / "harmbench_llama_guard"
JUDGE_NAMES = ("gcg", "keyword")
LABEL_COLUMN = "llamaguard3.1_preds"


def load_reference(folder: Path, *, step: int = 1) -> dict[str, tuple[list[str], list[str], list[bool]]]:
    """{file stem: (prompts, responses, Llama Guard says unsafe)} for every parquet in folder."""
    import pandas as pd

    paths = sorted(folder.glob("*.parquet"))
    if not paths:
        raise SafetyLabError("reference_dir", f"no .parquet files in {folder}")
    data = {}
    for path in paths:
        frame = pd.read_parquet(path).iloc[::step]
        column = next((c for c in frame.columns if c.endswith("_completion")), None)
        if column is None or LABEL_COLUMN not in frame.columns:
            raise SafetyLabError("reference_dir", f"{path.name} lacks a *_completion or {LABEL_COLUMN!r} column")
        labels = frame[LABEL_COLUMN].fillna("").str.strip().str.lower().str.startswith("unsafe").tolist()
        data[path.stem] = (frame["Behavior"].fillna("").tolist(), frame[column].fillna("").tolist(), labels)
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="judge every 4th row only")
    parser.add_argument("--reference-dir", type=Path, default=DEFAULT_REFERENCE, help="folder of the parquets")
    args = parser.parse_args(argv)
    if not args.reference_dir.is_dir():
        print(f"error: reference_dir: no such folder: {args.reference_dir}", file=sys.stderr)
        return 2

    data = load_reference(args.reference_dir, step=4 if args.quick else 1)
    kappas: dict[str, dict[str, float]] = {}
    agreements: dict[str, dict[str, float]] = {}
    for name in JUDGE_NAMES:
        judge = get_judge(name)
        start = time.perf_counter()
        predicted = {model: judge.judge(p, r) for model, (p, r, _) in data.items()}
        seconds = time.perf_counter() - start
        parts = {model: agreement_report(predicted[model], labels) for model, (_, _, labels) in data.items()}
        overall = agreement_report([v for m in data for v in predicted[m]], [v for m in data for v in data[m][2]])
        kappas[name] = {"overall": overall.kappa, **{m: r.kappa for m, r in parts.items()}}
        agreements[name] = {"overall": overall.agreement, **{m: r.agreement for m, r in parts.items()}}
        print(f"=== judge {name}: {overall.n} completions judged in {seconds:.2f} s")
        print("--- overall\n" + overall.format())
        for model, report in parts.items():
            print(f"--- {model}\n" + report.format())
        print()

    print("=== keyword vs gcg (reference: Llama Guard 3)")
    print(f"{'subset':<20} {'agree gcg':>9} {'agree kw':>9} {'diff':>7} {'kappa gcg':>9} {'kappa kw':>9} {'diff':>7} {'ratio':>6}")
    for subset in kappas["gcg"]:
        ag, ak = agreements["gcg"][subset], agreements["keyword"][subset]
        kg, kk = kappas["gcg"][subset], kappas["keyword"][subset]
        ratio = f"{kk / kg:6.2f}" if kg > 0 else "   n/a"
        print(f"{subset:<20} {ag:9.4f} {ak:9.4f} {ak - ag:+7.4f} {kg:9.4f} {kk:9.4f} {kk - kg:+7.4f} {ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
