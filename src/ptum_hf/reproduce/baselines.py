"""What the user models are measured against, on exactly their splits: scikit-learn baselines (majority class, LR on
TF-IDF bags for demographics; item mean click rate, LR on one-hots, the untrained history-ad cosine for CTR) and the
linear probe on frozen user vectors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..data.dataset import columns
from ..data.splits import ctr_splits, demographics_splits
from .jobs import Context

DEMOGRAPHIC_HEADS = ("age", "gender")
SVD_RANKS = (32, 64, 128)  # chosen on the validation users, with C
PROBE_SETTING = "as SVD+LR"  # the probe's protocol, in its records' `setting`: `probe_split`


def demographic_baselines(
    ctx: Context,
    dataset: str,
    ratio: float,
    repeat: int,
    label_fraction=None,
    recent: int | None = None,
    only: tuple | None = None,
) -> dict:
    """`fit_demographic_baselines` on the user models' split (`demographics_splits`) of `dataset`: `ratio` of the
    labeled training users, or `label_fraction` of the scale setting's users."""
    name = ctx.data_name(dataset)
    data = ctx.data(name) if label_fraction is None else ctx.data(name, ctx.settings.scale_users)
    parts = demographics_splits(data, DEMOGRAPHIC_HEADS, label_fraction or ratio, repeat)
    return fit_demographic_baselines(data, *parts, recent=recent, only=only)


