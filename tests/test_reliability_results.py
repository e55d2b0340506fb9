"""Reliability, round two (issue 20), the rest: each class is a one-line refusal (exit 2) or a
documented success whose numbers are right. Every test here failed before its class was fixed.

1. extreme numbers in results files: every reader turns a metric value into a number through one
   helper (``lvm.report.results.as_float`` / ``finite`` / ``as_number``); a document of the wrong
   structure, or JSON nested 100,000 deep in any file lvm reads, is one line;
2. the paths reports are written to (``pytest --results``, ``lvm leaderboard --out``, ``lvm compare``)
   are checked before anything runs;
3. profile values: every gate parameter and ``[regression]`` value within its declared bounds, rule
   thresholds finite numbers, checked when the profile loads;
4. nonsense settings: no loss term with a positive weight; a corpus of punctuation only.
"""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import ROOT
from lvm.cli import main
from lvm.data.synth import SynthConfig, synth_dataset
from lvm.errors import LvmError

DEEP = "[" * 100_000 + "]" * 100_000  # JSON nested 100,000 deep: Python's parser recurses once per level
N, DIM = 2_000, 16
FP = "ab" * 32


def lvm(capsys, *argv) -> tuple[int, str]:
    """``lvm ARGV`` in this process: (exit code, stderr)."""
    capsys.readouterr()
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse
        rc = exc.code
    return rc, capsys.readouterr().err


def refused(capsys, *argv) -> str:
    """``lvm ARGV`` must refuse with exit 2 and exactly one line; that line."""
    rc, err = lvm(capsys, *argv)
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("lvm: error:"), (rc, err[-2000:])
    return lines[0]


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    """A small synthetic dataset (an lvm output folder)."""
    out = tmp_path_factory.mktemp("reliability_results") / "ds"
    synth_dataset(SynthConfig(n_chunks=N, dim=DIM, seed=1), out, progress=False)
    return out


# ============================================================================= 1. extreme numbers


def _row(gate: str, metrics: dict, split: str | None = "val", checkpoint: str | None = "amn", **extra) -> dict:
    comp = {"encoder_fingerprint": FP, "dataset_id": "cd" * 32, "profile": "minilm-wiki-vital", "profile_version": 1}
    return {
        "gate": gate,
        "status": "GREEN",
        "metrics": metrics,
        "thresholds": extra.pop("thresholds", []),
        "message": "",
        "dataset": "ds",
        "checkpoint": checkpoint,
        "split": split,
        "comparability": comp,
        "comparability_key": "k" * 16,
        "nodeid": f"gates/test_x.py::test_{gate}[ds-{checkpoint}]",
        **extra,
    }


