"""`--log-samples N`: the N worst and N random val sequences per checkpoint, with texts, the nearest bank
texts and a failure category (lvm/report/samples.py), from real gate runs on the default dataset.

Three checkpoints: a small AMN trained one epoch, the copy-last control (its prediction is its last
input) and a `py:` model that answers every context with a chunk vector of an OOD article (another
article than any val target's). Every check recomputes what it compares against independently: the
model's predictions, the texts (read line by line from texts.jsonl), the bank cosines.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow
N = 20
SELECT = "val_cosine or checkpoint_integrity or normalization or training_health"
CATEGORIES = {"copied_last", "drifted", "near_miss", "generic"}

OTHER_ARTICLE = textwrap.dedent("""
    import numpy as np
    import torch
    from torch import nn

    from lvm.data.datasets import SPLIT_NAMES, open_dataset

    DATASET = {dataset!r}


    class OtherArticle(nn.Module):
        '''Answers every context with an OOD chunk's vector, chosen by a hash of the context.'''

        def __init__(self, table):
            super().__init__()
            self.register_buffer("table", torch.from_numpy(table))

        def forward(self, x, mask):
            key = (x[:, -1, :16].abs().sum(-1) * 1e4).long() % len(self.table)
            return self.table[key]


    def build():
        ds = open_dataset(DATASET)
        rows = np.flatnonzero(ds.split == SPLIT_NAMES.index("ood"))[:500]
        card = {{"name": "other_article", "type": "control", "ctx": 5, "input_dim": ds.dim,
                 "encoder_fingerprint": ds.encoder_fingerprint}}
        return OtherArticle(np.asarray(ds.vectors[rows], dtype=np.float32)), card
