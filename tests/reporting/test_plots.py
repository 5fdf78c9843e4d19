from safety_lab.evaluation.metrics import drift_summary, reliability_curve
from safety_lab.reporting.plots import asr_bars, drift_bars, reliability_diagram

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path):
    data = path.read_bytes()
    return len(data) > 1000 and data[:8] == PNG_MAGIC


def test_reliability_diagram(tmp_path):
    curve = reliability_curve([1, 0, 1, 1, 0, 1], [0.9, 0.8, 0.65, 0.3, 0.2, 1.0], n_bins=10)
    out = reliability_diagram(curve, tmp_path / "sub" / "rel.png", title="MC calibration")
    assert out == tmp_path / "sub" / "rel.png" and _is_png(out)
    assert _is_png(reliability_diagram([], tmp_path / "empty.png"))


def test_asr_bars(tmp_path):
    entries = [("reference", 0.41, 0.36, 0.46), ("current", 0.94, 0.91, 0.96)]
    out = asr_bars(entries, tmp_path / "asr.png")
    assert _is_png(out)


def test_drift_bars(tmp_path):
    rows = [{"prompt_type": t, "correct": c} for t in ("base", "false_info", "random_info") for c in (True, False)]
    summaries = {"base": drift_summary(rows), "tuned": drift_summary([r for r in rows if r["prompt_type"] != "random_info"])}
    out = drift_bars(summaries, str(tmp_path / "drift.png"))
    assert _is_png(out)


def test_uncertainty_bars_writes_a_png(tmp_path):
    from safety_lab.reporting.plots import uncertainty_bars

    out = uncertainty_bars({"base": {"drift_entropy_base_correct": 0.4, "drift_entropy_base_incorrect": 0.9},
                            "harmful": {"drift_entropy_base_correct": 0.6}}, tmp_path / "u.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