def results_doc() -> dict:
    """A results file as the gate suite writes it, holding every metric the leaderboard reads (its
    table, its ranking, its three plots) and the models table (card, history, loss)."""
    sweep = {"-3": 0.41, "-2": 0.45, "-1": 0.52, "0": 0.55, "1": 0.47, "2": 0.43, "3": 0.40}
    rows = [
        _row("coherence", {"mean": 0.5, "histogram": {"[0.0,0.1)": 0.1, "[0.1,0.2)": 0.9}}, None, None),
        _row("checkpoint_integrity", {"n_params": 12345, "loads": True}, None),
        _row(
            "val_cosine",
            {"val_cosine": 0.55, "val_cosine_ci_low": 0.54, "val_cosine_ci_high": 0.56, "margin_vs_baseline": 0.01},
            thresholds=[{"metric": "val_cosine", "min_green": 0.2}],
        ),
        _row("ood_cosine", {"ood_cosine": 0.5, "ood_cosine_ci_low": 0.49, "ood_cosine_ci_high": 0.51}, "ood"),
        _row(
            "beats_baselines",
            {
                "margin": 0.01,
                "margin_ci_low": 0.005,
                "margin_ci_high": 0.015,
                "best_baseline": "ridge",
                "baselines": {"ridge": 0.54, "copy_last": 0.5},
            },
        ),
        _row("beats_baselines", {"baselines": {"ridge": 0.49, "copy_last": 0.45}}, "ood"),
        _row(
            "offset_sweep",
            {"profile": sweep, "copy_gap": -0.03, "forward_margin": 0.08},
            thresholds=[
                {"metric": "copy_gap", "max_green": 0.4, "max_amber": 0.45},
                {"metric": "forward_margin", "min_green": 0.005, "min_amber": 1e-9},
            ],
        ),
        _row(
            "context_ablations",
            {f"delta_{a}": -0.1 for a in ("shuffle", "reverse", "leave_one_out", "repeat_pad", "cross_article")},
            thresholds=[{"metric": "delta_cross_article", "max_green": -0.1, "max_amber": -0.03}],
        ),
        _row("retrieval", {"contain_at_50": 0.3, "r_at_5": 0.1, "eff_at_5": 0.2, "mrr_at_50": 0.05}),
        _row("latency", {"p95_ms": 0.8, "cost_flops": 1000}),
    ]
    epochs = [{"epoch": e, "val_cosine": 0.4 + 0.05 * e, "train_cosine": 0.42 + 0.05 * e} for e in range(4)]
    card = {"name": "amn", "type": "amn", "ctx": 5, "min_ctx": 1, "n_params": 12345, "input_dim": DIM}
    return {
        "schema": "lvm-gate-results",
        "schema_version": 2,
        "created_at": "2026-01-01T00:00:00Z",
        "profile": {"name": "minilm-wiki-vital", "version": 1},
        "results": rows,
        "models": {
            "amn": {
                "card": {**card, "loss_config": {"lambda_mse": 1.0, "lambda_info": 0.5}},
                "history": {"epochs": epochs, "status": "completed"},
            }
        },
        "run": {"complete": True},
    }


MARK = "@@value@@"


def poisoned(doc: dict, literal: str, only=None) -> str:
    """The document's JSON with every number under ``metrics`` and ``models`` (or only those whose key
    passes ``only``) replaced by the JSON ``literal`` (NaN, Infinity, 1e308, a 400-digit integer...)."""
    doc = copy.deepcopy(doc)

    def walk(o, key=None):
        items = o.items() if isinstance(o, dict) else enumerate(o) if isinstance(o, list) else ()
        for k, v in list(items):
            if isinstance(v, (dict, list)):
                walk(v, k)
            elif isinstance(v, (int, float)) and not isinstance(v, bool) and (only is None or only(k, key)):
                o[k] = MARK

    for r in doc["results"]:
        walk(r["metrics"])
    walk(doc["models"])
    return json.dumps(doc).replace(json.dumps(MARK), literal)


EXTREME_IDS = ["1e308", "-1e308", "nan", "inf", "-inf", "str", "10**400", "list", "obj", "null"]
EXTREME = {
    "1e308": 1e308,
    "-1e308": -1e308,
    "NaN": math.nan,
    "Infinity": math.inf,
    "-Infinity": -math.inf,
    '"0.5"': None,
    "1" + "0" * 400: math.inf,  # an integer beyond float range
    "[1, 2]": None,
    '{"a": 1}': None,
    "null": None,
}


@pytest.mark.parametrize("literal", list(EXTREME), ids=EXTREME_IDS)
def test_leaderboard_and_compare_read_any_metric_value(literal, tmp_path, capsys):
    """Every metric (and every number of the models table) replaced by an extreme value: the
    leaderboard is written, a non-finite cell reads nan / inf, a row without a finite val cosine is not
    ranked; ``lvm compare`` compares (a NaN is RED "not a number"), never a traceback."""
    from lvm.report.leaderboard import build_leaderboard

    path = tmp_path / "r.json"
    path.write_text(poisoned(results_doc(), literal))
    res = build_leaderboard([path], tmp_path / "lb")
    assert all(Path(f).is_file() for f in res["files"].values())
    model = next(r for r in res["rows"] if r["kind"] == "model")
    want = EXTREME[literal]
    if want is None:
        assert model["val_cosine"] is None and model["rank"] is None
    elif math.isfinite(want):
        assert model["val_cosine"] == want and model["rank"] == 1
    else:  # kept as what it is, shown as nan / inf, never ranked
        assert (math.isnan(model["val_cosine"]) and math.isnan(want)) or model["val_cosine"] == want
        assert model["rank"] is None
        md = (tmp_path / "lb" / "leaderboard.md").read_text()
        shown = "nan" if math.isnan(want) else ("inf" if want > 0 else "-inf")
        assert f"| amn | amn | GREEN | {shown}" in md
    pd.read_csv(tmp_path / "lb" / "leaderboard.csv")  # a well-formed CSV
    rc, err = lvm(capsys, "compare", path, path, "--gate-profile", "minilm-wiki-vital")
    assert rc in (0, 1) and "Traceback" not in err


