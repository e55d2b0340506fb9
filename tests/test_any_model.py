"""Gate any model: the two user-defined models of ``examples/user_models.py``, trained briefly on the
default dataset, reach the gates every way a model can (a ``py:`` factory, a ``torch.export``
program, predictions only, an imported seeds' ``best_model.pt``); every way must give the same
verdicts and metrics, and the results must say which model it was.

Three real runs of the gate suite in subprocesses: (A) from the repository, ``gates/``: the
attention model all four ways plus the flat MLP as program and predictions; (B) from a folder outside
the repository, ``--pyargs lvm.gatesuite``: the flat MLP through its factory (``--model-card`` is
one per run, so each factory with weights runs alone); (C) predictors with broken output and a
malicious pickle.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, run_lvm
from lvm.data.datasets import open_dataset
from lvm.io import sha256_file

pytestmark = pytest.mark.slow

EXAMPLES = ROOT / "examples" / "user_models.py"
AMIX_PY = "py:examples/user_models.py:attention_mixture"
FLAT_PY = f"py:{EXAMPLES}:flat_mlp"  # absolute: run B starts outside the repository
AMIX_CTX, AMIX_MIN = 5, 1
FLAT_CTX = 4
STEPS = 300
# the gates that run the same way for callables and predictions: (gate, split)
COMMON = [
    ("val_cosine", "val"),
    ("ood_cosine", "ood"),
    ("beats_baselines", "val"),
    ("beats_baselines", "ood"),
    ("offset_sweep", "val"),
    ("offset_sweep", "ood"),
    ("no_collapse", "val"),
    ("retrieval", "val"),
    ("output_sanity", "val"),
]
ONLY = {"output_sanity": ("nonfinite", "max_norm_error")}  # max_repeat_diff needs a model to call
TIMINGS = ("search_ms_per_query",)  # wall-clock, not a property of the model
TOL = 1e-4

# names in the results (the stoplight table's checkpoint column): a checkpoint is named by its model card
# (the factory's card and its export and predictions share it, so run A names those with NAME=PATH)
AMIX_WAYS = {
    "python": "attention_mixture",
    "export": "amix_export",
    "predictions": "amix_pred",
    "imported": "seed_run",  # lvm import-checkpoint names the card after the seeds' run folder
}
FLAT_WAYS = {"python": "flat_mlp", "export": "flat_export", "predictions": "flat_pred"}

BAD_MODELS = """
import torch
from torch import nn

FINGERPRINT = {fp!r}


class Scaled(nn.Module):  # copy-last times 3: finite, but not unit norm
    def forward(self, x, mask):
        return 3.0 * x[:, -1]


class NaNs(nn.Module):
    def forward(self, x, mask):
        return torch.full_like(x[:, -1], float("nan"))


def unnormalised():
    return Scaled(), {{"name": "unnormalised", "ctx": 5, "input_dim": 384, "encoder_fingerprint": FINGERPRINT}}


def nan_output():
    return NaNs(), {{"name": "nan_output", "ctx": 5, "input_dim": 384, "encoder_fingerprint": FINGERPRINT}}
"""


class Payload:
    """Pickled, it asks the unpickler to run ``exec(code)``: here, create a marker file."""

    def __init__(self, marker: Path):
        self.code = f"open({str(marker)!r}, 'w').close()"

    def __reduce__(self):
        import builtins

        return (builtins.exec, (self.code,))


def user_models():
    """The examples module, imported from its file the way a user's script would."""
    spec = importlib.util.spec_from_file_location("user_models_under_test", EXAMPLES)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def write_predictions(model, ds_path: Path, folder: Path, card: dict) -> None:
    """What a user does with `lvm sequences`: read the contexts from vectors.npy, write SPLIT.npy + card.json."""
    vectors = np.load(ds_path / "vectors.npy", mmap_mode="r")
    for split in ("val", "ood"):
        ci = np.load(folder / f"{split}_context.npy")
        mask = ci >= 0
        x = np.where(mask[..., None], vectors[np.where(mask, ci, 0)], 0.0).astype(np.float32)
        with torch.no_grad():
            np.save(
                folder / f"{split}.npy", model(torch.from_numpy(x), torch.from_numpy(mask)).numpy().astype(np.float32)
            )
    (folder / "card.json").write_text(json.dumps(card))


