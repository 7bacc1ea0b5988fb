"""The lexical TF-IDF model: fit, scoring, pickle-free round trip, validation of untrusted tensors, and stacking."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from scipy.special import log_softmax

from scoreplex.errors import ConfigError, DataError, SuiteError
from scoreplex.lexical import (
    ABSENT_LOG_PROB,
    TENSOR_PREFIX,
    LexicalConfig,
    LexicalModel,
    combine_log_probs,
    stack_weight,
)
from scoreplex.metrics import quadratic_weighted_kappa
from scoreplex.tasks import Dimension, TaskSpec

KEYS = ["chlorophyll", "sunlight", "glucose"]
FILLER = "plants need water and they grow in the soil when it is warm outside today".split()
SPEC = TaskSpec(
    id="photo",
    dimensions=(Dimension("score", "ordinal", 4), Dimension("mentions_oxygen", "binary", 2)),
)


def synthetic(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Texts whose score is the number of key words used (0..3) and whose binary label is 'oxygen' mentioned."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for _ in range(n):
        k = int(rng.integers(0, 4))
        ox = int(rng.integers(0, 2))
        words = list(rng.choice(FILLER, size=6)) + KEYS[:k] + (["oxygen"] if ox else [])
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append([k, ox])
    return texts, np.array(labels, dtype=np.int64)


@pytest.fixture(scope="module")
def fitted() -> tuple[LexicalModel, list[str]]:
    texts, labels = synthetic(80, seed=0)
    model = LexicalModel.fit(SPEC, texts, labels, LexicalConfig(max_features=300))
    new_texts, _ = synthetic(20, seed=1)
    return model, new_texts + ["", "an unseen wordy answer zzz", "Chlorophyll!! SUNLIGHT"]


def round_trip(tensors: dict, config: dict) -> tuple[dict, dict]:
    """Through safetensors bytes and JSON text, as a suite stores them."""
    return load_safetensors(save_safetensors(tensors)), json.loads(json.dumps(config))


# --------------------------------------------------------------------------------------------------------------------
# Fit and scoring
# --------------------------------------------------------------------------------------------------------------------


def test_log_probs_shapes_normalised_and_informative(fitted):
    model, texts = fitted
    lp = model.log_probs(texts)
    assert [p.shape for p in lp] == [(len(texts), 4), (len(texts), 2)]
    for p in lp:
        np.testing.assert_allclose(np.exp(p).sum(axis=1), 1.0, atol=1e-9)
    held, y = synthetic(200, seed=2)
    pred = model.predict(held)
    assert pred.shape == (200, 2)
    assert quadratic_weighted_kappa(y[:, 0], pred[:, 0], labels=range(4)) > 0.8  # the key words decide the score
    assert (pred[:, 1] == y[:, 1]).mean() > 0.9


def test_matches_a_plain_sklearn_pipeline():
    """The softmax-form parameters (binary: [0; w]) give sklearn's own predict_log_proba."""
    from scipy import sparse
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    texts, labels = synthetic(80, seed=0)
    model = LexicalModel.fit(SPEC, texts, labels, LexicalConfig(max_features=300))
    vecs = [
        TfidfVectorizer(analyzer=a, ngram_range=r, min_df=2, max_features=300, sublinear_tf=True)
        for a, r in (("word", (1, 2)), ("char_wb", (2, 5)))
    ]
    x = sparse.hstack([v.fit_transform(texts) for v in vecs], format="csr")
    held, _ = synthetic(30, seed=3)
    xh = sparse.hstack([v.transform(held) for v in vecs], format="csr")
    ours = model.log_probs(held)
    for d in range(2):
        ref = LogisticRegression(C=4.0, max_iter=1000).fit(x, labels[:, d]).predict_log_proba(xh)
        np.testing.assert_allclose(ours[d], ref, atol=1e-4)  # float32 parameters