def test_plots_skip_values_no_axis_can_hold(tmp_path):
    """Only what the plots read holds 1e308 (sweep points, thresholds, epochs' cosines, histogram
    shares, ablation deltas): the page is written, the table keeps the model's real numbers."""
    from lvm.report.leaderboard import build_leaderboard

    plotted = {"-1", "1", "val_cosine", "train_cosine", "[0.1,0.2)", "delta_shuffle"}
    doc = results_doc()
    for r in doc["results"]:
        for t in r["thresholds"]:
            t.update({k: 1e308 for k in ("min_green", "max_green") if k in t})
    text = poisoned(doc, "1e308", only=lambda k, parent: (k in plotted and parent is not None) or k == "delta_shuffle")
    (tmp_path / "r.json").write_text(text)
    res = build_leaderboard([tmp_path / "r.json"], tmp_path / "lb")
    model = next(r for r in res["rows"] if r["kind"] == "model")
    assert model["val_cosine"] == 0.55 and model["rank"] == 1
    assert res["plots"] == {"Training curves": False, "Adjacency coherence": True, "Offset sweep": True}


def test_ranking_leaves_out_non_finite_cosines(tmp_path):
    """Two checkpoints, one whose val cosine is NaN: the other ranks first, the NaN one is unranked."""
    from lvm.report.rows import collect_rows

    doc = results_doc()
    twin = copy.deepcopy(doc["results"][2])
    twin.update(checkpoint="broken", nodeid="gates/test_x.py::test_val_cosine[ds-broken]")
    twin["metrics"]["val_cosine"] = "@nan@"
    doc["results"].append(twin)
    (tmp_path / "r.json").write_text(json.dumps(doc).replace('"@nan@"', "NaN"))
    _, rows, _ = collect_rows([tmp_path / "r.json"])
    ranks = {r.checkpoint: r.rank for r in rows if r.kind == "model"}
    assert ranks == {"amn": 1, "broken": None}


def test_one_number_helper_for_every_reader():
    """as_float / finite / as_number / as_int: the one conversion of a metric value; regression keeps
    its "not a number" semantics (NaN for anything not finite)."""
    from lvm.report import regression
    from lvm.report.results import as_float, as_int, as_number, finite, format_number

    big = 10**400
    assert regression.as_number is as_number
    floats = [as_float(v) for v in (1, 0.5, big, -big, "1", True, None, [1])]
    assert floats == [1.0, 0.5, math.inf, -math.inf] + [None] * 4
    assert math.isnan(as_number(big)) and math.isnan(as_number(math.inf)) and as_number("x") is None
    assert [finite(v) for v in (0.25, math.nan, math.inf, big, "0.5")] == [0.25, None, None, None, None]
    assert [as_int(v) for v in (3, 3.0, 3.5, 2**70, math.nan, True)] == [3, 3, None, None, None, None]
    shown = [format_number(v) for v in (None, math.nan, -math.inf, big, 0.5, "x")]
    assert shown == ["", "nan", "-inf", "inf", "0.5000", "x"]


