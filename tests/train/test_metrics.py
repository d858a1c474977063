"""Confusion matrix and per-class report against a case worked out by hand.

The case is asymmetric on purpose: a transposed matrix, or precision and recall swapped, gives
different numbers, and class 3 never occurs (neither true nor predicted) so the empty rows and
columns must come out as zeros, not NaN."""
from __future__ import annotations

import pytest
import torch

from pyneuro.train.metrics import classification_report, confusion_matrix

TARGETS = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
PREDS = torch.tensor([0, 0, 1, 2, 1, 1, 2, 1])
# Row = true class, column = predicted class (4 classes; class 3 unused).
EXPECTED_CM = [[2, 1, 1, 0],
               [0, 2, 0, 0],
               [0, 1, 1, 0],
               [0, 0, 0, 0]]
# precision = diagonal / column sum, recall = diagonal / row sum, F1 = 2PR / (P + R).
EXPECTED = {
    "0": {"precision": 2 / 2, "recall": 2 / 4, "f1": 2 / 3, "support": 4},
    "1": {"precision": 2 / 4, "recall": 2 / 2, "f1": 2 / 3, "support": 2},
    "2": {"precision": 1 / 2, "recall": 1 / 2, "f1": 1 / 2, "support": 2},
    "3": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0},
}


def test_confusion_matrix_rows_are_true_classes():
    cm = confusion_matrix(TARGETS, PREDS, num_classes=4)
    assert cm.tolist() == EXPECTED_CM


def test_report_matches_the_hand_computed_values():
    report = classification_report(torch.tensor(EXPECTED_CM))
    assert report["per_class"].keys() == EXPECTED.keys()
    for cls, expected in EXPECTED.items():
        got = report["per_class"][cls]
        assert got["support"] == expected["support"], cls
        for key in ("precision", "recall", "f1"):
            assert got[key] == pytest.approx(expected[key], abs=1e-12), f"class {cls} {key}"
    assert report["macro_avg"]["precision"] == pytest.approx((1 + 0.5 + 0.5 + 0) / 4)
    assert report["macro_avg"]["recall"] == pytest.approx((0.5 + 1 + 0.5 + 0) / 4)
    assert report["macro_avg"]["f1"] == pytest.approx((2 / 3 + 2 / 3 + 1 / 2 + 0) / 4)
    assert report["accuracy"] == pytest.approx(5 / 8)
