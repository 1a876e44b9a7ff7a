"""A new head's starting point, fitted on the training split before fine-tuning: fine-tuning then begins where a
linear model on the same inputs already is, instead of at random (and `keep_start.py` returns that start when
fine-tuning does not improve on it). The CTR model's id biases start at a
logistic regression of the clicks on identity; a demographic classifier at a logistic regression of the frozen user
vectors (a linear probe, then fine-tuning: "LP-FT", Kumar et al., 2022). The penalties are chosen on the validation
split, as the baselines' are (`reproduce.baselines`)."""

from __future__ import annotations

import logging

import numpy as np
import torch

from .modeling_ptum import IGNORE_INDEX

HEAD_C_GRID = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0)  # the C of the demographic baselines and the probe too
CTR_C_GRID = (0.03, 0.1, 0.3, 1.0, 3.0)  # the C of the CTR baselines
ID_BIAS_L2_GRID = (30.0, 10.0, 3.0, 1.0, 1 / 3)  # about 1 / C over CTR_C_GRID, from the strongest penalty
logger = logging.getLogger(__name__)


def fit_id_biases(model, collator, train, validation, l2: float | None = None, new_head: bool = True) -> float:
    """Start the CTR model's id biases at the logistic regression of `train`'s clicks on identity
    (`PTUMForCTR.fit_id_biases`), its L2 penalty `l2` or, when None, the one of `ID_BIAS_L2_GRID` whose popularity
    model scores the highest AUC on `validation` (the first on a tie). A `new_head`'s user/ad score starts at 0 (its
    ad projection zeroed; its gradient is not), so that the start is that popularity model exactly, not plus a random
    score; a checkpoint's trained CTR head keeps its own. Returns the penalty used."""
    from sklearn.metrics import roc_auc_score

    if new_head:
        with torch.no_grad():
            model.ad_projection.weight.zero_()
            model.ad_projection.bias.zero_()
    targets = collator.id_bias_targets(train)
    if l2 is not None:
        model.fit_id_biases(**targets, l2=l2)
        return l2
    held = collator.id_bias_targets(validation)
    labels = held.pop("labels").numpy()
    if len(np.unique(labels)) < 2:
        logger.warning("the validation impressions hold one class: id biases fitted with l2 1, not chosen")
        model.fit_id_biases(**targets, l2=1.0)
        return 1.0
    best = None
    for value in ID_BIAS_L2_GRID:
        model.fit_id_biases(**targets, l2=value)
        score = roc_auc_score(labels, model.id_bias_logits(**held).numpy())
        if best is None or score > best[0]:
            best = (score, value)
    if best[1] != ID_BIAS_L2_GRID[-1]:
        model.fit_id_biases(**targets, l2=best[1])
    logger.info("id biases fitted with l2 %g (validation AUC of identity alone %.4f)", best[1], best[0])
    return best[1]


@torch.no_grad()
def classifier_inputs(model, collator, users, batch_size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """What a `PTUMForDemographicClassification`'s classifier reads for each of `users` in eval mode (caught on its
    way in, so that it is whatever `forward` gives the classifier), (N, hidden_size), and their labels (N, heads),
    -100 where missing."""
    if not len(users):
        raise ValueError("fitting a head needs at least one user in each of its training and validation splits")
    was_training, features, labels = model.training, [], []
    hook = model.classifier.register_forward_pre_hook(lambda _, inputs: features.append(inputs[0].float().cpu()))
    model.eval()
    try:
        for start in range(0, len(users), batch_size):
            batch = collator([users[i] for i in range(start, min(start + batch_size, len(users)))])
            labels.append(batch.pop("labels").numpy())
            model(**{name: value.to(model.device) for name, value in batch.items()})
    finally:
        hook.remove()
        model.train(was_training)
    return torch.cat(features).numpy().astype(np.float64), np.concatenate(labels)


def fit_classifier(model, collator, train, validation, batch_size: int = 128) -> dict[str, float]:
    """Start each label head of a `PTUMForDemographicClassification` at a logistic regression of its classifier's
    inputs on `train`'s labels (features standardised over the training users, C of `HEAD_C_GRID` chosen on
    `validation` by macro-F1, as the probe is fitted), folded into `model.classifier`. A head whose training users
    hold a single class, or whose validation users have no label, keeps its random start. Returns {head: C}."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.preprocessing import StandardScaler

    x_train, y_train = classifier_inputs(model, collator, train, batch_size)
    x_val, y_val = classifier_inputs(model, collator, validation, batch_size)
    scaler = StandardScaler().fit(x_train)  # leaves (near-)constant features unscaled
    mean, scale = scaler.mean_, scaler.scale_
    z_train, z_val = scaler.transform(x_train), scaler.transform(x_val)
    chosen, first = {}, 0
    for column, (head, classes) in enumerate(model.config.label_heads.items()):
        rows, first = slice(first, first + classes), first + classes
        keep, keep_val = y_train[:, column] != IGNORE_INDEX, y_val[:, column] != IGNORE_INDEX
        targets, targets_val = y_train[keep, column], y_val[keep_val, column]
        if len(np.unique(targets)) < 2 or not keep_val.any():
            logger.warning("head %s keeps its random start: too few classes or validation labels to fit it", head)
            continue
        best = None
        for c in HEAD_C_GRID:
            fitted = LogisticRegression(C=c, max_iter=2000).fit(z_train[keep], targets)
            score = f1_score(targets_val, fitted.predict(z_val[keep_val]), average="macro")
            if best is None or score > best[0]:
                best = (score, c, fitted)
        score, chosen[head], fitted = best
        coef, intercept = fitted.coef_, fitted.intercept_
        if len(fitted.classes_) == 2:  # one score s: softmax over (-s/2, s/2) is sigmoid(s)
            coef, intercept = np.concatenate([-coef, coef]) / 2, np.array([-intercept[0], intercept[0]]) / 2
        weight = np.zeros((classes, len(mean)))
        # A class no training user has: 10 below the least likely class for the mean training user.
        bias = np.full(classes, intercept.min() - 10.0)
        weight[fitted.classes_] = coef / scale  # the standardisation folded into the linear map
        bias[fitted.classes_] = intercept - (coef / scale) @ mean
        with torch.no_grad():
            model.classifier.weight[rows] = torch.as_tensor(weight, dtype=model.classifier.weight.dtype)
            model.classifier.bias[rows] = torch.as_tensor(bias, dtype=model.classifier.bias.dtype)
        logger.info("head %s fitted with C %g (validation macro-F1 %.4f)", head, chosen[head], score)
    return chosen