STRUCTURE = {
    "results not a list": lambda d: d.update(results={"a": 1}),
    "a row not an object": lambda d: d["results"].append(5),
    "status not a string": lambda d: d["results"][0].update(status=5),
    "metrics not an object": lambda d: d["results"][0].update(metrics=[1, 2]),
    "a threshold not an object": lambda d: d["results"][0].update(thresholds=["x"]),
    "models not an object": lambda d: d.update(models=[1]),
    "not an object": lambda d: (d.clear(), d.update({"schema": [1]})),
}


@pytest.mark.parametrize("case", list(STRUCTURE))
def test_a_results_document_of_the_wrong_structure_is_one_line(case, tmp_path, capsys):
    doc = results_doc()
    STRUCTURE[case](doc)
    (tmp_path / "r.json").write_text(json.dumps(doc))
    refused(capsys, "leaderboard", tmp_path / "r.json", "--out", tmp_path / "lb")
    refused(capsys, "compare", tmp_path / "r.json", tmp_path / "r.json")


def test_json_nested_100000_deep_is_one_line_in_every_reader(synth, tmp_path, capsys):
    """A results file, a run's config or history, an existing results file a partial run writes
    beside, a dataset's meta.json read by the plugin, a --model-config, a calibration reference's
    config: one line (or, where the file is optional, treated as unreadable), never RecursionError."""
    from lvm.calibrate import _training_config
    from lvm.profiles import load_profile
    from lvm.pytest_plugin import _check_profile_fits
    from lvm.report.plots import _results_doc
    from lvm.report.recorder import Recorder, history_summary
    from lvm.report.rows import _read_json

    deep = tmp_path / "deep.json"
    deep.write_text(DEEP)
    assert "nested too deeply" in refused(capsys, "leaderboard", deep, "--out", tmp_path / "lb")
    assert "nested too deeply" in refused(capsys, "compare", deep, deep)
    assert _read_json(deep) is None  # a v1 file's run folder config.json
    assert _results_doc(str(deep), {}) is None
    assert history_summary(str(deep)) is None
    assert Recorder().results_target(deep, complete=False) == deep  # unreadable: nothing worth keeping
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(DEEP)
    with pytest.raises(LvmError, match="nested too deeply"):
        _training_config(str(run))
    folder = tmp_path / "meta-deep"
    folder.mkdir()
    (folder / "meta.json").write_text(DEEP)
    _check_profile_fits(load_profile("minilm-wiki-vital"), [str(folder)])  # skipped: its gates say why
    assert "nested too deeply" in refused(
        capsys, "train", "--dataset", synth, "--out", tmp_path / "t", "--model-config", DEEP[:20_000] + DEEP[-20_000:]
    )


def test_a_damaged_index_json_is_rebuilt_or_refused_in_one_line(synth, tmp_path):
    import shutil

    from lvm.data.datasets import open_dataset
    from lvm.data.index import load_index, load_or_build_index

    ds_path = tmp_path / "ds"
    shutil.copytree(synth, ds_path)
    ds = open_dataset(ds_path)
    _, params = load_or_build_index(ds)
    good = (ds_path / "index.json").read_text()
    wrong_type = json.dumps({**json.loads(good), "ntotal": "many"})
    for garbage in (DEEP, "[1, 2]", '{"kind": "flat-ip"}', wrong_type, "{x", "null"):
        (ds_path / "index.json").write_text(garbage)
        with pytest.raises(LvmError, match="index"):
            load_index(ds)
        _, rebuilt = load_or_build_index(ds)  # damaged: rebuilt
        assert rebuilt.ntotal == params.ntotal and json.loads((ds_path / "index.json").read_text())["kind"]
    (ds_path / "index.json").unlink()
    (ds_path / "index.json").mkdir()  # cannot be rewritten: one line
    with pytest.raises(LvmError, match="cannot be rebuilt"):
        load_or_build_index(ds)


NPY_HEADERS = {
    "syntax": b"{'descr': '<f4', 'fortran_order': False, 'shape': (10, 16), ",
    "token": b"{'descr': '<f4', 'fortran_order': False, 'shape': (10, 16), 'x': '''",
    "deep": b"{'descr': '<f4', 'fortran_order': False, 'shape': " + b"(" * 1000 + b")" * 1000 + b"}",
    "huge shape": b"{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999, 99999999999999), }",
}


