"""Metrics: the spec's worked numbers (eval-protocols.md §3–4, §6) and scikit-learn cross-checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    roc_auc_score,
    top_k_accuracy_score,
)

from mixpro.evaluate import metrics as M

CONF = [0.95, 0.3, 0.6, 0.8, 0.5, 0.9, 0.7]
CORRECT = [1, 0, 1, 1, 0, 0, 1]


# -- calibration (A1–A3) -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        (dict(beta=2), 0.2841026),  # A1 (reference quirk: last bin left out)
        (dict(beta=2, corrected=True), 0.3175426),
        (dict(beta=2, p="1"), 0.2142857),  # A2
        (dict(beta=2, p="1", corrected=True), 0.3071429),
        (dict(beta=2, p="infty"), 0.4),
        (dict(beta=3), 0.0872872),  # A3
        (dict(beta=3, corrected=True), 0.1095173),
        (dict(beta=4), 0.0),  # one bin, left out
    ],
)
def test_calib_err_worked_example(kw, expected):
    assert M.calib_err(CONF, CORRECT, **kw) == pytest.approx(expected, abs=1e-6)


def test_calib_err_too_few_samples_and_bad_args():
    with pytest.raises(M.MetricInputError, match="at least beta=100"):
        M.calib_err(CONF, CORRECT, beta=100)
    with pytest.raises(M.MetricInputError, match="p must be"):
        M.calib_err(CONF, CORRECT, beta=2, p="3")
    with pytest.raises(M.MetricInputError, match="differ in length"):
        M.calib_err(CONF, CORRECT[:-1], beta=2)


def test_calib_err_tensor_input_equals_numpy():
    t = M.calib_err(torch.tensor(CONF, dtype=torch.float64), torch.tensor(CORRECT), beta=2)
    assert t == M.calib_err(np.array(CONF), np.array(CORRECT), beta=2)


@pytest.mark.parametrize("corrected", [False, True])
def test_calib_err_matches_sklearn_quantile_bins(corrected):
    rng = np.random.default_rng(0)
    n, beta = 1000, 100
    conf = rng.uniform(0.1, 1.0, n)
    correct = (rng.uniform(size=n) < conf**2).astype(float)
    prob_true, prob_pred = calibration_curve(correct, conf, n_bins=n // beta, strategy="quantile")
    d2 = (prob_pred - prob_true) ** 2
    used = d2 if corrected else d2[:-1]
    expected = np.sqrt(np.sum(beta / n * used))
    got = M.calib_err(conf, correct, beta=beta, corrected=corrected)
    assert got == pytest.approx(expected, abs=1e-12)
    assert got > 0.01  # a miscalibrated sample: the test can fail


# -- AURRA (A4–A6) --------------------------------------------------------------------------


def test_aurra_worked_example_and_ties_and_bounds():
    assert M.aurra(CONF, CORRECT) == pytest.approx(0.7078231, abs=1e-6)  # A4
    assert M.aurra([0.5, 0.5, 0.5, 0.9], [1, 0, 0, 1]) == pytest.approx(0.5833333, abs=1e-6)
    assert M.aurra([0.9, 0.8, 0.7, 0.6], [1, 1, 1, 1]) == 1.0  # A6
    assert M.aurra([0.9, 0.8, 0.7, 0.6], [0, 0, 0, 0]) == 0.0
    assert M.aurra([0.9, 0.8, 0.7, 0.6], [1, 1, 0, 0]) == pytest.approx(0.791667, abs=1e-6)
    assert M.aurra([0.9, 0.8, 0.7, 0.6], [0, 0, 1, 1]) == pytest.approx(0.208333, abs=1e-6)


def test_aurra_equals_one_minus_aurc_formula():
    rng = np.random.default_rng(1)
    conf, correct = rng.uniform(size=500), rng.integers(0, 2, 500)
    k = correct[np.argsort(conf)[::-1]]
    n = len(k)
    aurc = np.mean([1 - k[: i + 1].mean() for i in range(n)])
    assert M.aurra(conf, correct) == pytest.approx(1 - aurc, abs=1e-12)


# -- logit subset and accuracy (A7) ---------------------------------------------------------


def test_logit_subset_worked_example():
    logits = torch.tensor([[5.0, 1.0, 0.0, 2.0, 1.5]])
    sub = M.subset_logits(logits, [1, 3, 4])
    assert sub.tolist() == [[1.0, 2.0, 1.5]]
    assert int(sub.argmax(1)) == 1  # orig class 3
    assert float(M.confidence(sub)) == pytest.approx(0.5064804, abs=1e-6)
    assert float(M.confidence(logits)) == pytest.approx(0.904946, abs=1e-6)  # unmasked


def test_index_list_errors(tmp_path):
    f = tmp_path / "idx.txt"
    f.write_text("1, 3, 4\n")
    assert M.load_index_list(f, num_logits=5, num_labels=3) == [1, 3, 4]
    with pytest.raises(M.MetricInputError, match="has 3 entries but the dataset has 200"):
        M.load_index_list(f, num_logits=5, num_labels=200)
    with pytest.raises(M.MetricInputError, match="outside 0..3"):
        M.load_index_list(f, num_logits=4)
    f.write_text("1 1 2")
    with pytest.raises(M.MetricInputError, match="repeated"):
        M.load_index_list(f, num_logits=5)
    f.write_text("1 x 2")
    with pytest.raises(M.MetricInputError, match="non-integer"):
        M.load_index_list(f, num_logits=5)
    with pytest.raises(M.MetricInputError, match="cannot read"):
        M.load_index_list(tmp_path / "missing.txt", num_logits=5)


def test_topk_matches_sklearn():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(300, 12, generator=g)
    y = torch.randint(0, 12, (300,), generator=g)
    acc = M.topk_accuracy(logits, y, (1, 5, 20))
    assert acc[1] == pytest.approx(accuracy_score(y.numpy(), logits.argmax(1).numpy()))
    assert acc[5] == pytest.approx(top_k_accuracy_score(y.numpy(), logits.numpy(), k=5,
                                                        labels=range(12)))
    assert acc[20] == 1.0
    assert 0.05 < acc[1] < acc[5] < 1.0


# -- OOD AUPRC (O1–O3) ---------------------------------------------------------------------


def test_auprc_worked_examples():
    in_conf, out_conf = [0.9, 0.8, 0.6, 0.4], [0.7, 0.3]
    y, s = M.ood_scores(in_conf, out_conf)
    assert y.tolist() == [1, 1, 0, 0, 0, 0]
    assert M.auprc(in_conf, out_conf) == pytest.approx(0.75)  # O1
    assert M.auroc(y, s) == pytest.approx(0.75)
    # in-distribution as positives with +MSP (the other convention) gives another number
    assert M.average_precision(1 - y, -s) == pytest.approx(0.8875)
    assert M.average_precision([1, 0, 0], [-0.5, -0.5, -0.9]) == pytest.approx(0.5)  # O2
    assert M.auroc([1, 0, 0], [-0.5, -0.5, -0.9]) == pytest.approx(0.75)


def test_auprc_chance_level():  # O3
    rng = np.random.default_rng(0)
    assert M.auprc(rng.uniform(size=10000), rng.uniform(size=2000)) == pytest.approx(
        2000 / 12000, abs=0.01)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 1), st.integers(0, 6)), min_size=2, max_size=40)
    .filter(lambda xs: 0 < sum(y for y, _ in xs) < len(xs))
)
def test_average_precision_and_auroc_match_sklearn_with_ties(pairs):
    y = np.array([p[0] for p in pairs])
    s = np.array([p[1] for p in pairs], dtype=float) / 7
    assert M.average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert M.auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_ood_inputs_need_both_classes():
    with pytest.raises(M.MetricInputError, match="both positives and negatives"):
        M.average_precision([1, 1], [0.1, 0.2])


def test_imagenet_a_index_list_from_timm_equals_the_wnid_derivation():  # A8
    from pathlib import Path

    import timm

    info = Path(timm.__file__).parent / "data" / "_info"
    idx = M.load_index_list(info / "imagenet_a_indices.txt", num_logits=1000, num_labels=200)
    wnids_1k = (info / "imagenet_synsets.txt").read_text().split()
    wnids_a = (info / "imagenet_a_synsets.txt").read_text().split()
    derived = sorted(wnids_1k.index(w) for w in wnids_a)
    assert idx == derived and len(idx) == 200 and idx[0] == 6 and idx[-1] == 988
    # ImageFolder order (sorted wnids) maps label j to the j-th index
    assert [wnids_1k[i] for i in idx] == sorted(wnids_a)
