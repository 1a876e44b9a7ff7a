"""Model selection that counts the fitted start (`FinetuneArguments.keep_fitted_start`): the Trainer keeps its best
evaluated checkpoint, but the model it started from, a head fitted as a linear model (`head_fitting.py`), is no
checkpoint, so fine-tuning could return something worse on validation than what it began with."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from transformers import TrainerCallback

logger = logging.getLogger(__name__)


def metric_key(args) -> str:
    """The evaluation key of `args.metric_for_best_model`, as the Trainer reads it."""
    if not args.metric_for_best_model:
        raise ValueError("keeping the fitted start needs metric_for_best_model (the score that compares models)")
    name = args.metric_for_best_model
    return name if name.startswith("eval_") else f"eval_{name}"


def final_score(args, state) -> float | None:
    """The validation score of the model training ends with: its best checkpoint's when the Trainer loaded one, else
    the evaluation at the last step; None when that model was not evaluated."""
    key = metric_key(args)
    scores = {row["step"]: row[key] for row in state.log_history if key in row and row.get("step", 0) > 0}
    if args.load_best_model_at_end and state.best_model_checkpoint:
        return scores.get(int(Path(state.best_model_checkpoint).name.rsplit("-", 1)[-1]))
    return scores.get(state.global_step)


class KeepStartCallback(TrainerCallback):
    """Returns the model as training found it when it scores strictly better on `metric_for_best_model` than the
    model training ends with (a tie keeps the fine-tuned one). Needs `eval_on_start`, which scores the start; with
    `load_best_model_at_end` the Trainer has loaded its best checkpoint before `on_train_end`. `kept` says whether
    the start was returned."""

    def __init__(self):
        self.start, self.score, self.kept = None, None, False

    def on_train_begin(self, args, state, control, **kwargs):
        self.start, self.score, self.kept = None, None, False

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        if state.global_step == 0 and self.start is None:  # eval_on_start: before the first step
            key = metric_key(args)
            if key not in metrics:
                raise ValueError(f"metric_for_best_model {key!r} is not among the evaluation metrics {sorted(metrics)}")
            self.score = metrics[key]
            self.start = {name: value.detach().to("cpu", copy=True) for name, value in model.state_dict().items()}

    def on_train_end(self, args, state, control, model=None, **kwargs):
        start, self.start = self.start, None
        if start is None:
            return
        final = final_score(args, state)
        if final is None:
            logger.warning("fine-tuning's model was not evaluated: it is kept, not compared with the fitted start")
            return
        if (np.greater if args.greater_is_better else np.less)(self.score, final):
            model.load_state_dict(start)
            self.kept = True
            state.best_metric, state.best_model_checkpoint = self.score, None
            logger.warning(
                "returning the fitted start: its validation %s %.4f beats fine-tuning's %.4f",
                args.metric_for_best_model,
                self.score,
                final,
            )


def kept_fitted_start(trainer) -> bool:
    """Whether `trainer`'s last training returned its fitted start."""
    return any(isinstance(c, KeepStartCallback) and c.kept for c in trainer.callback_handler.callbacks)