def gate_run(cwd: Path, target: list[str], results: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", *target, "-p", "no:cacheprovider", "-q", f"--results={results}", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert results.is_file(), proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "INTERNALERROR" not in proc.stdout + proc.stderr, proc.stdout[-3000:]
    return proc, json.loads(results.read_text())


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.fixture(scope="module")
def world(default_dataset, tmp_path_factory) -> dict:
    """Both models trained, saved for their factories, exported, predicted, and the attention model
    written as a seeds' best_model.pt and imported; then the three gate runs."""
    um = user_models()
    tmp = tmp_path_factory.mktemp("any_model")
    ds = open_dataset(default_dataset)
    fp = ds.encoder_fingerprint

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on two shared cores, more threads than that only contend
    try:
        torch.manual_seed(0)
        amix, amix_card = um.attention_mixture(dim=ds.dim, ctx=AMIX_CTX)
        um.train_briefly(amix, default_dataset, AMIX_CTX, AMIX_MIN, steps=STEPS)
        flat, flat_card = um.flat_mlp(dim=ds.dim, ctx=FLAT_CTX)
        um.train_briefly(flat, default_dataset, FLAT_CTX, FLAT_CTX, steps=STEPS)
        # a card that claims min_ctx 1: accepts_mask = false must still gate it on full contexts only
        flat_card = {**flat_card, "min_ctx": 1}
        amix_card_file = um.save_for_gates(amix, tmp / "amix", {**amix_card, "encoder_fingerprint": fp})
        flat_card_file = um.save_for_gates(flat, tmp / "flat", {**flat_card, "encoder_fingerprint": fp})

        for name, spec, card_file in (("amix", AMIX_PY, amix_card_file), ("flat", FLAT_PY, flat_card_file)):
            ok(run_lvm("export", spec, "--model-card", str(card_file), "--out", str(tmp / "export" / f"{name}.pt2")))

        for name, model, card, ctx, min_ctx in (
            ("amix", amix, amix_card, AMIX_CTX, AMIX_MIN),
            ("flat", flat, flat_card, FLAT_CTX, FLAT_CTX),
        ):
            folder = tmp / f"{name}_pred"
            ok(
                run_lvm(
                    "sequences",
                    str(default_dataset),
                    "--ctx",
                    str(ctx),
                    "--min-ctx",
                    str(min_ctx),
                    "--out",
                    str(folder),
                )
            )
            write_predictions(
                model, default_dataset, folder, {**card, "encoder_fingerprint": fp, "n_params": n_params(model)}
            )

        # the seeds' trainer: torch.save of a dict whose args hold a Path and a Namespace
        seed_pt = tmp / "seed_run" / "best_model.pt"
        seed_pt.parent.mkdir()
        seed_args = {
            "lr": 1e-3,
            "batch_size": 128,
            "out_dir": pathlib.Path("/runs/seed_run"),
            "loss": argparse.Namespace(kind="cosine", lambda_info=0.1, cache=pathlib.Path("cache")),
        }
        torch.save(
            {
                "model_type": "AttentionMixture",
                "model_state_dict": amix.state_dict(),
                "epoch": 7,
                "args": seed_args,
                "model_config": {"dim": ds.dim, "ctx": AMIX_CTX, "hidden": 256, "d_attn": 128},
            },
            seed_pt,
        )
        imported_out = ok(
            run_lvm(
                "import-checkpoint",
                str(seed_pt),
                "--factory",
                "py:examples/user_models.py:AttentionMixture",
                "--out",
                str(tmp / "imported"),
                "--dataset",
                str(default_dataset),
            )
        ).stdout
    finally:
        torch.set_num_threads(threads)

    (tmp / "bad_models.py").write_text(BAD_MODELS.format(fp=fp))
    marker = tmp / "PWNED"
    torch.save({"model_state_dict": {"w": torch.zeros(2)}, "args": Payload(marker)}, tmp / "evil.pt")

    run_a = gate_run(
        ROOT,
        ["gates/"],
        tmp / "a.json",
        "-m",
        "model",
        f"--dataset={default_dataset}",
        f"--checkpoint={AMIX_PY}",
        f"--model-card={amix_card_file}",
        f"--checkpoint=amix_export={tmp / 'export' / 'amix.pt2'}",
        f"--checkpoint={tmp / 'imported'}",
        f"--predictions=amix_pred={tmp / 'amix_pred'}",
        f"--checkpoint=flat_export={tmp / 'export' / 'flat.pt2'}",
        f"--predictions=flat_pred={tmp / 'flat_pred'}",
    )
    outside = tmp / "elsewhere"
    outside.mkdir()
    run_b = gate_run(
        outside,
        ["--pyargs", "lvm.gatesuite"],
        tmp / "b.json",
        "-m",
        "model",
        f"--dataset={default_dataset}",
        f"--checkpoint={FLAT_PY}",
        f"--model-card={flat_card_file}",
    )
    run_c = gate_run(
        ROOT,
        ["gates/"],
        tmp / "c.json",
        "-k",
        "output_sanity or checkpoint_integrity",
        f"--dataset={default_dataset}",
        f"--checkpoint=py:{tmp / 'bad_models.py'}:unnormalised",
        f"--checkpoint=py:{tmp / 'bad_models.py'}:nan_output",
        f"--checkpoint={tmp / 'evil.pt'}",
    )
    return {
        "tmp": tmp,
        "ds": ds,
        "amix": amix,
        "flat": flat,
        "seed_pt": seed_pt,
        "seed_args": seed_args,
        "marker": marker,
        "imported_out": imported_out,
        "a": run_a,
        "b": run_b,
        "c": run_c,
    }


def rows(doc: dict) -> dict:
    """(checkpoint, gate, split) -> result row, each with its ``model_card`` (kept in the row, or in
    the document's ``models`` table keyed by checkpoint)."""
    models = doc.get("models") or {}
    out = {}
    for r in doc["results"]:
        card = r.get("model_card") or (models.get(r.get("checkpoint")) or {}).get("card")
        out[(r.get("checkpoint"), r["gate"], r.get("split"))] = {**r, "model_card": card}
    return out


def flat_metrics(metrics: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in metrics.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_metrics(v, key + "."))
        elif isinstance(v, list):
            out.update(flat_metrics(dict(enumerate(v)), key + "."))
        elif k not in TIMINGS:
            out[key] = v
    return out


def same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return bool(np.isclose(a, b, rtol=0, atol=TOL, equal_nan=True))
    return a == b


def assert_ways_agree(by_key: dict, ways: dict) -> None:
    reference_way = next(iter(ways))
    for gate, split in COMMON:
        ref = by_key.get((ways[reference_way], gate, split))
        assert ref is not None, f"{gate}/{split} missing for {ways[reference_way]}"
        ref_m = flat_metrics({k: ref["metrics"][k] for k in ONLY.get(gate, ref["metrics"])})
        assert ref_m, f"{gate}/{split}: no metrics"
        for way, label in ways.items():
            row = by_key.get((label, gate, split))
            assert row is not None, f"{gate}/{split} missing for {way} ({label})"
            assert row["status"] == ref["status"], (
                f"{gate}/{split}: {way} {row['status']} vs {reference_way} {ref['status']}: {row['message']}"
            )
            m = flat_metrics({k: row["metrics"][k] for k in ONLY.get(gate, row["metrics"])})
            assert set(m) == set(ref_m), f"{gate}/{split}: {way} metrics {sorted(set(m) ^ set(ref_m))} differ"
            diff = {k: (m[k], ref_m[k]) for k in m if not same(m[k], ref_m[k])}
            assert not diff, f"{gate}/{split}: {way} vs {reference_way}: {diff}"


def test_no_gate_crashed_and_the_runs_ended_as_their_verdicts_say(world):
    for run in ("a", "b", "c"):
        proc, doc = world[run]
        assert "lvm gates: stoplights" in proc.stdout, proc.stdout[-2000:]
        crashed = [r["message"] for r in doc["results"] if "crashed" in (r.get("message") or "")]
        assert not crashed, crashed
        assert proc.returncode == (1 if doc["summary"]["RED"] else 0), proc.stdout[-2000:]
    assert rows(world["a"][1])[(AMIX_WAYS["python"], "val_cosine", "val")]["status"] in ("GREEN", "AMBER")


def test_attention_model_gets_the_same_verdicts_and_metrics_every_way(world):
    assert_ways_agree(rows(world["a"][1]), AMIX_WAYS)


def test_flat_model_gets_the_same_verdicts_and_metrics_every_way(world):
    assert_ways_agree(rows(world["a"][1]) | rows(world["b"][1]), FLAT_WAYS)


def test_what_predictions_only_cannot_check_is_skipped_or_unmeasured(world):
    by_key = rows(world["a"][1])
    for gate in ("latency", "context_ablations"):
        row = by_key[(AMIX_WAYS["predictions"], gate, "val")]
        assert row["status"] == "SKIP" and "predictions only" in row["message"], row
        assert by_key[(AMIX_WAYS["python"], gate, "val")]["status"] != "SKIP"
    assert "max_repeat_diff" not in by_key[(AMIX_WAYS["predictions"], "output_sanity", "val")]["metrics"]
    assert by_key[(AMIX_WAYS["export"], "output_sanity", "val")]["metrics"]["max_repeat_diff"] <= 1e-5


def test_results_rows_carry_the_model_card(world):
    tmp = world["tmp"]
    by_key = rows(world["a"][1]) | rows(world["b"][1])
    expected = {
        AMIX_WAYS["python"]: (
            "AttentionMixture",
            "python",
            AMIX_CTX,
            AMIX_MIN,
            n_params(world["amix"]),
            sha256_file(EXAMPLES),
        ),
        AMIX_WAYS["export"]: (
            "AttentionMixture",
            "export",
            AMIX_CTX,
            AMIX_MIN,
            n_params(world["amix"]),
            sha256_file(tmp / "export" / "amix.pt2"),
        ),
        AMIX_WAYS["predictions"]: (
            "AttentionMixture",
            "predictions",
            AMIX_CTX,
            AMIX_MIN,
            n_params(world["amix"]),
            sha256_file(tmp / "amix_pred" / "manifest.json"),
        ),
        AMIX_WAYS["imported"]: (
            "AttentionMixture",
            "export",
            AMIX_CTX,
            AMIX_MIN,
            n_params(world["amix"]),
            sha256_file(tmp / "imported" / "model.pt2"),
        ),
        FLAT_WAYS["python"]: ("FlatMLP", "python", FLAT_CTX, 1, n_params(world["flat"]), sha256_file(EXAMPLES)),
        FLAT_WAYS["export"]: (
            "FlatMLP",
            "export",
            FLAT_CTX,
            1,
            n_params(world["flat"]),
            sha256_file(tmp / "export" / "flat.pt2"),
        ),
        FLAT_WAYS["predictions"]: (
            "FlatMLP",
            "predictions",
            FLAT_CTX,
            1,
            n_params(world["flat"]),
            sha256_file(tmp / "flat_pred" / "manifest.json"),
        ),
    }
    fp = world["ds"].encoder_fingerprint
    for label, (typ, kind, ctx, min_ctx, params, sha) in expected.items():
        gated = [r for (ck, _, _), r in by_key.items() if ck == label]
        assert len(gated) >= 10, f"{label}: only {len(gated)} rows"
        for row in gated:
            card = row["model_card"]
            assert card is not None, f"{label} {row['gate']}: no model_card"
            got = (card["type"], card["kind"], card["ctx"], card["min_ctx"], card["n_params"], card["source_sha256"])
            assert got == (typ, kind, ctx, min_ctx, params, sha), f"{label} {row['gate']}: {got}"
            assert card["input_dim"] == world["ds"].dim and card["encoder_fingerprint"] == fp
            assert card["accepts_mask"] is (typ != "FlatMLP")


def test_a_model_without_mask_support_is_gated_on_full_contexts(world):
    ds = world["ds"]
    by_key = rows(world["a"][1]) | rows(world["b"][1])
    full, padded = len(ds.sequences("val", FLAT_CTX, FLAT_CTX)), len(ds.sequences("val", FLAT_CTX, 1))
    assert 0 < full < padded
    for label in FLAT_WAYS.values():
        integ = by_key[(label, "checkpoint_integrity", None)]
        assert integ["metrics"]["gated_min_ctx"] == FLAT_CTX, integ
        assert f"accepts_mask = false: gated on full contexts only, min_ctx = ctx = {FLAT_CTX}" in integ["message"], (
            integ["message"]
        )
        assert by_key[(label, "val_cosine", "val")]["metrics"]["n"] == full
    amix = by_key[(AMIX_WAYS["python"], "checkpoint_integrity", None)]
    assert amix["metrics"]["gated_min_ctx"] == AMIX_MIN and "accepts_mask" not in amix["message"]


def test_seeds_checkpoint_is_imported_without_running_it(world, tmp_path):
    tmp = world["tmp"]
    out = tmp / "imported"
    assert {p.name for p in out.iterdir()} == {"model.safetensors", "model.json", "model.pt2", ".lvm-output"}
    assert "AttentionMixture" in world["imported_out"] and "no encoder fingerprint" not in world["imported_out"]
    card = json.loads((out / "model.json").read_text())
    assert card["epoch"] == 7 and card["model_config"] == {
        "dim": world["ds"].dim,
        "ctx": AMIX_CTX,
        "hidden": 256,
        "d_attn": 128,
    }
    assert card["training"]["out_dir"] == "/runs/seed_run"  # a pathlib.Path, as text
    assert card["training"]["loss"] == {"kind": "cosine", "lambda_info": 0.1, "cache": "cache"}  # an argparse.Namespace
    assert (
        card["imported_sha256"] == sha256_file(world["seed_pt"])
        and card["encoder_fingerprint"] == world["ds"].encoder_fingerprint
    )
    # its card also rebuilds the class through the factory (that runs the factory's code: named explicitly)
    from lvm.errors import LvmError
    from lvm.models.adapters import load_model

    loaded = load_model("py:examples/user_models.py:AttentionMixture", out / "model.json")
    x, mask, _ = world["ds"].sequences("val", AMIX_CTX, AMIX_MIN).batch(np.arange(64))
    xt, mt = torch.from_numpy(x), torch.from_numpy(mask)
    with torch.no_grad():
        assert torch.allclose(loaded.predictor(xt, mt), world["amix"](xt, mt), atol=1e-6)
    # imported with --no-export: the folder says how to gate it instead of failing obscurely
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("model.json", "model.safetensors"):
        (bare / name).write_bytes((out / name).read_bytes())
    with pytest.raises(LvmError, match=r"--checkpoint=py:examples/user_models.py:AttentionMixture --model-card="):
        load_model(bare)
    integ = rows(world["a"][1])[(AMIX_WAYS["imported"], "checkpoint_integrity", None)]
    assert (
        integ["status"] == "GREEN" and integ["model_card"]["epoch"] == 7 and integ["model_card"]["name"] == "seed_run"
    )


def test_a_state_dict_that_does_not_fit_names_the_missing_and_unexpected_keys(world, tmp_path):
    um = user_models()
    state = um.AttentionMixture(world["ds"].dim, AMIX_CTX).state_dict()
    state["attn_query.weight"] = state.pop("query.weight")
    state["extra.bias"] = torch.zeros(3)
    torch.save(
        {
            "model_type": "AttentionMixture",
            "model_state_dict": state,
            "model_config": {"dim": world["ds"].dim, "ctx": AMIX_CTX},
            "epoch": 1,
            "args": {},
        },
        tmp_path / "best_model.pt",
    )
    res = run_lvm(
        "import-checkpoint",
        str(tmp_path / "best_model.pt"),
        "--factory",
        "py:examples/user_models.py:AttentionMixture",
        "--out",
        str(tmp_path / "out"),
    )
    assert res.returncode == 2, res.stdout + res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert (
        "missing keys: query.weight" in res.stderr and "unexpected keys: attn_query.weight, extra.bias" in res.stderr
    ), res.stderr
    assert not (tmp_path / "out").exists()


def test_a_malicious_pickle_is_refused_and_never_runs(world, tmp_path):
    evil, marker = world["tmp"] / "evil.pt", world["marker"]
    res = run_lvm(
        "import-checkpoint",
        str(evil),
        "--factory",
        "py:examples/user_models.py:AttentionMixture",
        "--out",
        str(tmp_path / "out"),
    )
    assert res.returncode == 2, res.stdout + res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "refused" in res.stderr and "GLOBAL exec" in res.stderr, (
        res.stderr
    )
    assert not (tmp_path / "out").exists()
    # the gate suite, given the same file, is RED at checkpoint_integrity and loads nothing
    integ = rows(world["c"][1])[(f"{evil.parent.name}/evil", "checkpoint_integrity", None)]
    assert integ["status"] == "RED" and "pickled checkpoints are not loaded" in integ["message"], integ
    assert not marker.exists(), "the payload ran"
    # not vacuous: unpickled the unsafe way, the same payload does create its marker
    control = tmp_path / "CONTROL"
    torch.save({"args": Payload(control)}, tmp_path / "control.pt")
    subprocess.run(
        [sys.executable, "-c", f"import torch; torch.load({str(tmp_path / 'control.pt')!r}, weights_only=False)"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert control.exists()


def test_broken_output_is_red_at_output_sanity_not_a_crash(world):
    by_key = rows(world["c"][1])
    n_val = len(world["ds"].sequences("val", 5, 1))
    for name in ("unnormalised", "nan_output"):  # named by the cards their factories return
        assert by_key[(name, "checkpoint_integrity", None)]["status"] == "GREEN"
    scaled = by_key[("unnormalised", "output_sanity", "val")]
    assert (
        scaled["status"] == "RED"
        and abs(scaled["metrics"]["max_norm_error"] - 2.0) < 1e-4
        and scaled["metrics"]["nonfinite"] == 0
    )
    nan = by_key[("nan_output", "output_sanity", "val")]
    assert nan["status"] == "RED" and nan["metrics"]["nonfinite"] == n_val and "nonfinite" in nan["message"]


def test_the_suite_runs_from_outside_the_repository(world):
    proc, doc = world["b"]
    assert "flat_mlp" in proc.stdout
    ids = {r["nodeid"] for r in doc["results"] if r.get("nodeid")}
    assert ids and not any(i.startswith("gates/") for i in ids), sorted(ids)[:3]
    assert {r["gate"] for r in doc["results"]} >= {g for g, _ in COMMON}


def test_leaderboard_names_the_user_models(world):
    tmp = world["tmp"]
    ok(run_lvm("leaderboard", str(tmp / "a.json"), str(tmp / "b.json"), "--out", str(tmp / "board")))
    with open(tmp / "board" / "leaderboard.csv", newline="") as fh:
        board = {r["checkpoint"]: r for r in csv.DictReader(fh) if r["kind"] == "model"}
    for ways, typ in ((AMIX_WAYS, "AttentionMixture"), (FLAT_WAYS, "FlatMLP")):
        for label in ways.values():
            assert label in board, sorted(board)
            assert board[label]["model_type"] == typ, f"{label}: model_type {board[label]['model_type']!r}"
    md = (tmp / "board" / "leaderboard.md").read_text()
    assert "AttentionMixture" in md and "FlatMLP" in md