@pytest.mark.parametrize("case", list(NPY_HEADERS))
def test_a_predictions_npy_with_a_garbage_header_is_one_line(case, synth, tmp_path):
    from lvm.data.datasets import open_dataset
    from lvm.models.predictions import load_predictions, write_manifest

    preds = tmp_path / "preds"
    manifest = write_manifest(open_dataset(synth), 5, 1, preds, splits=("val",))
    card = {"name": "p", "type": "mine", "ctx": 5, "min_ctx": 1, "input_dim": DIM, "encoder_fingerprint": FP}
    (preds / "card.json").write_text(json.dumps(card))
    header = NPY_HEADERS[case]
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    (preds / "val.npy").write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + b"\0" * 64)
    assert manifest["splits"]["val"]["n"] > 0
    with pytest.raises(LvmError, match="val.npy"):
        load_predictions(preds)


# ============================================================================= 2. where reports go


def _gate_run(args: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """The gate suite with ``args``; every gate deselected, so only the options are at stake."""
    cmd = [sys.executable, "-m", "pytest", str(ROOT / "gates"), "-p", "no:cacheprovider", "-q"]
    cmd += ["-k", "no_gate_is_called_this"]
    return subprocess.run(cmd + args, capture_output=True, text=True, cwd=cwd, timeout=300)


def test_the_gate_suite_refuses_an_index_path_it_cannot_rebuild(synth, tmp_path):
    """index.faiss a folder: the gate suite turned oracle_recall RED on good data (the long fuzz profile's
    faiss_index 'dir'); a damaged index file is rebuilt, a folder in its place is a usage error naming it."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(synth, copy)
    (copy / "index.faiss").unlink(missing_ok=True)
    (copy / "index.faiss").mkdir()
    proc = _gate_run([f"--dataset={copy}", f"--results={tmp_path / 'r.json'}"])
    assert proc.returncode == 4 and "index.faiss is a folder; remove it" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "r.json").exists()


def test_gate_suite_results_paths_are_checked_before_any_gate_runs(synth, tmp_path):
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "a-folder").mkdir()
    base = ["--checkpoint=runs/none", f"--dataset={synth}"]
    cases = {
        tmp_path / "a-folder": "is a folder",
        synth / "meta.json" / "x.json": "is a file, not a folder",
        tmp_path / "a-file" / "sub" / "r.json": "is a file, not a folder",
        synth / "r.json": "lvm output folder",
        synth / "cache" / "r.json": "lvm output folder",
    }
    for path, why in cases.items():
        proc = _gate_run(base + [f"--results={path}"])
        errors = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 4 and len(errors) == 1, (path, proc.returncode, proc.stderr[-1500:])
        assert errors[0].startswith("ERROR: --results:") and str(path) in errors[0] and why in errors[0]
    proc = _gate_run(base + [f"--results={tmp_path / 'new' / 'deeper' / 'r.json'}"])
    assert proc.returncode == 5, proc.stderr[-1500:]  # a folder that can be created: fine (nothing selected)


def test_leaderboard_out_and_compare_paths_are_checked(synth, tmp_path, capsys):
    from lvm.report.results import write_results

    results = tmp_path / "r.json"
    results.write_text(json.dumps(results_doc()))
    (tmp_path / "a-file").write_text("x")
    assert "not a folder" in refused(capsys, "leaderboard", results, "--out", tmp_path / "a-file")
    assert "is a file" in refused(capsys, "leaderboard", results, "--out", tmp_path / "a-file" / "sub")
    assert "lvm output folder" in refused(capsys, "leaderboard", results, "--out", synth)
    assert "lvm output folder" in refused(capsys, "leaderboard", results, "--out", synth / "cache")
    assert sorted(p.name for p in synth.iterdir() if p.name.startswith("leaderboard")) == []
    assert "is a folder" in refused(capsys, "compare", tmp_path, results)
    assert "is a folder" in refused(capsys, "compare", results, tmp_path)
    with pytest.raises(LvmError, match="is a folder"):
        write_results(tmp_path, results_doc())
    assert lvm(capsys, "leaderboard", results, "--out", tmp_path / "new" / "lb")[0] == 0


# ============================================================================= 3. profile values

PROFILE_HEAD = '[profile]\nname = "bad"\nextends = "minilm-wiki-vital"\n'
BAD_PROFILES = {
    "negative sample": ("[gates.beats_baselines]\nsample = -5\n", "gates.beats_baselines.sample"),
    "zero sample": ("[gates.retrieval]\nsample = 0\n", "gates.retrieval.sample"),
    "float count": ("[gates.retrieval]\nk = 1.5\n", "gates.retrieval.k"),
    "bool count": ("[gates.latency]\ncalls = true\n", "gates.latency.calls"),
    "string count": ('[gates.no_collapse]\nsample = "4096"\n', "gates.no_collapse.sample"),
    "huge count": ("[gates.output_sanity]\nsample = 99999999999999\n", "gates.output_sanity.sample"),
    "list element": ("[gates.oracle_recall]\nks = [1, -5]\n", "gates.oracle_recall.ks[1]"),
    "empty list": ("[gates.oracle_recall]\nks = []\n", "gates.oracle_recall.ks"),
    "nan parameter": ("[gates.split_hygiene]\nnear_identical_cos = nan\n", "near_identical_cos"),
    "cosine beyond 1": ("[gates.split_hygiene]\nnear_identical_cos = 1.5\n", "near_identical_cos"),
    "min_ctx > ctx": ("[gates.alignment]\nctx = 2\nmin_ctx = 3\n", "min_ctx"),
    "unknown parameter": ("[gates.val_cosine]\nsample = 5\n", "unknown parameter"),
    "unknown choice": ('[gates.coherence_drift]\nsegment_by = "colour"\n', "segment_by"),
    "string threshold": ('[gates.val_cosine]\nrules = [{ metric = "val_cosine", min_green = "0.2" }]\n', "min_green"),
    "inf threshold": ('[gates.val_cosine]\nrules = [{ metric = "val_cosine", min_green = inf }]\n', "min_green"),
    "bool threshold": ('[gates.val_cosine]\nrules = [{ metric = "val_cosine", max_green = true }]\n', "max_green"),
    "nan epoch rule": ('[[training.val_cosine]]\nepoch = 1\nmin = nan\naction = "abort"\n', "min"),
    "negative tolerance": ("[regression]\ndefault_tolerance = -0.01\n", "regression.default_tolerance"),
    "negative min effect": ("[regression]\nmin_effect = { val_cosine = -1 }\n", "regression.min_effect.val_cosine"),
    "negative spread": ("[regression]\nseed_spread = { val_cosine = -0.1 }\n", "regression.seed_spread.val_cosine"),
    "factor below 1": ("[regression]\nmin_effect_factor = 0.5\n", "regression.min_effect_factor"),
    "negative cost tolerance": ("[regression]\ncost_tolerance = -1\n", "regression.cost_tolerance"),
    "nan tolerance": ("[regression]\ntolerances = { val_cosine = nan }\n", "regression.tolerances.val_cosine"),
    "string factor": ('[regression]\nmin_effect_factor = "5"\n', "regression.min_effect_factor"),
    "misspelt key": ("[regression]\ndefault_tolerence = 0.01\n", "unknown key"),
}


@pytest.mark.parametrize("case", list(BAD_PROFILES))
def test_a_profile_value_out_of_bounds_is_refused_when_it_loads(case, tmp_path):
    from lvm.profiles import load_profile

    body, named = BAD_PROFILES[case]
    path = tmp_path / "bad.toml"
    path.write_text(PROFILE_HEAD + body)
    with pytest.raises(LvmError) as exc:
        load_profile(str(path))
    assert named in str(exc.value) and str(path) in str(exc.value) and "\n" not in str(exc.value)


def test_a_bad_profile_is_refused_before_anything_runs(synth, tmp_path, capsys):
    """The CLI and the gate suite refuse it in one line (before: the gate crashed with 'negative dimensions')."""
    path = tmp_path / "bad.toml"
    path.write_text(PROFILE_HEAD + "[gates.beats_baselines]\nsample = -5\n")
    assert "sample" in refused(capsys, "train", "--dataset", synth, "--out", tmp_path / "t", "--gate-profile", path)
    assert not (tmp_path / "t").exists()
    proc = _gate_run(["--checkpoint=runs/none", f"--dataset={synth}", f"--gate-profile={path}"])
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 4 and len(errors) == 1 and "gates.beats_baselines.sample" in errors[0], proc.stderr


def test_every_gate_parameter_declares_bounds_its_default_meets():
    from lvm.bounds import Bound
    from lvm.gates.spec import GATES, check_params
    from lvm.profiles import load_profile, shipped_profiles

    for g in GATES:
        assert set(g.bounds) == set(g.params), g.id
        for name, bound in g.bounds.items():
            assert isinstance(bound, (Bound, tuple)), (g.id, name)
        check_params(g.id, dict(g.params), "defaults")  # every default within its bound
    for name in shipped_profiles():
        load_profile(name)


# ============================================================================= 4. nonsense settings


def test_training_with_no_positive_loss_weight_is_refused(synth, tmp_path, capsys):
    from lvm.losses import LossConfig
    from lvm.train.config import TrainConfig

    line = refused(capsys, "train", "--dataset", synth, "--out", tmp_path / "t", "--lambda-mse", "0", "--epochs", "1")
    assert "no loss term has a positive weight" in line
    assert not (tmp_path / "t").exists()
    cfg = TrainConfig(dataset=str(synth), loss=LossConfig(lambda_mse=0.0, lambda_variance=0.001))
    cfg.check()  # one term is enough
    TrainConfig(dataset=str(synth), loss=LossConfig(lambda_mse=0.0, adaptive_info=True)).check()  # adaptive λ_info > 0
    with pytest.raises(LvmError, match="no loss term"):
        off = LossConfig(lambda_mse=0.0, adaptive_info=True, adaptive_min=0, adaptive_max=0)
        TrainConfig(dataset=str(synth), loss=off).check()


def test_a_corpus_without_a_letter_or_digit_is_refused(tmp_path, capsys):
    corpus = tmp_path / "punct.jsonl"
    with corpus.open("w") as fh:
        for i in range(5):
            fh.write(json.dumps({"id": i, "title": "—", "text": "!!! ... ??? --- ;;; «» " * 5}) + "\n")
    line = refused(capsys, "build-data", "--corpus", corpus, "--out", tmp_path / "ds", "--quiet")
    assert "punct.jsonl" in line and "letter or a digit" in line
    assert not (tmp_path / "ds").exists()
    from lvm.data.chunking import has_word

    assert [has_word(t) for t in ("...!", "a.", "٣", "日本", "_ -- _")] == [False, True, True, True, False]


@pytest.mark.parametrize("literal", ['"1.0"', "false", "true", "null", "[]", '{"a": 1}'])
@pytest.mark.parametrize("side", ["BASELINE", "NEW"])
def test_compare_calls_a_gated_metric_that_is_not_a_number_red(literal, side, tmp_path, capsys):
    """A gated metric held as a string, a bool, null (how NaN is written), a list or an object in either
    file was skipped silently: ``lvm compare`` read GREEN. It is RED "not a number", naming the file."""
    good = tmp_path / "good.json"
    good.write_text(json.dumps(results_doc()))
    bad = tmp_path / "bad.json"
    bad.write_text(poisoned(results_doc(), literal, only=lambda k, key: k == "val_cosine"))
    new, base = (good, bad) if side == "BASELINE" else (bad, good)
    capsys.readouterr()
    rc = main(["compare", str(new), str(base), "--gate-profile", "minilm-wiki-vital"])
    out = capsys.readouterr().out
    assert rc == 1 and f"not a number ({side} holds" in out, out
    assert main(["compare", str(good), str(good), "--gate-profile", "minilm-wiki-vital"]) == 0
