"""One progress bar per training run: Transformers' bar without its per-step log lines and nested evaluation bars."""

from __future__ import annotations


def one_bar():
    """A ProgressCallback class that draws the step bar only (losses go to MLflow through the stage's callbacks)."""
    from transformers.trainer_callback import ProgressCallback

    class _Bar(ProgressCallback):
        def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
            pass

        def on_log(self, args, state, control, logs=None, **kwargs):
            pass

    return _Bar