def test_absent_and_single_class_dimensions():
    texts, labels = synthetic(80, seed=0)
    labels[labels[:, 0] == 2, 0] = 3  # score 2 never occurs in training
    labels[:, 1] = 1  # the binary dimension only ever saw class 1
    model = LexicalModel.fit(SPEC, texts, labels, LexicalConfig(max_features=300))
    assert model.classes[0].tolist() == [0, 1, 3] and model.classes[1].tolist() == [1]
    held, _ = synthetic(30, seed=4)
    score, binary = model.log_probs(held)
    assert score.shape == (30, 4) and binary.shape == (30, 2)
    assert (score[:, 2] == ABSENT_LOG_PROB).all()
    assert (score.argmax(axis=1) != 2).all()
    np.testing.assert_allclose(np.exp(score).sum(axis=1), 1.0, atol=1e-9)
    assert (binary[:, 0] == ABSENT_LOG_PROB).all() and (binary[:, 1] == 0.0).all()
    tensors, config = round_trip(*model.to_tensors())
    loaded = LexicalModel.from_tensors(tensors, config, spec=SPEC)
    for a, b in zip(loaded.log_probs(held), (score, binary), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_unscored_rows_are_left_out_of_that_dimension_only():
    texts, labels = synthetic(80, seed=0)
    labels[:30, 1] = -1
    model = LexicalModel.fit(SPEC, texts, labels, LexicalConfig(max_features=300))
    assert [d["rows"] for d in model.info["dimensions"]] == [80, 50]


def test_internal_cv_picks_c_from_the_grid():
    texts, labels = synthetic(60, seed=0)
    config = LexicalConfig(max_features=200, C=None, C_grid=(0.5, 8.0), cv_folds=2)
    model = LexicalModel.fit(SPEC, texts, labels, config)
    assert {d["C"] for d in model.info["dimensions"]} <= {0.5, 8.0}


@pytest.mark.parametrize(
    "texts, labels, match",
    [
        (["a b", 3, "c d"], [[0, 0]] * 3, "text 1 is a int"),
        (["a b", "a c", "a d"], [[0, 0]] * 2, "shape"),
        (["a b", "a c", "a d"], [[0, 0], [4, 0], [1, 1]], "outside -1..3"),
        (["apple pie", "apple tart", "apple cake"], [[0, -1], [1, -1], [2, -1]], "no scored training row"),
        (["alpha", "beta", "gamma"], [[0, 0], [1, 1], [2, 0]], "found no term"),
    ],
)
def test_fit_rejects_bad_data(texts, labels, match):
    with pytest.raises(DataError, match=match):
        LexicalModel.fit(SPEC, texts, np.array(labels), LexicalConfig(max_features=50))


@pytest.mark.parametrize(
    "kw", [{"C": 0.0}, {"C": float("nan")}, {"word_ngram": (2, 1)}, {"min_df": 0}, {"cv_folds": 1}, {"C_grid": ()}]
)
def test_config_rejects_bad_values(kw):
    with pytest.raises(ConfigError):
        LexicalConfig(**kw)


# --------------------------------------------------------------------------------------------------------------------
# Storage
# --------------------------------------------------------------------------------------------------------------------


def test_round_trip_reproduces_log_probs(fitted):
    model, texts = fitted
    tensors, config = model.to_tensors()
    assert all(name.startswith(TENSOR_PREFIX) for name in tensors)
    assert all(t.dtype == torch.float32 for t in tensors.values())
    tensors, config = round_trip(tensors, config)
    tensors["head.weight"] = torch.zeros(3)  # a neural tensor of the same task module: ignored
    loaded = LexicalModel.from_tensors(tensors, config, spec=SPEC)
    assert loaded.num_features == model.num_features
    for a, b in zip(loaded.log_probs(texts), model.log_probs(texts), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
    again = loaded.to_tensors()
    assert again[1]["vectorizers"] == config["vectorizers"]


def _set(path: tuple, value):
    def edit(tensors: dict, config: dict) -> None:
        node = config
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return edit


def _tensor(name: str, fn):
    def edit(tensors: dict, config: dict) -> None:
        tensors[TENSOR_PREFIX + name] = fn(tensors[TENSOR_PREFIX + name])

    return edit


def _vocab_edit(vec: str, how: str):
    def edit(tensors: dict, config: dict) -> None:
        vocab = config["vectorizers"][vec]["vocabulary"]
        terms = list(vocab)
        if how == "out_of_range":
            vocab[terms[0]] = len(vocab)
        elif how == "duplicate":
            vocab[terms[0]] = vocab[terms[1]]
        elif how == "string_index":
            vocab[terms[0]] = str(vocab[terms[0]])
        elif how == "bool_index":
            vocab[terms[0]] = True
        elif how == "extra_term":
            vocab["zzz-new"] = 0
        elif how == "missing_term":
            del vocab[terms[0]]

    return edit


def _drop(name: str):
    def edit(tensors: dict, config: dict) -> None:
        del tensors[TENSOR_PREFIX + name]

    return edit


def _nan_at_zero(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[0] = float("nan")
    return t


CORRUPTIONS = {
    "missing coef": (_drop("dim.score.coef"), "'lexical.dim.score.coef' is missing"),
    "extra tensor": (
        lambda t, c: t.__setitem__(TENSOR_PREFIX + "dim.other.coef", torch.zeros(1)),
        "unexpected lexical tensors",
    ),
    "float64 coef": (_tensor("dim.score.coef", lambda t: t.double()), "dtype torch.float64"),
    "numpy coef": (_tensor("dim.score.coef", lambda t: t.numpy()), "expected a torch.Tensor"),
    "coef rows": (_tensor("dim.score.coef", lambda t: t[:3]), "shape"),
    "coef columns": (_tensor("dim.score.coef", lambda t: t[:, :-1]), "shape"),
    "intercept 2-D": (_tensor("dim.score.intercept", lambda t: t[None]), "shape"),
    "nan coef": (_tensor("dim.score.coef", _nan_at_zero), "non-finite"),
    "inf intercept": (_tensor("dim.mentions_oxygen.intercept", lambda t: t * float("inf")), "non-finite"),
    "zero idf": (_tensor("vectorizer.word.idf", lambda t: t * 0), "<= 0"),
    "short idf": (_tensor("vectorizer.char.idf", lambda t: t[:-1]), "must match"),
    "vocab out of range": (_vocab_edit("word", "out_of_range"), "columns are integers in"),
    "vocab duplicate column": (_vocab_edit("char", "duplicate"), "more than one term"),
    "vocab string column": (_vocab_edit("word", "string_index"), "columns are integers"),
    "vocab bool column": (_vocab_edit("word", "bool_index"), "columns are integers"),
    "vocab extra term": (_vocab_edit("word", "extra_term"), "must match"),
    "vocab missing term": (_vocab_edit("char", "missing_term"), "must match"),
    "vocab not a dict": (_set(("vectorizers", "word", "vocabulary"), ["a", "b"]), "mapping terms to columns"),
    "format": (_set(("format",), "scoreplex.lexical/99"), "this version reads"),
    "analyzer": (_set(("vectorizers", "word", "settings", "analyzer"), "char"), "analyzer"),
    "regex": (_set(("vectorizers", "word", "settings", "token_pattern"), "(a+)+$"), "token_pattern"),
    "ngram range": (_set(("vectorizers", "char", "settings", "ngram_range"), [2, 500]), "ngram_range"),
    "unknown setting": (_set(("vectorizers", "char", "settings", "preprocessor"), "x"), "must have keys"),
    "missing vectorizer": (lambda t, c: c["vectorizers"].pop("char"), "'vectorizers' must be"),
    "classes out of range": (_set(("dimensions", 0, "classes"), [0, 1, 2, 4]), "classes="),
    "classes unsorted": (_set(("dimensions", 0, "classes"), [1, 0, 2, 3]), "strictly increasing"),
    "classes bool": (_set(("dimensions", 1, "classes"), [False, True]), "classes="),
    "num_classes": (_set(("dimensions", 0, "num_classes"), 101), "num_classes"),
    "dimensions empty": (_set(("dimensions",), []), "non-empty list"),
    "dimension name": (_set(("dimensions", 1, "name"), "score"), "unique"),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corrupted_tensors_or_config_raise_suite_error(fitted, case):
    model, _ = fitted
    tensors, config = round_trip(*model.to_tensors())
    edit, match = CORRUPTIONS[case]
    edit(tensors, config)
    with pytest.raises(SuiteError, match=match):
        LexicalModel.from_tensors(tensors, config)


def test_spec_mismatch_and_non_mapping_inputs_raise_suite_error(fitted):
    model, _ = fitted
    tensors, config = round_trip(*model.to_tensors())
    other = TaskSpec(id="photo", dimensions=(Dimension("score", "ordinal", 5), Dimension("mentions_oxygen", "binary")))
    with pytest.raises(SuiteError, match="differ from task 'photo'"):
        LexicalModel.from_tensors(tensors, config, spec=other)
    with pytest.raises(SuiteError, match="JSON object"):
        LexicalModel.from_tensors(tensors, [config])
    with pytest.raises(SuiteError, match="mapping of names"):
        LexicalModel.from_tensors(list(tensors.values()), config)
    assert copy.deepcopy(config) == config  # untouched by the failed loads


# --------------------------------------------------------------------------------------------------------------------
# Stacking
# --------------------------------------------------------------------------------------------------------------------

SINGLE = TaskSpec.ordinal("stack", 3)


def _neural(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Neural logits that know the coarse score (0-1 vs 2-3) well but not the score within a pair."""
    coarse = np.where(y[:, None] // 2 == np.arange(4)[None] // 2, 3.0, 0.0)  # (N, 4)
    return coarse + rng.normal(0, 1.0, (y.size, 4))


def test_stack_weight_drops_pure_noise():
    kept = []
    for seed in range(10):
        rng = np.random.default_rng(seed)
        y = rng.integers(0, 4, 200)
        neural = 2.0 * np.eye(4)[y] + rng.normal(0, 1.5, (200, 4))
        noise = log_softmax(rng.normal(0, 2.0, (200, 4)), axis=1)
        weight, report = stack_weight([neural], [noise], y, SINGLE)
        assert weight == (report["best_weight"] if report["kept"] else 0.0)
        kept.append(weight > 0)
    # the in-sample best weight is > 0 for 8 of these 10 seeds; the cross-fitted rule keeps noise rarely (a single
    # 2-fold split keeps 3 of them; 5 repetitions keep 1)
    assert sum(kept) <= 1


def test_stack_weight_keeps_lexical_signal_the_neural_head_lacks():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    neural = _neural(y, rng)
    lexical = log_softmax(2.0 * np.eye(4)[y] + rng.normal(0, 1.0, (200, 4)), axis=1)  # knows the exact score
    weight, report = stack_weight([neural], [lexical], y, SINGLE)
    assert weight > 0 and report["kept"]
    assert report["oof_stacked_qwk"] > report["neural_qwk"] + 0.05
    assert all(rep["passed"] for rep in report["repetitions"])
    # the weight's reported QWK is that of combine_log_probs' argmax
    combined = combine_log_probs([neural], [lexical], weight)[0]
    assert quadratic_weighted_kappa(y, combined.argmax(axis=1), labels=range(4)) == pytest.approx(report["best_qwk"])


def test_stack_weight_multi_dimension_with_unscored_cells():
    spec = TaskSpec(id="two", dimensions=(Dimension("a", "ordinal", 4), Dimension("b", "binary", 2)))
    rng = np.random.default_rng(1)
    y = np.stack([rng.integers(0, 4, 160), rng.integers(0, 2, 160)], axis=1)
    y[:40, 1] = -1
    neural = [_neural(y[:, 0], rng), rng.normal(0, 1, (160, 2))]
    lexical = [
        log_softmax(2.0 * np.eye(4)[y[:, 0]] + rng.normal(0, 1.0, (160, 4)), axis=1),
        log_softmax(2.0 * np.eye(2)[np.maximum(y[:, 1], 0)] + rng.normal(0, 1.0, (160, 2)), axis=1),
    ]
    weight, report = stack_weight(neural, lexical, y, spec)
    assert weight > 0 and report["rows"] == 160
    assert report["oof_stacked_qwk"] > report["neural_qwk"]


def test_stack_weight_grid_of_zero_only_never_keeps():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 100)
    lexical = log_softmax(5.0 * np.eye(4)[y], axis=1)
    weight, report = stack_weight([_neural(y, rng)], [lexical], y, SINGLE, grid=(0.0,))
    assert weight == 0.0 and not report["kept"]


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"grid": (0.5, 1.0)}, "including 0"),
        ({"grid": (0.0, -1.0)}, "including 0"),
        ({"repeats": 0}, "repeats"),
        ({"labels": np.full(50, 4)}, "outside"),
        ({"labels": np.r_[np.full(47, -1), [0, 1, 2]]}, "at least 4 scored rows"),
        ({"lexical": [np.zeros((50, 3))]}, "shape"),
        ({"lexical": [np.full((50, 4), -np.inf)]}, "finite"),
    ],
)
def test_stack_weight_rejects_bad_input(kw, match):
    rng = np.random.default_rng(0)
    y = kw.pop("labels", rng.integers(0, 4, 50))
    lexical = kw.pop("lexical", [np.zeros((50, 4))])
    with pytest.raises(ConfigError, match=match):
        stack_weight([np.zeros((50, 4))], lexical, y, SINGLE, **kw)


def test_combine_log_probs():
    rng = np.random.default_rng(0)
    logits = [rng.normal(size=(5, 3)), rng.normal(size=(5, 2))]
    lexical = [log_softmax(rng.normal(size=(5, 3)), axis=1), log_softmax(rng.normal(size=(5, 2)), axis=1)]
    zero = combine_log_probs(logits, lexical, 0.0)
    for z, a in zip(zero, logits, strict=True):
        np.testing.assert_allclose(z, log_softmax(a, axis=1))
    one = combine_log_probs(logits, lexical, 1.0)
    for c in one:
        np.testing.assert_allclose(np.exp(c).sum(axis=1), 1.0)
    np.testing.assert_allclose(one[0], log_softmax(logits[0] + lexical[0], axis=1))
    with pytest.raises(ConfigError, match="weight"):
        combine_log_probs(logits, lexical, -0.1)
    with pytest.raises(ConfigError, match="blocks"):
        combine_log_probs(logits, lexical[:1], 0.5)
