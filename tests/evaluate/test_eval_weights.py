"""Tests for big2small.evaluate.weights."""

from __future__ import annotations

import json
import math

import pytest
import torch

from big2small.errors import Big2SmallError
from big2small.evaluate import weight_error


def test_exact_reconstruction_is_infinite_sqnr():
    w = {"a": torch.randn(4, 5)}
    report = weight_error(w, {"a": w["a"].clone()})
    assert report.rows[0].rel_error == 0
    assert report.rows[0].sqnr_db == math.inf
    assert report.total.sqnr_db == math.inf


def test_known_noise_gives_known_sqnr():
    w = torch.ones(1000, dtype=torch.float64)
    report = weight_error({"w": w}, {"w": w + 0.1})
    row = report.rows[0]
    # ||W||^2 = 1000, ||noise||^2 = 1000 * 0.01 = 10: SQNR = 20 dB, relative error 0.1.
    assert row.sqnr_db == pytest.approx(20.0, abs=1e-9)
    assert row.rel_error == pytest.approx(0.1, rel=1e-9)
    assert row.numel == 1000


def test_total_is_energy_weighted():
    a = torch.full((100,), 10.0)  # energy 10,000
    b = torch.full((100,), 1.0)  # energy 100
    report = weight_error({"a": a, "b": b}, {"a": a + 1.0, "b": b + 1.0})  # noise 100 each
    assert report.rows[0].sqnr_db == pytest.approx(20.0)
    assert report.rows[1].sqnr_db == pytest.approx(0.0, abs=1e-12)
    # Summed: 10,100 / 200, not the mean of the per-tensor dBs (10 dB).
    assert report.total.sqnr_db == pytest.approx(10 * math.log10(10_100 / 200))
    assert report.total.rel_error == pytest.approx(math.sqrt(200 / 10_100))
    assert report.total.numel == 200


def test_missing_names_raise():
    w = torch.ones(3)
    with pytest.raises(Big2SmallError, match="missing from reconstructed: b"):
        weight_error({"a": w, "b": w}, {"a": w})
    with pytest.raises(Big2SmallError, match="missing from original: c"):
        weight_error({"a": w}, {"a": w, "c": w})


def test_shape_mismatch_raises():
    with pytest.raises(Big2SmallError, match="shape"):
        weight_error({"a": torch.ones(3)}, {"a": torch.ones(4)})


def test_table_and_protocol():
    w = {"x": torch.ones(2, 2), "y": torch.ones(3)}
    report = weight_error(w, {"x": w["x"] * 0.9, "y": w["y"]})
    rows = report.table()
    assert [r["name"] for r in rows] == ["x", "y", "TOTAL"]
    assert rows[1]["sqnr_db"] == math.inf
    assert set(rows[0]) == {"name", "numel", "rel_error", "sqnr_db"}
    json.dumps(report.protocol)
    assert "dB" in report.describe()
