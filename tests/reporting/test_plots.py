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


def _safety_study(values):
    """A 3-objective study whose trials carry constraints against asr <= 0.2, over-refusal <= 0.1, knowledge <= 1."""
    import optuna

    limits = (0.2, 0.1, 1.0)
    sampler = optuna.samplers.TPESampler(seed=0, constraints_func=lambda t: t.user_attrs["constraints"])
    study = optuna.create_study(directions=["minimize"] * 3, sampler=sampler)

    def objective(trial):
        trial.suggest_float("lr", 1e-4, 1e-2, log=True)
        trial.set_user_attr("constraints", [v - t for v, t in zip(values[trial.number], limits)])
        return values[trial.number]

    study.optimize(objective, n_trials=len(values))
    return study


def test_pareto_front_plot_marks_the_chosen_trial_and_the_limits(tmp_path):
    from safety_lab.reporting.plots import pareto_front_plot

    study = _safety_study([(0.5, 0.0, 0.0), (0.15, 0.05, 0.1), (0.05, 0.08, 0.2), (0.1, 0.09, 0.5)])
    fig = pareto_front_plot(study, chosen=2, limits=(0.2, 0.1), title="front", path=tmp_path / "front.png")
    ax = fig.axes[0]
    assert isinstance(fig, Figure) and ax.get_title() == "front" and _is_png((tmp_path / "front.png").read_bytes())
    assert sorted(t.get_text() for t in ax.texts) == ["0", "1", "2 *", "3"]
    drawn = {c.get_label(): len(c.get_offsets()) for c in ax.collections}
    # the front: 1 and 2; 3 is dominated by 2; 0 is over the ASR bar
    assert drawn == {"Best Trial": 2, "Feasible Trial": 1, "Infeasible Trial": 1}
    assert ax.get_xlabel() == "ASR (tune split)" and ax.get_ylabel().startswith("over-refusal")
    assert {tuple(line.get_xdata()) for line in ax.lines} >= {(0.2, 0.2)}  # the ASR limit
    import matplotlib.pyplot as plt

    assert fig.number not in plt.get_fignums()  # released from pyplot: the caller owns it
    assert _is_png(png_bytes(fig))


def test_study_plots_give_optunas_figures_or_why_one_cannot_be_drawn(monkeypatch):
    from optuna.visualization import matplotlib as ovm

    from safety_lab.reporting.plots import study_plots

    study = _safety_study([(0.5, 0.0, 0.0), (0.1, 0.05, 0.1)])
    figures, skipped = study_plots(study)
    assert set(figures) == {"optuna_history.png", "optuna_importance.png"} and skipped == {}
    assert figures["optuna_history.png"].axes[0].get_ylabel() == "asr"  # a safety study: the history of ASR
    assert _is_png(png_bytes(figures["optuna_importance.png"]))

    def refuse(study, **kw):
        raise ValueError("needs more trials")

    monkeypatch.setattr(ovm, "plot_param_importances", refuse)
    figures, skipped = study_plots(study)
    assert set(figures) == {"optuna_history.png"} and skipped == {"optuna_importance.png": "needs more trials"}


def test_no_library_module_switches_the_matplotlib_backend():
    import re
    from pathlib import Path

    import safety_lab

    package = Path(safety_lab.__file__).resolve().parent
    found = [str(p) for p in package.rglob("*.py") if re.search(r"matplotlib\.use\(|\.switch_backend\(", p.read_text())]
    assert found == []


def test_refusal_curve_marks_the_versions_own_point(tmp_path):
    from safety_lab.models.refusal import decision_curve
    from safety_lab.reporting.plots import refusal_curve

    unsafe, safe = [0.9, 0.7, 0.4], [0.1, 0.3, 0.6]
    points = decision_curve(unsafe, safe, [0.2, 0.5, 0.8])
    chosen = decision_curve(unsafe, safe, [0.5])[0]
    fig = refusal_curve(points, tmp_path / "curve.png", chosen=chosen)
    (ax,) = fig.axes
    curve, star = ax.lines[0], ax.lines[1]
    assert list(curve.get_xdata()) == [p["safe_refused"] for p in points]
    assert list(star.get_ydata()) == [chosen["unsafe_refused"]] and "τ=0.500" in ax.get_legend().texts[0].get_text()
    assert (tmp_path / "curve.png").stat().st_size > 0
    assert refusal_curve([]).axes[0].texts[-1].get_text() == "no data"