def fit_demographic_baselines(
    data, train, validation, test, recent: int | None = None, only: tuple | None = None
) -> dict:
    """Majority class and LR on TF-IDF bags (of items, and of the words of the behavior texts), fitted on `train`
    (C chosen on `validation`), scored on `test`: {variant: {metric: value}}.

    `svd_lr`: LR on the truncated SVD of the TF-IDF bag of items fitted on every user of `data` without labels
    (what pre-training also sees), L2-normalised; its rank is chosen on the validation users.
    With `recent`, also LR on the bag of each user's last `recent` items only (`lr_tfidf_last{recent}`): what the user
    models see, since they keep only the most recent `max_behaviors`. `only`: fit just these variants (and the
    majority class), e.g. the one a new history length adds."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.preprocessing import normalize

    def bag(keep=None):  # each user's items (only the last `keep` of them) as one document
        return lambda part: [" ".join(f"i{b}" for b in (ids[-keep:] if keep else ids)) for ids in part["behavior_ids"]]

    def fit_transform(vectorizer, docs):  # fitted on the training users only
        return [
            vectorizer.fit_transform(docs(train)),
            vectorizer.transform(docs(validation)),
            vectorizer.transform(docs(test)),
        ]

    items = dict(token_pattern=r"\S+", sublinear_tf=True, min_df=1)
    # The same model on the words of the behavior texts (what the user models read) instead of item identities.
    texts = lambda part: [" ".join(data.behaviors[b] for b in ids) for ids in part["behavior_ids"]]  # noqa: E731
    features = {"lr_tfidf": lambda: fit_transform(TfidfVectorizer(**items), bag())}  # made only where wanted
    if recent is not None:
        features[f"lr_tfidf_last{recent}"] = lambda: fit_transform(TfidfVectorizer(**items), bag(recent))
    features["lr_tfidf_words"] = lambda: fit_transform(TfidfVectorizer(sublinear_tf=True, min_df=2), texts)
    wanted = lambda variant: only is None or variant in only  # noqa: E731
    # variant -> [(choice, (train, val, test))]
    options = {variant: [({}, make())] for variant, make in features.items() if wanted(variant)}
    if not wanted("svd_lr"):
        return fit_heads(options, train, validation, test)
    everyone = TfidfVectorizer(**items)
    matrix = everyone.fit_transform(bag()(data.users))
    ranks = sorted({min(k, min(matrix.shape) - 1) for k in SVD_RANKS} - {0})
    parts = [everyone.transform(bag()(part)) for part in (train, validation, test)]
    options["svd_lr"] = []
    for rank in ranks:
        svd = TruncatedSVD(rank, random_state=0).fit(matrix)
        options["svd_lr"].append(({"rank": rank}, [normalize(svd.transform(x)) for x in parts]))
    return fit_heads(options, train, validation, test)


def fit_heads(options: dict, train, validation, test) -> dict:
    """The demographic heads fitted by LR on fixed features, one protocol for every feature set (the baselines and the
    probe): C, and which of a variant's feature options (the SVD rank, the probe's scaling), chosen on `validation` by
    macro-F1, scored on `test`.

    `options`: {variant: [(choice, (x_train, x_validation, x_test))]}, `choice` a dict of numbers recorded as
    `{head}_{key}` (e.g. {"rank": 32}). Returns {variant: {metric: value}}, with the majority class of `train` as
    "majority"."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    from ..head_fitting import HEAD_C_GRID  # one grid for the baselines, the probe and a fitted head

    out = {"majority": {}, **{variant: {} for variant in options}}
    for head in DEMOGRAPHIC_HEADS:
        y_train, y_val, y_test = (np.asarray(p[head], dtype=float) for p in (train, validation, test))
        keep_train, keep_val, keep_test = (~np.isnan(y) for y in (y_train, y_val, y_test))
        y_train, y_val, y_test = (
            y[k].astype(int) for y, k in ((y_train, keep_train), (y_val, keep_val), (y_test, keep_test))
        )
        majority = np.bincount(y_train).argmax()
        prediction = np.full(len(y_test), majority)
        out["majority"][f"{head}_accuracy"] = accuracy_score(y_test, prediction)
        out["majority"][f"{head}_macro_f1"] = f1_score(y_test, prediction, average="macro")
        if head == "gender":
            out["majority"]["gender_auc"] = 0.5
        for variant, choices in options.items():
            best = None
            if len(np.unique(y_train)) < 2 or not choices:  # a tiny --quick split
                out[variant].update({k: v for k, v in out["majority"].items() if k.startswith(head)})
                continue
            for choice, (x_train, x_val, x_test) in choices:
                for c in HEAD_C_GRID:  # C (and the option) chosen on the validation users
                    model = LogisticRegression(C=c, max_iter=2000, class_weight=None)
                    model.fit(x_train[keep_train], y_train)
                    score = f1_score(y_val, model.predict(x_val[keep_val]), average="macro")
                    if best is None or score > best[0]:
                        best = (score, c, model, choice, x_test)
            _, c, model, choice, x_test = best
            prediction = model.predict(x_test[keep_test])
            out[variant][f"{head}_accuracy"] = accuracy_score(y_test, prediction)
            out[variant][f"{head}_macro_f1"] = f1_score(y_test, prediction, average="macro")
            out[variant][f"{head}_C"] = c
            out[variant].update({f"{head}_{key}": value for key, value in choice.items()})
            if head == "gender":
                scores = model.predict_proba(x_test[keep_test])[:, 1]
                out[variant]["gender_auc"] = roc_auc_score(y_test, scores) if len(np.unique(y_test)) > 1 else math.nan
    for metrics in out.values():
        metrics["accuracy"] = float(np.mean([metrics["age_accuracy"], metrics["gender_accuracy"]]))
        metrics["macro_f1"] = float(np.mean([metrics["age_macro_f1"], metrics["gender_macro_f1"]]))
    return {v: {k: float(x) for k, x in m.items()} for v, m in out.items()}


def cosine_scores(data, part, max_behaviors: int) -> np.ndarray:
    """Untrained: cosine between the TF-IDF word vector of the user's last `max_behaviors` behaviors before the
    impression and that of the ad's texts (title, and description where there is one)."""
    import scipy.sparse as sp
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.preprocessing import normalize

    if not hasattr(data, "_reproduce_word_tfidf"):
        data._reproduce_word_tfidf = TfidfVectorizer(sublinear_tf=True).fit_transform(data.behaviors)
    words = data._reproduce_word_tfidf
    seq = data.sequences()
    users, ends, titles, descriptions = columns(part, "user_index", "history_end", "ad_title_id", "ad_description_id")
    rows, cols = [], []
    for row, (user, end) in enumerate(zip(users.tolist(), ends.tolist())):
        start = seq.offsets[user] + max(0, end - max_behaviors)
        ids = seq.behavior_ids[start : seq.offsets[user] + end]
        rows.extend([row] * len(ids))
        cols.extend(ids.tolist())
    history = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(users), words.shape[0])) @ words
    ads = words[titles]
    if (descriptions >= 0).any():
        extra = words[np.where(descriptions >= 0, descriptions, 0)].multiply((descriptions >= 0)[:, None])
        ads = ads + sp.csr_matrix(extra)
    return np.asarray(normalize(history).multiply(normalize(ads)).sum(axis=1)).ravel()


