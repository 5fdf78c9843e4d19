"""Agreement of the offline judges with Llama Guard 3 on the HarmBench reference completions, per model.

    python bench/judge_agreement.py [--quick] [--reference-dir ../shared/reference/harmbench_llama_guard]
                                    [--external FILE.csv ...]

Reads the reference parquets in place (they hold harmful text: never copy them). Per model and pooled:
- gcg and keyword, the attack-success judges: verdict "complied" against Llama Guard "unsafe";
- is_refusal, the refusal detector: "refused" against Llama Guard "safe". Llama Guard labels harm, not
  refusal, so a harmless compliance labelled "safe" counts as a disagreement here; the rows where the two
  differ are listed (first 100 characters) so they can be read and judged by hand.
--external: CSV files of completions labelled by people, in XSTest's format (columns `completion` and
`final_label` = 1_full_compliance / 2_full_refusal / 3_partial_refusal) or with `response` and `refused`
(true/false) columns; a partial refusal counts as a refusal, as in XSTest's refusal rate.
--quick judges every 4th row of each file.
Also: the keyword judge's three-way label counts per model, and every judge on the held-apart judge test set
(tests/fixtures/judge_cases.jsonl: three-way accuracy, compliance agreement, is_refusal agreement).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from safety_lab.errors import SafetyLabError  # noqa: E402
from safety_lab.evaluation.judges import LABELS, agreement_report, get_judge, is_refusal  # noqa: E402

DEFAULT_REFERENCE = ROOT.parent / "shared" / "reference" / "harmbench_llama_guard"
JUDGE_CASES = ROOT / "tests" / "fixtures" / "judge_cases.jsonl"
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


def load_external(path: Path) -> tuple[list[str], list[bool]]:
    """(responses, a person says it refused) from an XSTest-format or response/refused CSV."""
    import pandas as pd

    frame = pd.read_csv(path)
    if {"completion", "final_label"} <= set(frame.columns):
        labels = frame["final_label"].astype(str).str.strip()
        return frame["completion"].fillna("").tolist(), (~labels.str.startswith("1")).tolist()
    if {"response", "refused"} <= set(frame.columns):
        flags = frame["refused"].astype(str).str.strip().str.lower().isin(["true", "1", "yes"])
        return frame["response"].fillna("").tolist(), flags.tolist()
    raise SafetyLabError("external", f"{path.name}: needs columns completion + final_label, or response + refused")


def _table(title: str, rows: dict[str, dict[str, tuple[float, float]]]) -> None:
    """rows: {subset: {judge: (agreement, kappa)}} printed as one line per subset."""
    judges = list(next(iter(rows.values())))
    print(f"=== {title}")
    print(f"{'subset':<22}" + "".join(f" {'agree ' + j:>18} {'kappa ' + j:>18}" for j in judges))
    for subset, cells in rows.items():
        print(f"{subset:<22}" + "".join(f" {cells[j][0]:18.4f} {cells[j][1]:18.4f}" for j in judges))
    print()


def reference_agreement(data: dict) -> dict[str, dict[str, tuple[float, float]]]:
    """Per model and pooled (agreement, kappa) of gcg, keyword and is_refusal with Llama Guard."""
    verdicts: dict[str, dict[str, list[bool]]] = {}
    for name in JUDGE_NAMES:
        judge = get_judge(name)
        start = time.perf_counter()
        verdicts[name] = {m: judge.judge(p, r) for m, (p, r, _) in data.items()}
        print(
            f"judge {name}: {sum(len(v) for v in verdicts[name].values())} completions "
            f"in {time.perf_counter() - start:.2f} s"
        )
    # is_refusal answers "did it refuse?": compare "did not refuse" with "unsafe" (the same agreement as
    # "refused" against "safe").
    verdicts["is_refusal"] = {m: [not is_refusal(x) for x in r] for m, (_, r, _) in data.items()}
    rows: dict[str, dict[str, tuple[float, float]]] = {}
    for subset in [*data, "pooled"]:
        rows[subset] = {}
        for name, per_model in verdicts.items():
            models = list(data) if subset == "pooled" else [subset]
            report = agreement_report(
                [v for m in models for v in per_model[m]], [v for m in models for v in data[m][2]]
            )
            rows[subset][name] = (report.agreement, report.kappa)
    return rows


def label_counts(data: dict) -> None:
    """The keyword judge's refusal / compliance / non_answer counts per model, split by Llama Guard's verdict."""
    judge = get_judge("keyword")
    print("=== keyword labels per model (Llama Guard unsafe / safe)")
    for model, (prompts, responses, unsafe) in data.items():
        counts = Counter(zip(judge.label(prompts, responses), unsafe))
        cells = "  ".join(f"{label} {counts[(label, True)]}/{counts[(label, False)]}" for label in LABELS)
        print(f"  {model:<18} {cells}")
    print()


def judge_case_agreement(path: Path = JUDGE_CASES) -> None:
    """Every judge on the held-apart judge test set: three-way accuracy, compliance and is_refusal agreement."""
    rows = [
        r for r in (json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()) if "header" not in r
    ]
    prompts, responses = [r["prompt"] for r in rows], [r["response"] for r in rows]
    truth = [r["label"] for r in rows]
    print(f"=== held-apart judge test set ({len(rows)} rows: {dict(Counter(truth))})")
    for name in JUDGE_NAMES:
        labels = get_judge(name).label(prompts, responses)
        exact = sum(a == b for a, b in zip(labels, truth)) / len(rows)
        report = agreement_report([x == "compliance" for x in labels], [t == "compliance" for t in truth])
        print(f"  {name:<10} three-way {exact:.3f}  compliance agree {report.agreement:.3f} kappa {report.kappa:.3f}")
    report = agreement_report([is_refusal(r) for r in responses], [t == "refusal" for t in truth])
    print(f"  is_refusal  refusal agree {report.agreement:.3f} kappa {report.kappa:.3f}")
    print()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="judge every 4th row only")
    parser.add_argument("--reference-dir", type=Path, default=DEFAULT_REFERENCE, help="folder of the parquets")
    parser.add_argument("--external", type=Path, action="append", default=[], help="human-labelled CSV (repeatable)")
    args = parser.parse_args(argv)
    if not args.reference_dir.is_dir():
        print(f"error: reference_dir: no such folder: {args.reference_dir}", file=sys.stderr)
        return 2

    judge_case_agreement()
    data = load_reference(args.reference_dir, step=4 if args.quick else 1)
    _table(
        "agreement with Llama Guard 3 (gcg/keyword: complied vs unsafe; is_refusal: refused vs safe)",
        reference_agreement(data),
    )
    label_counts(data)
    print("=== is_refusal vs Llama Guard: the disagreements, to read by hand")
    for model, (_, responses, unsafe) in data.items():
        for response, u in zip(responses, unsafe):
            refused = is_refusal(response)
            if refused != u:  # agreement: refused and "safe", or answered and "unsafe"
                continue
            print(
                f"  {model:<18} {'refusal' if refused else 'answer':<8} LG={'unsafe' if u else 'safe':<6} "
                f"| {response[:100]!r}"
            )
    print()
    external = {}
    for path in args.external:
        responses, refused = load_external(path)
        report = agreement_report([is_refusal(r) for r in responses], refused)
        external[path.stem] = {"is_refusal": (report.agreement, report.kappa)}
        print(f"--- {path.name}: people say {sum(refused)} of {len(refused)} refused\n{report.format()}")
    if external:
        _table("is_refusal against people's refusal labels", external)
    return 0


if __name__ == "__main__":
    sys.exit(main())
