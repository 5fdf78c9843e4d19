"""Figures for run reports. Render only: every number comes from safety_lab.evaluation.metrics.

Uses matplotlib's object API with the Agg canvas (no pyplot, no global backend switch, no
display needed); the tuning figures are Optuna's own (drawn with pyplot, released from it before they are returned).
Each function returns its ``Figure`` (for ``mlflow.log_figure(fig, "evaluation/asr.png")``)
and, given a ``path``, also writes it there as a PNG; ``png_bytes(fig)`` gives the PNG for embedding.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from safety_lab.errors import check

_PROMPT_TYPES = ("base", "false_info", "random_info")
_PROMPT_LABELS = {"base": "base", "false_info": "false info", "random_info": "random info"}
_DPI = 110


def _figure(**kw) -> Figure:
    fig = Figure(**kw)
    FigureCanvasAgg(fig)
    return fig


def _done(fig: Figure, path: str | Path | None) -> Figure:
    fig.tight_layout()
    if path is not None:
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, format="png", dpi=_DPI)
    return fig


def _finish(fig: Figure, ax, path, *, drawn: bool, ylim: tuple[float, float], ylabel: str, title: str) -> Figure:
    """Axis limits, labels and title; a "no data" note when nothing was drawn."""
    if not drawn:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylim(*ylim)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _done(fig, path)


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG bytes (what the safety card embeds as a base64 ``data:`` URI)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    return buf.getvalue()


def reliability_diagram(curve: Sequence[Sequence[float]], path: str | Path | None = None, *, title: str = "") -> Figure:
    """Bars of per-bin accuracy against the diagonal; ``curve`` from ``calibration.reliability_curve``."""
    fig = _figure(figsize=(5, 5))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
    if curve:
        lows = [float(b[0]) for b in curve]
        widths = [float(b[1]) - float(b[0]) for b in curve]
        counts = [int(b[2]) for b in curve]
        accs = [float(b[3]) for b in curve]
        confs = [float(b[4]) for b in curve]
        ax.bar(lows, accs, width=widths, align="edge", color="tab:blue", edgecolor="black", alpha=0.8, label="accuracy")
        ax.bar(
            lows,
            [c - a for a, c in zip(accs, confs)],
            bottom=accs,
            width=widths,
            align="edge",
            color="tab:red",
            alpha=0.25,
            edgecolor="tab:red",
            hatch="//",
            label="gap to confidence",
        )
        for x, w, a, n in zip(lows, widths, accs, counts):
            ax.text(x + w / 2, min(a + 0.02, 0.97), str(n), ha="center", va="bottom", fontsize=7)
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(title or "Reliability diagram")
    ax.legend(loc="upper left", fontsize=8)
    return _done(fig, path)


def asr_bars(
    entries: Sequence[tuple[str, float, float, float]],
    path: str | Path | None = None,
    *,
    title: str = "Attack success rate",
) -> Figure:
    """One bar per (label, asr, ci_low, ci_high) with its interval as an error bar."""
    for i, e in enumerate(entries):
        check(len(e) == 4, "entries", f"item {i} must be (label, asr, ci_low, ci_high)")
    fig = _figure(figsize=(max(4.0, 1.2 * len(entries) + 2), 4))
    ax = fig.add_subplot()
    if entries:
        labels = [str(e[0]) for e in entries]
        asr = [float(e[1]) for e in entries]
        err_low = [max(a - float(e[2]), 0.0) for a, e in zip(asr, entries)]
        err_high = [max(float(e[3]) - a, 0.0) for a, e in zip(asr, entries)]
        xs = range(len(entries))
        colors = [f"C{i % 10}" for i in xs]
        ax.bar(xs, asr, yerr=[err_low, err_high], capsize=6, color=colors, edgecolor="black")
        for x, a in zip(xs, asr):
            ax.text(x, a / 2 if a > 0.1 else a + 0.02, f"{a:.1%}", ha="center", va="center", fontsize=8)
        ax.set_xticks(list(xs))
        ax.set_xticklabels(labels, rotation=15 if len(labels) > 3 else 0)
    return _finish(fig, ax, path, drawn=bool(entries), ylim=(0, 1), ylabel="ASR (unsafe / total, 95% CI)", title=title)


def refusal_curve(
    points: Sequence[Mapping[str, float]],
    path: str | Path | None = None,
    *,
    chosen: Mapping[str, float] | None = None,
) -> Figure:
    """The refusal decision's trade-off: harmful prompts refused against safe prompts over-refused, one point per τ
    (``models.refusal.decision_curve``), and the point of the version's own τ (``chosen``) where it has one."""
    fig = _figure(figsize=(5, 4.5))
    ax = fig.add_subplot()
    xs, ys = [p["safe_refused"] for p in points], [p["unsafe_refused"] for p in points]
    ax.plot(xs, ys, marker="o", markersize=3, color="C0")
    for p in points[::3]:
        ax.annotate(
            f"τ={p['tau']:.2f}",
            (p["safe_refused"], p["unsafe_refused"]),
            fontsize=7,
            xytext=(4, -8),
            textcoords="offset points",
        )
    if chosen:
        ax.plot(
            [chosen["safe_refused"]],
            [chosen["unsafe_refused"]],
            marker="*",
            markersize=14,
            color="C3",
            label=f"this version, τ={chosen['tau']:.3f}",
        )
        ax.legend(loc="lower right", fontsize=8)
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey")
    ax.set_xlim(0, 1)
    ax.set_xlabel("safe prompts refused (over-refusal)")
    return _finish(
        fig,
        ax,
        path,
        drawn=bool(points),
        ylim=(0, 1.02),
        ylabel="harmful prompts refused",
        title="Refusal decision over τ",
    )


