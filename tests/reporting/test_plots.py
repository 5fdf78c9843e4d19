from matplotlib.figure import Figure

from safety_lab.evaluation.calibration import reliability_curve
from safety_lab.evaluation.metrics import drift_summary
from safety_lab.reporting.plots import (
    asr_bars,
    drift_bars,
    png_bytes,
    reliability_diagram,
    uncertainty_bars,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(data: bytes) -> bool:
    return len(data) > 1000 and data[:8] == PNG_MAGIC


def test_reliability_diagram(tmp_path):
    curve = reliability_curve([1, 0, 1, 1, 0, 1], [0.9, 0.8, 0.65, 0.3, 0.2, 1.0], n_bins=10)
    fig = reliability_diagram(curve, tmp_path / "sub" / "rel.png", title="MC calibration")
    assert isinstance(fig, Figure) and fig.axes[0].get_title() == "MC calibration"
    assert _is_png((tmp_path / "sub" / "rel.png").read_bytes())  # the optional path is written too
    assert _is_png(png_bytes(reliability_diagram([])))


def test_asr_bars(tmp_path):
    entries = [("reference", 0.41, 0.36, 0.46), ("current", 0.94, 0.91, 0.96)]
    fig = asr_bars(entries)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["reference", "current"]
    assert _is_png(png_bytes(fig))
    assert not list(tmp_path.iterdir())  # no path: nothing written


def test_drift_bars(tmp_path):
    rows = [{"prompt_type": t, "correct": c} for t in ("base", "false_info", "random_info") for c in (True, False)]
    tuned = drift_summary([r for r in rows if r["prompt_type"] != "random_info"])
    summaries = {"base": drift_summary(rows), "tuned": tuned}
    drift_bars(summaries, str(tmp_path / "drift.png"))
    assert _is_png((tmp_path / "drift.png").read_bytes())


def test_uncertainty_bars_returns_a_figure():
    fig = uncertainty_bars(
        {
            "base": {"drift_entropy_base_correct": 0.4, "drift_entropy_base_incorrect": 0.9},
            "harmful": {"drift_entropy_base_correct": 0.6},
        }
    )
    assert png_bytes(fig)[:8] == PNG_MAGIC
    assert fig.axes[0].get_legend() is not None
