"""The recorder (``lvm.report.recorder``): one typed row (``lvm.schemas.ResultRow``) from a gate to the
results file and back, and a checkpoint's identity: its model card's name (or ``--checkpoint
NAME=PATH``), not the folder it was gated from; two checkpoints with one name are refused in one line.

Checkpoints here are copy-last "models" trained on the small dataset (seconds); gate runs select
``checkpoint_integrity`` only. The same model gated from another folder comparing GREEN with its
baseline is in ``tests/test_portable_compare.py`` (a real AMN on the default dataset).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT
from lvm.gates import GateResult
from lvm.models.adapters import ModelCard
from lvm.report.recorder import Finish, NameClash, Recorder, checkpoint_names, split_name
from lvm.report.results import read_document, read_results
from lvm.schemas import ResultRow


@pytest.fixture(scope="module")
def runs(small_dataset, tmp_path_factory) -> dict:
    """One checkpoint in runs/copy_last and the same files copied to runs/other_folder_name."""
    from lvm.train.trainer import TrainConfig, Trainer

    tmp = tmp_path_factory.mktemp("recorder")
    orig = tmp / "runs" / "copy_last"
    Trainer(TrainConfig(dataset=str(small_dataset), model="copy_last"), orig, progress=False).run()
    other = tmp / "runs" / "other_folder_name"
    shutil.copytree(orig, other)
    return {"tmp": tmp, "orig": str(orig), "other": str(other), "dataset": small_dataset}


def gate_run(tmp: Path, results: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "pytest", "gates/", "-p", "no:cacheprovider", "-q", f"--results={results}", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)


# ----------------------------------------------------------------------------- NAME=PATH


@pytest.mark.parametrize(
    "value, expected",
    [
        ("amn=runs/amn_s1", ("amn", "runs/amn_s1")),
        ("amn-v2.1=runs/x", ("amn-v2.1", "runs/x")),
        ("runs/amn", (None, "runs/amn")),
        ("py:my_model.py:build", (None, "py:my_model.py:build")),
        ("py:pkg.mod:build=3", (None, "py:pkg.mod:build=3")),  # a ':' before the '=': a py: spec
        ("runs/a=b", (None, "runs/a=b")),  # a '/' before the '=': a path
        ("=runs/x", (None, "=runs/x")),
        ("amn=", (None, "amn=")),
    ],
)
def test_name_is_split_off_only_when_it_looks_like_a_name(value, expected):
    assert split_name(value) == expected


def test_an_existing_path_with_an_equals_sign_stays_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "amn=s1").mkdir()
    assert split_name("amn=s1") == (None, "amn=s1")


# ----------------------------------------------------------------------------- names


def test_a_checkpoint_is_named_by_its_card_not_its_folder(runs):
    orig, other = runs["orig"], runs["other"]
    assert checkpoint_names([(None, orig)]) == {orig: "copy_last"}  # lvm train writes no name: the model type
    assert checkpoint_names([(None, other)]) == {other: "copy_last"}
    assert checkpoint_names([("mine", other), (None, orig)]) == {other: "mine", orig: "copy_last"}
    assert checkpoint_names([(None, f"{other}/best.safetensors")]) == {f"{other}/best.safetensors": "copy_last"}
    assert checkpoint_names([(None, str(runs["tmp"] / "missing"))]) == {str(runs["tmp"] / "missing"): None}


def test_two_checkpoints_with_one_name_are_refused_naming_both_paths(runs):
    orig, other = runs["orig"], runs["other"]
    for entries in ([(None, orig), (None, other)], [("a", orig), ("a", other)], [(None, orig), ("copy_last", other)]):
        with pytest.raises(NameClash) as exc:
            checkpoint_names(entries)
        msg = str(exc.value)
        assert "\n" not in msg and orig in msg and other in msg and "--checkpoint NAME=PATH" in msg, msg
    with pytest.raises(NameClash, match="given twice"):
        checkpoint_names([(None, orig), (None, orig)])


def test_name_equals_path_names_the_checkpoint_everywhere(runs):
    results = runs["tmp"] / "named.json"
    proc = gate_run(
        runs["tmp"],
        results,
        f"--checkpoint=mine={runs['other']}",
        f"--dataset={runs['dataset']}",
        "-k",
        "checkpoint_integrity or training_health",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    doc = json.loads(results.read_text())
    model_rows = [r for r in doc["results"] if r["gate"] in ("checkpoint_integrity", "training_health")]
    assert len(model_rows) == 2 and {r["checkpoint"] for r in model_rows} == {"mine"}
    ids = [r["nodeid"] for r in model_rows]
    assert all(i.endswith("-mine]") for i in ids), ids  # pytest ids too
    assert list(doc["models"]) == ["mine"] and doc["models"]["mine"]["card"]["name"] == "mine"
    assert re.search(r"^checkpoint_integrity +mine +small +GREEN", proc.stdout, re.M), proc.stdout  # stoplights
    assert all(r["checkpoint_path"].endswith("other_folder_name") for r in model_rows)


def test_a_name_clash_is_one_usage_error_line(runs):
    results = runs["tmp"] / "clash.json"
    proc = gate_run(
        runs["tmp"],
        results,
        f"--checkpoint={runs['orig']}",
        f"--checkpoint={runs['other']}",
        f"--dataset={runs['dataset']}",
    )
    assert proc.returncode == 4, proc.stdout[-2000:] + proc.stderr[-2000:]  # pytest's usage error
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "both named 'copy_last'" in lines[0], proc.stderr
    assert runs["orig"] in lines[0] and runs["other"] in lines[0] and "NAME=PATH" in lines[0]
    assert not results.exists()


FACTORIES = """
import torch