""")


def gate_run(out: Path, ckpts, dataset, *extra, select: str = SELECT):
    cmd = [sys.executable, "-m", "pytest", "gates/", "-q", "-p", "no:cacheprovider", f"--dataset={dataset}"]
    cmd += [f"--results={out}", "-k", select, *extra, *(f"--checkpoint={c}" for c in ckpts)]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def ckpts(default_dataset, tmp_path_factory) -> dict:
    from lvm.train.trainer import TrainConfig, Trainer

    tmp = tmp_path_factory.mktemp("samples")
    amn, copy_last = tmp / "amn", tmp / "copy_last"
    small = {"hidden_dim": 128}
    Trainer(
        TrainConfig(dataset=str(default_dataset), epochs=1, batch_size=1024, model_config=small, kill_switches=False),
        amn,
        progress=False,
    ).run()
    Trainer(TrainConfig(dataset=str(default_dataset), model="copy_last"), copy_last, progress=False).run()
    other = tmp / "other_article.py"
    other.write_text(OTHER_ARTICLE.format(dataset=str(default_dataset)))
    return {"amn": str(amn), "copy_last": str(copy_last), "other_article": f"py:{other}:build", "tmp": tmp}


@pytest.fixture(scope="module")
def serial(ckpts, default_dataset) -> dict:
    tmp = ckpts["tmp"]
    junit = tmp / "serial.xml"
    specs = [ckpts[k] for k in ("amn", "copy_last", "other_article")]
    proc = gate_run(tmp / "serial.json", specs, default_dataset, f"--log-samples={N}", f"--junitxml={junit}")
    assert proc.returncode in (0, 1), proc.stdout[-3000:] + proc.stderr[-3000:]
    path = tmp / "serial.samples.json"
    return {"proc": proc, "doc": json.loads(path.read_text()), "text": path.read_text(), "junit": junit}


@pytest.fixture(scope="module")
def truth(ckpts, default_dataset) -> dict:
    """The AMN's val predictions and cosines, computed here, and the dataset read without lvm's readers."""
    from lvm.data.datasets import open_dataset
    from lvm.evaluation import predict
    from lvm.models.adapters import load_model

    loaded = load_model(ckpts["amn"])
    ds = open_dataset(default_dataset)
    view = ds.sequences("val", loaded.card.ctx, loaded.card.gated_min_ctx)
    pred = predict(loaded.predictor, view).astype(np.float64)
    vectors = np.load(Path(default_dataset) / "vectors.npy")
    cos = (pred * vectors[view.targets]).sum(1)
    with open(Path(default_dataset) / "texts.jsonl", encoding="utf-8") as fh:
        texts = [json.loads(line) for line in fh]
    return {
        "pred": pred,
        "cos": cos,
        "vectors": vectors,
        "texts": texts,
        "article": np.load(Path(default_dataset) / "article_id.npy"),
        "position": np.load(Path(default_dataset) / "position.npy"),
        "targets": view.targets,
    }


def test_the_file_has_the_schema_and_the_summary_names_it(serial, default_dataset):
    doc, proc = serial["doc"], serial["proc"]
    meta = json.loads((Path(default_dataset) / "meta.json").read_text())
    assert doc["schema"] == "lvm-samples" and doc["version"] == 1
    assert doc["dataset"] == Path(default_dataset).name and doc["dataset_fingerprint"] == meta["content_hash"]
    assert (doc["split"], doc["n"], doc["seed"]) == ("val", N, 0)
    assert set(doc["checkpoints"]) == {"amn", "copy_last", "other_article"}
    for entry in doc["checkpoints"].values():
        assert entry["baseline"] in {"copy_last", "context_mean", "ridge"}
        assert set(entry["category_counts"]) == CATEGORIES
        assert sum(entry["category_counts"].values()) == len(entry["worst"]) + len(entry["random"]) == 2 * N
        for s in entry["worst"] + entry["random"]:
            assert isinstance(s["article_id"], str) and isinstance(s["target_position"], int)
            assert isinstance(s["cosine"], float) and isinstance(s["baseline_cosine"], float)
            assert s["category"] in CATEGORIES and len(s["nearest"]) == 3
            assert all(set(n) >= {"text", "article_id", "cosine", "same_article"} for n in s["nearest"])
    line = f"samples: {Path(serial['junit']).parent / 'serial.samples.json'} ({N} worst + {N} random per checkpoint)"
    assert line in proc.stdout, proc.stdout[-2000:]


def test_the_best_baseline_is_the_gates_best_baseline(serial, ckpts):
    results = json.loads((ckpts["tmp"] / "serial.json").read_text())
    for r in results["results"]:
        if r["gate"] == "val_cosine" and r["status"] != "SKIP":
            assert serial["doc"]["checkpoints"][r["checkpoint"]]["baseline"] == r["metrics"]["best_baseline"]


def test_worst_are_the_lowest_cosines_and_random_is_seeded(serial, truth):
    entry = serial["doc"]["checkpoints"]["amn"]
    cos = truth["cos"]
    worst = [s["sequence"] for s in entry["worst"]]
    assert worst == np.argsort(cos, kind="stable")[:N].tolist()
    got = np.array([s["cosine"] for s in entry["worst"]])
    np.testing.assert_allclose(got, np.sort(cos)[:N], atol=1e-5)
    assert got.max() <= np.delete(cos, worst).min() + 1e-6  # nothing left out is worse
    rand = [s["sequence"] for s in entry["random"]]
    assert rand == np.sort(np.random.default_rng(0).choice(len(cos), N, replace=False)).tolist()
    np.testing.assert_allclose([s["cosine"] for s in entry["random"]], cos[rand], atol=1e-5)


def test_texts_are_the_datasets_for_the_article_and_position(serial, truth):
    art, pos, texts = truth["article"], truth["position"], truth["texts"]
    for entry in serial["doc"]["checkpoints"].values():
        for s in entry["worst"] + entry["random"]:
            a, p = int(s["article_id"]), s["target_position"]
            row = int(np.flatnonzero((art == a) & (pos == p))[0])
            assert s["target_text"] == texts[row]
            n = len(s["context_texts"])
            assert 1 <= n <= min(p, 5)
            assert s["context_texts"] == [texts[row - n + k] for k in range(n)]
            assert all(art[row - n + k] == a for k in range(n))


def test_nearest_texts_are_real_and_sorted(serial, truth):
    pred, vectors, texts, art = truth["pred"], truth["vectors"], truth["texts"], truth["article"]
    entry = serial["doc"]["checkpoints"]["amn"]
    exact_top1 = 0
    for s in entry["worst"] + entry["random"]:
        y = pred[s["sequence"]]
        cosines = [n["cosine"] for n in s["nearest"]]
        assert cosines == sorted(cosines, reverse=True)
        for n in s["nearest"]:
            row = n["chunk"]
            assert n["text"] == texts[row] and abs(float(vectors[row] @ y) - n["cosine"]) < 1e-4
            assert n["article_id"] == str(art[row]) and n["same_article"] == (n["article_id"] == s["article_id"])
        exact_top1 += abs(float((vectors @ y).max()) - cosines[0]) < 1e-4
    assert exact_top1 >= 0.9 * 2 * N  # the IVF search finds the exact nearest text nearly always


def test_a_copy_last_control_is_copied_last_and_another_articles_vectors_drifted(serial):
    ck = serial["doc"]["checkpoints"]
    assert ck["copy_last"]["category_counts"]["copied_last"] >= 0.9 * 2 * N, ck["copy_last"]["category_counts"]
    assert ck["other_article"]["category_counts"]["drifted"] >= 0.9 * 2 * N, ck["other_article"]["category_counts"]
    for s in ck["copy_last"]["worst"]:
        assert s["cosine_to_last"] > 0.999 and s["context_texts"][-1] in {n["text"] for n in s["nearest"]}
    for s in ck["other_article"]["random"]:
        assert not s["nearest"][0]["same_article"]


def test_two_workers_write_the_same_file(serial, ckpts, default_dataset):
    tmp = ckpts["tmp"]
    specs = [ckpts[k] for k in ("amn", "copy_last", "other_article")]
    junit = tmp / "parallel.xml"
    proc = gate_run(
        tmp / "parallel.json", specs, default_dataset, f"--log-samples={N}", "-n", "2", f"--junitxml={junit}"
    )
    assert proc.returncode in (0, 1), proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (tmp / "parallel.samples.json").read_text() == serial["text"]
    assert_properties_are_json(junit)


def assert_properties_are_json(junit: Path) -> int:
    n = 0
    for prop in ET.parse(junit).getroot().iter("property"):
        json.loads(prop.get("value"))  # every value is JSON text, never a Python repr
        n += 1
    return n


def test_every_junit_property_is_json(serial, ckpts):
    assert assert_properties_are_json(serial["junit"]) > 10
    names = {p.get("name") for p in ET.parse(serial["junit"]).getroot().iter("property")}
    assert {"lvm_gate_result", "lvm_gate_status", "lvm_gate_where", "lvm_gate_samples"} <= names
    where = [json.loads(p.get("value")) for p in ET.parse(serial["junit"]).getroot().iter("property")]
    assert any(isinstance(w, dict) and w.get("checkpoint") == "other_article" for w in where)
    # rows recorded from the where property (skips) still name their checkpoint
    results = json.loads((ckpts["tmp"] / "serial.json").read_text())
    assert all(r.get("checkpoint") for r in results["results"] if r["gate"] in ("training_health", "val_cosine"))


def test_log_samples_zero_writes_nothing(ckpts, default_dataset):
    out = ckpts["tmp"] / "off.json"
    proc = gate_run(out, [ckpts["amn"]], default_dataset, "--log-samples=0", select="val_cosine")
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert out.is_file() and not (ckpts["tmp"] / "off.samples.json").exists()
    assert "samples:" not in proc.stdout


@pytest.mark.parametrize("value", ["-1", str(10**9)])
def test_out_of_range_is_refused_in_one_line(value, tmp_path, default_dataset):
    proc = gate_run(tmp_path / "r.json", [], default_dataset, f"--log-samples={value}")
    assert proc.returncode == 4
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == [f"ERROR: --log-samples: {value} is out of range: expected an integer in [0, 10000]"], proc.stderr
    assert not (tmp_path / "r.samples.json").exists() and not (tmp_path / "r.json").exists()


def test_the_category_rules():
    from lvm.report.samples import categorize, pick

    canon = np.array([0, 1, 2, 3, 3])  # row 4 is an exact duplicate of row 3
    target, last = 3, 2
    assert categorize(0.2, 0.96, 0, target, last, False, canon) == "copied_last"  # a copy, whatever is nearest
    assert categorize(0.6, 0.7, last, target, last, True, canon) == "copied_last"  # top-1 = last, clearly closer
    assert categorize(0.68, 0.7, last, target, last, True, canon) == "near_miss"  # top-1 = last, but barely
    assert categorize(0.3, 0.5, 1, target, last, True, canon) == "near_miss"
    assert categorize(0.3, 0.5, 0, target, last, False, canon) == "drifted"
    assert categorize(0.3, 0.5, 4, target, last, False, canon) == "generic"  # the target's duplicate: a hit
    assert categorize(0.3, 0.5, None, target, last, False, canon) == "generic"
    worst, rand = pick(np.array([0.5, np.nan, 0.1, 0.9, 0.1]), 3)
    assert worst.tolist() == [1, 2, 4] and rand.tolist() == sorted(rand.tolist()) and len(set(rand)) == 3
    assert [len(x) for x in pick(np.array([0.5]), 3)] == [1, 1]
