"""The regression verdict's rules on hand-made results documents (fast; the default-data power table is
tests/test_regression_power.py): numbers that are not numbers, latency compared on cost only, the paired
test against the minimum effect, and the smallest detectable drop in the output."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lvm.gates.status import AMBER, GREEN, RED
from lvm.report.regression import check, compare, min_effect

TOL = {"default_tolerance": 0.01, "seed_spread": {"val_cosine": 0.0004}, "min_effect_factor": 5.0}


def _cos_row(values, articles, key="k", **metrics) -> dict:
    return {
        "gate": "val_cosine",
        "status": GREEN,
        "checkpoint": "amn",
        "dataset": "d",
        "split": "val",
        "comparability_key": key,
        "metrics": {"val_cosine": float(np.mean(values)), **metrics},
        "thresholds": [{"metric": "val_cosine", "min_green": 0.2}],
        "per_sequence": [float(v) for v in values],
        "per_sequence_article": [int(a) for a in articles],
    }


def _latency_row(hw: str, path: str, ratio: float, flops=1_000_000, key="k") -> dict:
    return {
        "gate": "latency",
        "status": GREEN,
        "checkpoint": "amn",
        "dataset": "d",
        "split": "val",
        "comparability": {"dataset_id": "x", "hardware_class": hw},
        "comparability_key": f"{key}-{hw}",
        "metrics": {
            "ratio": ratio,
            "p95_ms": ratio / 10,
            "inference_path": path,
            "cost_flops": flops,
            "cost_weight_bytes": 4 * flops,
            "cost_params": flops,
        },
        "thresholds": [{"metric": "ratio", "max_green": 14.5}],
    }


@pytest.fixture(scope="module")
def scores():
    rng = np.random.default_rng(0)
    articles = np.repeat(np.arange(800), 3)
    base = np.clip(0.58 + 0.15 * rng.standard_normal(len(articles)), -1, 1)
    return base, articles, rng


def _rows(verdict, metric: str) -> list[dict]:
    return [c for r in verdict.regressions for c in r.metrics["comparisons"] if c["metric"] == metric]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 10**400])
@pytest.mark.parametrize("side", ["new", "baseline"])
def test_a_metric_that_is_not_a_number_is_red(bad, side):
    good = {"results": [{**_cos_row([0.5, 0.6], [0, 1]), "per_sequence": None}]}
    broken = {"results": [{**good["results"][0], "metrics": {"val_cosine": bad}}]}
    new, base = (broken, good) if side == "new" else (good, broken)
    v = check(new, base, TOL, allow_missing=True)
    assert v.status == RED and v.exit_code == 1
    row = _rows(v, "val_cosine")[0]
    assert row["status"] == RED and "not a number" in row["note"], row


def test_per_sequence_scores_that_are_not_numbers_are_red(scores):
    base, articles, _ = scores
    new = base.copy()
    new[5] = np.nan
    v = check({"results": [_cos_row(new, articles)]}, {"results": [_cos_row(base, articles)]}, TOL)
    assert v.exit_code == 1 and "not a number" in _rows(v, "val_cosine")[0]["note"]


def test_a_string_metric_is_red_not_a_number_and_an_absent_one_is_not_compared():
    """A gated metric held as a string was skipped silently (compare GREEN); it is RED, naming the file."""
    row = _cos_row([0.5, 0.6], [0, 1])
    weird = {**row, "metrics": {"val_cosine": "0.5"}}
    v = check({"results": [weird]}, {"results": [row]}, TOL, allow_missing=True)
    (cmp,) = _rows(v, "val_cosine")
    assert v.exit_code == 1 and cmp["status"] == "RED" and cmp["note"] == "not a number (NEW holds str)"
    absent = {**row, "metrics": {}}
    assert _rows(check({"results": [absent]}, {"results": [row]}, TOL, allow_missing=True), "val_cosine") == []


def test_latency_is_compared_on_cost_only_across_machines_and_paths():
    base = {"results": [_latency_row("AMD EPYC x2", "onnxruntime-int8", 0.44)]}
    # another CPU, another path, a reference 3x slower: the timings differ wildly, the cost does not
    same = {"results": [_latency_row("Intel Xeon x2", "onnxruntime", 3.2)]}
    v = check(same, base, TOL)
    assert v.exit_code == 0 and v.status == GREEN, v.markdown()
    assert {c["metric"] for c in _rows(v, "cost_flops") + _rows(v, "ratio")} == {"cost_flops"}
    assert not v.not_comparable
    heavier = {"results": [_latency_row("Intel Xeon x2", "onnxruntime", 0.44, flops=1_000_001)]}
    v = check(heavier, base, TOL)
    assert v.exit_code == 1 and _rows(v, "cost_flops")[0]["status"] == RED
    lighter = {"results": [_latency_row("Intel Xeon x2", "eager", 9.0, flops=500_000)]}
    assert check(lighter, base, TOL).exit_code == 0


def test_other_comparability_keys_still_are_not_compared():
    a, b = _latency_row("x", "eager", 1.0), _latency_row("x", "eager", 1.0)
    b["comparability"], b["comparability_key"] = {"dataset_id": "another dataset", "hardware_class": "x"}, "other"
    regs = compare({"results": [a]}, {"results": [b]}, TOL)
    assert regs[0].status == AMBER and "dataset_id" in regs[0].metrics["comparisons"][0]["note"]


def test_paired_test_against_the_minimum_effect(scores):
    base, articles, rng = scores
    eff = min_effect(TOL, "val_cosine")
    assert eff == pytest.approx(0.002)
    base_doc = {"results": [_cos_row(base, articles)]}
    for shift, expected in ((-0.001, GREEN), (-0.003, RED), (+0.01, GREEN)):
        new = base + shift + 0.0005 * rng.standard_normal(len(base))
        v = check({"results": [_cos_row(new, articles)]}, base_doc, TOL)
        row = _rows(v, "val_cosine")[0]
        assert row["status"] == expected, (shift, row)
        assert row["detectable_drop"] >= eff and row["detectable_drop"] < 0.003
        assert "detects drops ≥" in v.markdown() and "Smallest drop" in v.markdown()
    # a drop beyond the minimum effect that the data cannot tell from noise is AMBER, not RED
    noisy = base - 0.003 + 0.3 * rng.standard_normal(len(base))
    row = _rows(check({"results": [_cos_row(noisy, articles)]}, base_doc, TOL), "val_cosine")[0]
    assert row["status"] in (AMBER, GREEN) and row["detectable_drop"] > 0.003, row


def test_min_effect_sources():
    assert min_effect({"min_effect": {"val_cosine": 0.004}, "seed_spread": {"val_cosine": 1}}, "val_cosine") == 0.004
    assert min_effect({"seed_spread": {"ood_cosine": 0.001}}, "ood_cosine") == pytest.approx(0.005)
    assert min_effect({}, "val_cosine") > 0