CARD = {{"name": "same", "ctx": 5, "input_dim": {dim}, "encoder_fingerprint": {fp!r}}}


def first():
    return (lambda x, mask: x[:, -1]), dict(CARD)


def second():
    return (lambda x, mask: x[:, -1]), dict(CARD)
"""


def test_py_factories_whose_cards_share_a_name_are_refused_when_loaded(runs):
    """A py: factory's card is known only once its code ran: the second one named like another is RED."""
    from lvm.data.datasets import open_dataset

    ds = open_dataset(runs["dataset"])
    module = runs["tmp"] / "factories.py"
    module.write_text(FACTORIES.format(dim=ds.dim, fp=ds.encoder_fingerprint))
    results = runs["tmp"] / "factories.json"
    proc = gate_run(
        runs["tmp"],
        results,
        f"--checkpoint=py:{module}:first",
        f"--checkpoint=py:{module}:second",
        f"--dataset={runs['dataset']}",
        "-k",
        "checkpoint_integrity",
    )
    doc = json.loads(results.read_text())
    integ = {r["checkpoint"]: r for r in doc["results"] if r["gate"] == "checkpoint_integrity"}
    assert integ["same"]["status"] == "GREEN", integ
    refused = integ["factories:second"]
    assert refused["status"] == "RED" and "both named 'same'" in refused["message"], refused
    assert proc.returncode == 1


# ----------------------------------------------------------------------------- one row


def test_one_typed_row_from_the_gate_to_the_file_and_back(tmp_path):
    rec = Recorder(parts=tmp_path / "parts")
    (tmp_path / "parts").mkdir()
    card = ModelCard(name="amn", type="amn", ctx=5, input_dim=8)
    result = GateResult(
        "val_cosine", "GREEN", {"val_cosine": np.float32(0.5), "x": float("nan")}, [], checkpoint="amn", dataset="d"
    )
    nodeid = "gates/test_model_gates.py::test_val_cosine[d-amn]"
    row = rec.row(result, nodeid, checkpoint_path=str(tmp_path / "runs" / "amn"), card=card)
    assert isinstance(row, ResultRow) and row.model_card["name"] == "amn" and row.metrics["x"] is None
    row.per_sequence_file = rec.save_per_sequence(nodeid, [0.1, 0.2], [3, 4])
    prop = json.loads(rec.to_json(row))  # the JUnit property: no per-sequence lists
    assert "per_sequence" not in prop and prop["per_sequence_file"] and prop["model_card"]["name"] == "amn"
    rec.add_json(rec.to_json(row))
    crash = "Traceback (most recent call last):\n  ...\nRuntimeError: boom"
    rec.add_outcome("gates/test_model_gates.py::test_latency[d-amn]", "failed", crash, 0.5, {"checkpoint": "amn"})
    target = tmp_path / "out" / "results.json"
    fin = Finish(target=target, argv=["gates/"], selection={"keyword": None}, models_gated=True)
    assert rec.finish(fin) == target

    doc = read_document(target)
    assert all(isinstance(r, ResultRow) for r in doc.results)
    val, lat = doc.results
    assert val.per_sequence == [0.1, 0.2] and val.per_sequence_article == [3, 4]
    assert val.checkpoint_path == os.path.join("..", "runs", "amn") and val.model_card is None
    assert lat.gate == "latency" and lat.status == "RED" and lat.message == "gate crashed: RuntimeError: boom"
    raw = json.loads(target.read_text())
    assert raw["models"]["amn"]["card"]["name"] == "amn"
    assert not {"model_card", "training_history", "per_sequence_file"} & set(raw["results"][0])
    assert "comparability" not in raw["results"][1]  # a crash row records only where it ran
    assert raw["run"]["complete"] is False and "coherence" in raw["run"]["gates_missing"]
    assert isinstance(read_results(target)["results"][0], dict)  # what lvm.report.regression reads


def test_the_committed_baseline_reads_as_typed_rows():
    doc = read_document(ROOT / "reports" / "baseline.json")
    assert doc.results and all(isinstance(r, ResultRow) for r in doc.results)
    assert {r.checkpoint for r in doc.results} == {None, "amn"} and doc.models["amn"]["card"]["name"] == "amn"
