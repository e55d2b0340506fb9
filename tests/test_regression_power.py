"""The regression check's power on the default data (issue 19): what it must catch and what it must pass.

The reference is the smoke AMN (seed 0, 4 epochs). Retrains with other seeds must compare GREEN against
it; the same weights noised until val cosine drops by 0.003, 0.006, 0.01 and 0.02 must compare RED. Each
results document is made by the real gate functions on the real val/OOD sequences, with the per-sequence
scores and article ids the plugin records, and compared by ``lvm.report.regression.check`` with the
shipped profile's ``[regression]`` table (its minimum effect comes from the measured seed spread).
"""

from __future__ import annotations

import copy

import pytest
import torch

from lvm import gates
from lvm.data.datasets import open_dataset
from lvm.data.index import load_or_build_index
from lvm.evaluation import ModelEval
from lvm.gates.status import gate_params
from lvm.models.baselines import null_baselines
from lvm.models.checkpoints import load_checkpoint
from lvm.profiles import load_profile
from lvm.report.regression import RED, check
from lvm.train.trainer import TrainConfig, Trainer

pytestmark = pytest.mark.slow

SEEDS = (1, 2, 3)
DROPS = (0.003, 0.006, 0.01, 0.02)


@pytest.fixture(scope="module")
def setting(default_dataset, tmp_path_factory):
    ds = open_dataset(default_dataset)
    profile = load_profile("minilm-wiki-vital")
    views = {s: ds.sequences(s, 5, 1) for s in ("val", "ood")}
    baselines = null_baselines(ds, 5, 1, gate_params(profile, "beats_baselines")["ridge_fit_sample"])
    index, _ = load_or_build_index(ds)
    work = tmp_path_factory.mktemp("power")
    models = {}
    for seed in (0, *SEEDS):
        cfg = TrainConfig(dataset=str(default_dataset), model="amn", epochs=4, ctx=5, min_ctx=1, seed=seed)
        Trainer(cfg, work / f"amn-{seed}", progress=False).run()
        models[seed], _ = load_checkpoint(work / f"amn-{seed}")
    return ds, profile, views, baselines, index, models


def _doc(model, setting) -> dict:
    """A results document as the plugin records it: the quality gates of one model, with per-sequence scores."""
    _, profile, views, baselines, index, _ = setting
    val, ood = ModelEval(model, views["val"], "amn"), ModelEval(model, views["ood"], "amn")
    results = [
        (gates.cosine_gate("val_cosine", val, profile, baselines=baselines), val),
        (gates.cosine_gate("ood_cosine", ood, profile, other=val, baselines=baselines), ood),
        (gates.beats_baselines(val, baselines, profile), None),
        (gates.beats_baselines(ood, baselines, profile), None),
        (gates.offset_sweep(val, profile), None),
        (gates.offset_sweep(ood, profile), None),
        (gates.no_collapse(val, profile), None),
        (gates.retrieval(val, index, profile, baselines=baselines), None),
    ]
    out = []
    for res, ev in results:
        d = res.to_dict() | {"comparability_key": "default-data"}
        if ev is not None:
            d["per_sequence"] = [round(float(v), 5) for v in ev.cos]
            d["per_sequence_article"] = [int(a) for a in ev.view.article_ids]
        out.append(d)
    return {"results": out}


def _val_cos(model, view) -> float:
    return float(ModelEval(model, view, "x").cos.mean())


def noised(model, view, drop: float, seed: int = 0):
    """``model`` with Gaussian noise on every weight (scaled by the weight's own sd, one fixed direction)
    until its val cosine is ``drop`` lower (within 5 %), found by bisection on the noise scale."""
    base = _val_cos(model, view)
    g = torch.Generator().manual_seed(seed)
    direction = {n: torch.randn(p.shape, generator=g) * p.detach().std() for n, p in model.named_parameters()}

    def at(scale: float):
        m = copy.deepcopy(model)
        with torch.no_grad():
            for n, p in m.named_parameters():
                p.add_(scale * direction[n])
        return m, base - _val_cos(m, view)

    lo, hi = 0.0, 0.01
    while at(hi)[1] < drop:
        lo, hi = hi, hi * 2
    for _ in range(40):
        mid = (lo + hi) / 2
        m, got = at(mid)
        if abs(got - drop) <= 0.05 * drop:
            return m, got
        lo, hi = (mid, hi) if got < drop else (lo, mid)
    raise AssertionError(f"no noise scale drops val cosine by {drop}")


def test_sensitivity_table(setting):
    ds, profile, views, _, _, models = setting
    tol = profile.data["regression"]
    baseline = _doc(models[0], setting)
    table = []

    def verdict(label: str, model, drop: float | None) -> None:
        v = check(_doc(model, setting), baseline, tol)
        rows = {c["gate"]: c for r in v.regressions for c in r.metrics["comparisons"] if c["metric"] == c["gate"]}
        val = rows["val_cosine"]
        table.append((label, drop, val["paired_delta"], val["detectable_drop"], v.status, v.regressed))

    for seed in SEEDS:
        verdict(f"retrain seed {seed}", models[seed], None)
    for drop in DROPS:
        m, got = noised(models[0], views["val"], drop)
        verdict(f"noised -{drop}", m, got)
    print(
        "\n".join(
            f"{lab:18s} drop {d if d is None else round(d, 4)!s:>7} paired Δ {pd:+.5f} detects ≥ "
            f"{mde:.5f} -> {st} ({n} RED rows)"
            for lab, d, pd, mde, st, n in table
        )
    )
    for lab, drop, _, mde, status, _ in table:
        if drop is None:
            assert status != RED, f"{lab}: a healthy retrain must not read as a regression"
        else:
            assert status == RED, f"{lab}: a drop of {drop:.4f} must be RED"
            assert mde < 0.003, f"the check must be able to detect a 0.003 drop (detects ≥ {mde:.4f})"