def drift_bars(
    summaries: Mapping[str, Mapping[str, float]],
    path: str | Path | None = None,
    *,
    title: str = "Knowledge drift: accuracy by prompt type",
) -> Figure:
    """Grouped bars of drift_accuracy_{prompt type} (shown in %) for each labelled summary."""
    present = [t for t in _PROMPT_TYPES if any(f"drift_accuracy_{t}" in s for s in summaries.values())]
    fig = _figure(figsize=(max(5.0, 2.0 + len(present) * (0.6 * len(summaries) + 0.6)), 4))
    ax = fig.add_subplot()
    if present and summaries:
        n = len(summaries)
        width = 0.8 / n
        for i, (label, summary) in enumerate(summaries.items()):
            xs = [j - 0.4 + width * (i + 0.5) for j in range(len(present))]
            values = [100.0 * float(summary.get(f"drift_accuracy_{t}", math.nan)) for t in present]
            bars = ax.bar(xs, values, width=width, label=str(label), color=f"C{i % 10}", edgecolor="black")
            for bar, v in zip(bars, values):
                if math.isfinite(v):
                    ax.text(bar.get_x() + bar.get_width() / 2, v + 1, f"{v:.1f}", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(list(range(len(present))))
        ax.set_xticklabels([_PROMPT_LABELS[t] for t in present])
        ax.legend(fontsize=8)
    return _finish(fig, ax, path, drawn=bool(present and summaries), ylim=(0, 100), ylabel="accuracy (%)", title=title)


def uncertainty_bars(
    summaries: Mapping[str, Mapping[str, float]], path: str | Path | None = None, *, measure: str = "entropy"
) -> Figure:
    """Grouped bars of drift_<measure>_<prompt type>_{correct,incorrect} for each labelled summary."""
    groups = [
        (t, g)
        for t in _PROMPT_TYPES
        for g in ("correct", "incorrect")
        if any(f"drift_{measure}_{t}_{g}" in s for s in summaries.values())
    ]
    fig = _figure(figsize=(max(6.0, 2.0 + len(groups) * (0.4 * len(summaries) + 0.4)), 4))
    ax = fig.add_subplot()
    width = 0.8 / max(len(summaries), 1)
    for i, (label, summary) in enumerate(summaries.items()):
        xs = [j - 0.4 + width * (i + 0.5) for j in range(len(groups))]
        values = [float(summary.get(f"drift_{measure}_{t}_{g}", math.nan)) for t, g in groups]
        ax.bar(xs, values, width=width, label=str(label), color=f"C{i % 10}", edgecolor="black")
    ax.set_xticks(list(range(len(groups))))
    ax.set_xticklabels([f"{_PROMPT_LABELS[t]}\n{g}" for t, g in groups], fontsize=7)
    if summaries:
        ax.legend(fontsize=8)
    ax.set_ylabel(measure)
    ax.set_title(f"Knowledge drift: {measure} of correct and incorrect answers")
    return _done(fig, path)


def pareto_front_plot(
    study, *, chosen: int, limits: tuple[float, float], title: str = "", path: str | Path | None = None
) -> Figure:
    """ASR against over-refusal for each completed trial of a safety study, by Optuna's `plot_pareto_front`: the front
    over all the study's objectives among the trials within its constraints (the tuning targets), the others greyed;
    with the ASR and over-refusal ``limits`` as dashed lines and the ``chosen`` trial marked with a star."""
    import optuna
    from optuna.visualization import matplotlib as ovm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        ax = ovm.plot_pareto_front(
            study,
            targets=lambda t: list(t.values[:2]),
            target_names=["ASR (tune split)", "over-refusal (benign + look-alike)"],
        )
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        label = f"{t.number}{' *' if t.number == chosen else ''}"
        ax.annotate(label, (t.values[0], t.values[1]), textcoords="offset points", xytext=(4, 4))
    ax.axvline(limits[0], ls="--", c="grey")
    ax.axhline(limits[1], ls="--", c="grey")
    ax.set_title(title or "Pareto front; * chosen")
    return _done(_released(ax.figure), path)


def study_plots(study) -> tuple[dict[str, Figure], dict[str, str]]:
    """Optuna's optimisation history and parameter importances (on the first objective, `asr`, for a multi-objective
    study) by file name, and for each plot Optuna cannot draw (importance needs two complete trials that differ) why."""
    import optuna
    from optuna.visualization import matplotlib as ovm

    target = {} if len(study.directions) == 1 else {"target": lambda t: t.values[0], "target_name": "asr"}
    plots = {"optuna_history.png": ovm.plot_optimization_history, "optuna_importance.png": ovm.plot_param_importances}
    figures, skipped = {}, {}
    for name, plot in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                ax = plot(study, **target)
        except (ValueError, RuntimeError) as exc:
            skipped[name] = str(exc)
            continue
        figures[name] = _done(_released(ax.figure if hasattr(ax, "figure") else ax[0].figure), None)
    return figures, skipped


def _released(fig: Figure) -> Figure:
    """An Optuna figure (made with pyplot), no longer held by pyplot: the caller owns it."""
    import matplotlib.pyplot as plt

    plt.close(fig)
    return fig


__all__ = [
    "asr_bars",
    "drift_bars",
    "pareto_front_plot",
    "png_bytes",
    "reliability_diagram",
    "study_plots",
    "uncertainty_bars",
]