def ctr_baselines(ctx: Context, dataset: str, ratio: float, repeat: int, only=None) -> dict:
    """Item mean click rate (smoothed), LR on user + item one-hots, the matrix-factorisation-style LR (`mf_scores`),
    and the untrained history-ad TF-IDF cosine over the history the user models see, on the user models' CTR split."""
    import scipy.sparse as sp
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score, roc_auc_score

    from ..head_fitting import CTR_C_GRID

    name = ctx.data_name(dataset)
    data = ctx.data(name)
    history = ctx.settings.history_length
    train, validation, test = ctr_splits(data, ratio, repeat)
    (u_tr, i_tr, y_tr), (u_va, i_va, y_va), (u_te, i_te, y_te) = (
        columns(part, "user_index", "ad_title_id", "label") for part in (train, validation, test)
    )
    prior, strength = y_tr.mean(), 5.0
    clicks, shows = {}, {}
    for item, label in zip(i_tr.tolist(), y_tr.tolist()):
        clicks[item] = clicks.get(item, 0) + label
        shows[item] = shows.get(item, 0) + 1
    item_mean = lambda items: np.array(
        [
            (clicks.get(i, 0) + strength * prior) / (shows.get(i, 0) + strength)  # noqa
            for i in items.tolist()
        ]
    )
    n_users, n_items = len(data.users), len(data.behaviors)

    def features(users, items):
        rows = np.arange(len(users))
        user_part = sp.csr_matrix((np.ones(len(users)), (rows, users)), shape=(len(users), n_users))
        item_part = sp.csr_matrix((np.ones(len(items)), (rows, items)), shape=(len(items), n_items))
        return sp.hstack([user_part, item_part]).tocsr()

    def scores(y, p):
        ok = len(np.unique(y)) > 1
        return {
            "auc": roc_auc_score(y, p) if ok else math.nan,
            "ap": average_precision_score(y, p) if y.any() else math.nan,
        }

    if only == ("cosine_tfidf",):
        return {"cosine_tfidf": {k: float(x) for k, x in scores(y_te, cosine_scores(data, test, history)).items()}}
    out = {"item_mean": scores(y_te, item_mean(i_te)), "cosine_tfidf": scores(y_te, cosine_scores(data, test, history))}
    best = None
    x_tr, x_va, x_te = features(u_tr, i_tr), features(u_va, i_va), features(u_te, i_te)
    if len(np.unique(y_tr)) > 1:
        for c in CTR_C_GRID:
            model = LogisticRegression(C=c, max_iter=2000).fit(x_tr, y_tr)
            score = scores(y_va, model.decision_function(x_va))["auc"]
            if best is None or (not math.isnan(score) and score > best[0]):
                best = (score, c, model)
        out["lr_user_item"] = {**scores(y_te, best[2].decision_function(x_te)), "C": best[1]}
    else:
        out["lr_user_item"] = dict(out["item_mean"])
    if only is None or "lr_mf" in only:
        out["lr_mf"] = mf_scores(data, (u_tr, i_tr, y_tr), (u_va, i_va, y_va), (u_te, i_te, y_te), features, scores)
    return {v: {k: float(x) for k, x in m.items()} for v, m in out.items()}


