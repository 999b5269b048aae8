"""Metrics over a hand-checked accuracy matrix, and the report artefacts."""

import json

import numpy as np
import pytest

from dfcl_jax.metrics.continual import (
    average_incremental_accuracy,
    final_accuracy,
    forgetting,
    omega,
    seen_accuracies,
    summarize,
)
from dfcl_jax.metrics.report import write_results

R = [[0.9, 0.6, 0.5], [None, 0.8, 0.4], [None, None, 0.7]]


def test_final_accuracy_and_average_incremental_accuracy():
    assert final_accuracy(R) == pytest.approx((0.5 + 0.4 + 0.7) / 3)
    assert seen_accuracies(R) == pytest.approx([0.9, 0.7, 1.6 / 3])
    assert average_incremental_accuracy(R) == pytest.approx((0.9 + 0.7 + 1.6 / 3) / 3)


def test_forgetting_uses_the_best_earlier_accuracy():
    # task 0: max(0.9, 0.6) - 0.5 = 0.4; task 1: 0.8 - 0.4 = 0.4
    assert forgetting(R) == pytest.approx(0.4)
    assert forgetting([[0.7]]) is None


def test_omega_against_the_upper_bound():
    assert omega([0.9, 0.7], [0.9, 0.875]) == pytest.approx((1.0 + 0.8) / 2)
    with pytest.raises(ValueError, match="same number of tasks"):
        omega([0.9], [0.9, 0.8])
    assert summarize(R, upper_seen_acc=[0.9, 0.7, 1.6 / 3])["omega"] == pytest.approx(1.0)


def test_report_files(tmp_path):
    results = {"method": "finetune", "dataset": "toy", "class_order": {"name": "abd", "seed": 0},
               "accuracy_matrix": R, **summarize(R)}
    write_results(str(tmp_path), results)
    assert json.load(open(tmp_path / "results.json"))["accuracy_matrix"][2][0] is None
    rows = (tmp_path / "accuracy_matrix.csv").read_text().splitlines()
    assert rows[0] == "task,after_task_0,after_task_1,after_task_2" and rows[2] == "1,,0.8000,0.4000"
    summary = (tmp_path / "summary.md").read_text()
    assert "| final accuracy A_N | 53.33 |" in summary and "| 1 | - | 80.00 | 40.00 |" in summary
    png = (tmp_path / "accuracy.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert np.isfinite(results["average_incremental_accuracy"])
