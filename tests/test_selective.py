"""covidxr.evaluation.selective: decision confidence, the risk-coverage curve and its area, per image
and per patient."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from covidxr.evaluation.selective import decision_confidence, risk_coverage, selective_summary

CLASSES = ["non-covid", "covid"]


def test_confidence_is_the_distance_into_the_decided_side():
    probs = np.array([[0.8, 0.2], [0.4, 0.6], [0.0, 1.0], [0.6, 0.4]])
    np.testing.assert_allclose(decision_confidence(probs, threshold=0.4), [0.5, 1 / 3, 1.0, 0.0])
    three = np.array([[0.2, 0.5, 0.3], [0.9, 0.05, 0.05]])
    np.testing.assert_allclose(decision_confidence(three), [0.5, 0.9])


def test_curve_decides_the_surest_first_and_its_area_is_the_mean_risk():
    # four images: the two surest right, then one wrong, then one right
    probs = np.array([[0.05, 0.95], [0.9, 0.1], [0.3, 0.7], [0.45, 0.55]])
    y = np.array([1, 0, 0, 1])
    curve = risk_coverage(y, probs, threshold=0.5)
    np.testing.assert_allclose(curve["coverage"], [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(curve["risk"], [0, 0, 1 / 3, 1 / 4])
    frame = pd.DataFrame({"patient": ["a", "a", "b", "c"], "label": np.asarray(CLASSES)[y],
                          "prob_non-covid": probs[:, 0], "prob_covid": probs[:, 1]})
    summary, curves = selective_summary(frame, classes=CLASSES, threshold=0.5, coverages=(0.5,))
    assert summary["image"]["aurc"] == pytest.approx((0 + 0 + 1 / 3 + 1 / 4) / 4)
    assert summary["image"]["error_rate"] == pytest.approx(0.25) and summary["image"]["risk_at"] == {"0.5": 0.0}
    assert summary["patient"]["n"] == len(curves["patient"]) == 4   # patient a carries two labels: two rows
    # a model whose confidence carries no information: the area is about the overall error rate
    rng = np.random.default_rng(0)
    p = rng.random(4000)
    noise = risk_coverage(rng.integers(0, 2, 4000), np.stack([1 - p, p], axis=1), threshold=0.5)
    assert noise["risk"].mean() == pytest.approx(0.5, abs=0.05)