def mf_scores(data, train, validation, test, one_hots, scores) -> dict:
    """Matrix-factorisation-style LR: user and item one-hots plus the elementwise product of the user's and the
    item's factors from the truncated SVD of the TF-IDF user x item matrix of every user (no labels), so that LR
    learns a weighted user . item affinity beside the biases. Rank and C chosen on the validation impressions."""
    import scipy.sparse as sp
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from ..head_fitting import CTR_C_GRID

    vectorizer = TfidfVectorizer(token_pattern=r"\S+", sublinear_tf=True, min_df=1)
    matrix = vectorizer.fit_transform([" ".join(f"i{b}" for b in ids) for ids in data.users["behavior_ids"]])
    column = np.array([vectorizer.vocabulary_.get(f"i{b}", -1) for b in range(len(data.behaviors))])
    (u_tr, i_tr, y_tr), (u_va, i_va, y_va), (u_te, i_te, y_te) = train, validation, test
    if len(np.unique(y_tr)) < 2:  # a tiny --quick split
        return scores(y_te, np.zeros(len(y_te)))
    best = None
    for rank in sorted({min(k, min(matrix.shape) - 1) for k in SVD_RANKS} - {0}):
        svd = TruncatedSVD(rank, random_state=0).fit(matrix)
        users = svd.transform(matrix)
        items = np.vstack([svd.components_.T, np.zeros((1, rank))])[column]  # an item in no bag: no factors

        def features(u, i, users=users, items=items):  # bound now: `best` keeps the rank's own factors
            return sp.hstack([one_hots(u, i), sp.csr_matrix(users[u] * items[i])]).tocsr()

        x_tr, x_va = features(u_tr, i_tr), features(u_va, i_va)
        for c in CTR_C_GRID:
            model = LogisticRegression(C=c, max_iter=2000).fit(x_tr, y_tr)
            score = scores(y_va, model.decision_function(x_va))["auc"]
            if best is None or (not math.isnan(score) and score > best[0]):
                best = (score, c, rank, model, features)
    _, c, rank, model, features = best
    return {**scores(y_te, model.decision_function(features(u_te, i_te))), "C": c, "rank": rank}


def user_vectors(model_dir: Path, data, random_init: bool = False) -> np.ndarray:
    """Every user's vector from a pre-trained PTUM model (or the same architecture, random weights), in the order of
    `data.users`, with the library's embedding path (each behavior encoded once)."""
    import torch
    from transformers import AutoTokenizer

    from .. import PTUMConfig, PTUMModel
    from ..data import BehaviorTokenCache
    from ..embedding import iter_user_embeddings

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if random_init:
        torch.manual_seed(0)
        model = PTUMModel(PTUMConfig.from_pretrained(str(model_dir)))
    else:
        model = PTUMModel.from_pretrained(str(model_dir))
    cache = BehaviorTokenCache.build(data.behaviors, tokenizer, model.config.max_tokens_per_behavior)
    return np.concatenate([vectors for _, vectors in iter_user_embeddings(model, data, cache)])


def probe_scores(vectors: np.ndarray, data, ratio: float, repeat: int) -> dict:
    """The linear probe on the user models' split (`demographics_splits`) of `data`: `probe_split`."""
    return probe_split(vectors, data, demographics_splits(data, DEMOGRAPHIC_HEADS, ratio, repeat))


def probe_split(vectors: np.ndarray, data, parts) -> dict:
    """The linear probe: LR on fixed user vectors (`vectors[i]` is `data.users[i]`'s) on the (train, validation, test)
    `parts`, fitted as the SVD + LR baseline is (`fit_heads`). The vectors are L2-normalised as SVD's are, or
    standardised (centred and scaled on the training users), whichever scores better on the validation users (as
    SVD's rank is chosen): vectors with a large component shared by every user need the centring
    (`{head}_standardised` says which was chosen)."""
    from sklearn.preprocessing import StandardScaler, normalize

    index = {user: row for row, user in enumerate(data.users["user_id"])}
    x = [vectors[[index[u] for u in part["user_id"]]] for part in parts]
    scaler = StandardScaler().fit(x[0])
    choices = [
        ({"standardised": 0}, [normalize(v) for v in x]),
        ({"standardised": 1}, [scaler.transform(v) for v in x]),
    ]
    return fit_heads({"probe": choices}, *parts)["probe"]
