"""The trainer: run folder, history, kill switches, resume after SIGKILL, DDP, bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import ROOT, run_lvm
from lvm.data.datasets import open_dataset
from lvm.errors import LvmError
from lvm.evaluation import evaluate
from lvm.losses import COMPONENTS
from lvm.models.checkpoints import check_compatible, load_checkpoint
from lvm.train import EXIT_KILL_SWITCH, TrainConfig, Trainer
from lvm.train.sampler import article_capped_batches


def train(dataset, out, **kw):
    # kill switches off unless a test asks: the tiny corpus is not what the shipped profiles calibrate
    cfg = TrainConfig(
        dataset=str(dataset), **{"epochs": 2, "batch_size": 8, "threads": 1, "kill_switches": False, **kw}
    )
    return Trainer(cfg, out, progress=False).run()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 30), min_size=1, max_size=400), st.integers(1, 64), st.integers(0, 4), st.integers(0, 5))
def test_sampler_caps_items_per_article_and_yields_each_item_once(articles, batch_size, cap, epoch):
    aid = np.asarray(articles)
    batches = article_capped_batches(aid, batch_size, cap, seed=3, epoch=epoch)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(len(aid)))
    assert all(1 <= len(b) <= batch_size for b in batches)
    if cap:
        assert all(np.bincount(aid[b]).max() <= cap for b in batches)
    again = article_capped_batches(aid, batch_size, cap, seed=3, epoch=epoch)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again, strict=False))


def test_run_folder_history_and_checkpoints(small_dataset, tmp_path):
    hist = train(small_dataset, tmp_path / "run", epochs=2)
    run = tmp_path / "run"
    for f in (
        "config.json",
        "training_history.json",
        "training.log",
        "best.safetensors",
        "best.json",
        "last.safetensors",
        "last.json",
        "resume.pt",
    ):
        assert (run / f).is_file(), f
    saved = json.loads((run / "training_history.json").read_text())
    assert saved["status"] == "completed" and [e["epoch"] for e in saved["epochs"]] == [1, 2]
    for row in saved["epochs"]:
        for key in ("train_loss", "val_loss", "train_cosine", "val_cosine", "lr", "seconds", "lambda_info"):
            assert np.isfinite(row[key]), key
        for comp in COMPONENTS:  # every component logged, also with λ = 0
            assert f"train_loss_{comp}" in row
        assert row["train_loss_info"] > 0  # InfoNCE computed although λ_info = 0
    assert "epoch 2" in (run / "training.log").read_text()
    model, meta = load_checkpoint(run)
    ds = open_dataset(small_dataset)
    check_compatible(meta, ds)
    assert meta["encoder_fingerprint"] == ds.encoder_fingerprint and meta["dataset_hash"] == ds.content_hash
    assert meta["model_type"] == "amn" and meta["input_dim"] == 384 and meta["training"]["epochs"] == 2
    # the best checkpoint reproduces the val cosine recorded for its epoch
    best = next(e for e in saved["epochs"] if e["epoch"] == meta["epoch"])
    assert evaluate(model, ds.sequences("val", 5, 1))["cosine"] == pytest.approx(best["val_cosine"], abs=1e-5)
    assert hist["best_val_cosine"] == pytest.approx(max(e["val_cosine"] for e in saved["epochs"]))


def test_training_is_deterministic_from_the_seed(small_dataset, tmp_path):
    a = train(small_dataset, tmp_path / "a", seed=7)
    b = train(small_dataset, tmp_path / "b", seed=7)
    assert [e["val_cosine"] for e in a["epochs"]] == [e["val_cosine"] for e in b["epochs"]]


def test_losses_with_infonce_and_adaptive_lambda_are_logged(small_dataset, tmp_path):
    from lvm.losses import LossConfig

    hist = train(small_dataset, tmp_path / "r", loss=LossConfig(lambda_mse=1.0, lambda_info=0.5, adaptive_info=True))
    lam = [e["lambda_info"] for e in hist["epochs"]]
    assert all(0.01 <= v <= 0.5 for v in lam)


def test_unreachable_epoch1_threshold_aborts_with_the_distinct_exit_code(small_dataset, tmp_path):
    profile = tmp_path / "strict.toml"
    profile.write_text(
        '[profile]\nname = "strict"\n[[training.val_cosine]]\nepoch = 1\nmin = 0.999\naction = "abort"\nwhy = "test"\n'
    )
    res = run_lvm(
        "train",
        "--dataset",
        str(small_dataset),
        "--epochs",
        "4",
        "--batch-size",
        "8",
        "--gate-profile",
        str(profile),
        "--out",
        str(tmp_path / "run"),
        "--quiet",
    )
    assert res.returncode == EXIT_KILL_SWITCH == 3, res.stderr
    assert "kill switch" in res.stderr
    hist = json.loads((tmp_path / "run" / "training_history.json").read_text())
    assert hist["status"] == "aborted" and len(hist["epochs"]) == 1
    ab = hist["aborted"]
    assert ab["gate"] == "training.val_cosine" and ab["epoch"] == 1 and ab["threshold"] == 0.999 and ab["value"] < 0.999
    assert (tmp_path / "run" / "best.safetensors").is_file() and (tmp_path / "run" / "last.safetensors").is_file()


def test_amber_schedule_rule_is_recorded_without_stopping(small_dataset, tmp_path):
    profile = tmp_path / "warn.toml"
    profile.write_text(
        '[profile]\nname = "warn"\n[[training.val_cosine]]\nepoch = 1\nmin = 0.999\naction = "warn"\n'
        '[[training.ood_sentinel]]\nepoch = 2\nmin = -1.0\naction = "abort"\n'
    )
    hist = train(small_dataset, tmp_path / "run", gate_profile=str(profile), kill_switches=True)
    assert hist["status"] == "completed" and [e["status"] for e in hist["events"]] == ["AMBER"]
    assert "ood_cosine" in hist["epochs"][1] and "ood_cosine" not in hist["epochs"][0]  # sentinel ran at epoch 2 only


def test_sigkill_mid_epoch_then_resume_completes(default_dataset, tmp_path):
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "lvm.cli",
        "train",
        "--dataset",
        str(default_dataset),
        "--epochs",
        "3",
        "--batch-size",
        "16",
        "--threads",
        "1",
        "--out",
        str(run),
        "--quiet",
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not (run / "resume.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)  # now inside epoch 2
    assert proc.poll() is None, "training finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = json.loads((run / "training_history.json").read_text())
    assert done["status"] == "running" and len(done["epochs"]) < 3
    res = run_lvm("train", "--resume", str(run), "--quiet")
    assert res.returncode == 0, res.stderr
    hist = json.loads((run / "training_history.json").read_text())
    assert hist["status"] == "completed" and [e["epoch"] for e in hist["epochs"]] == [1, 2, 3]
    assert hist["resumed_at_epoch"] == [len(done["epochs"]) + 1]
    load_checkpoint(run / "last.json")


def test_amn_beats_the_context_mean_on_val_and_ood(default_dataset, tmp_path):
    amn = train(default_dataset, tmp_path / "amn", epochs=3, batch_size=256, threads=None, kill_switches=True)
    mean = train(default_dataset, tmp_path / "mean", model="context_mean")
    ds = open_dataset(default_dataset)
    model, _ = load_checkpoint(tmp_path / "amn")
    base, _ = load_checkpoint(tmp_path / "mean")
    for split in ("val", "ood"):
        view = ds.sequences(split, 5, 1)
        m, b = evaluate(model, view)["cosine"], evaluate(base, view)["cosine"]
        assert m > b + 0.01, (split, m, b)
    assert amn["best_val_cosine"] > mean["best_val_cosine"]


def test_ddp_with_two_cpu_processes_matches_a_single_process(default_dataset, tmp_path):
    common = ["train", "--dataset", str(default_dataset), "--epochs", "2", "--threads", "1", "--quiet"]
    single = run_lvm(*common, "--out", str(tmp_path / "single"))
    assert single.returncode == 0, single.stderr
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    ddp = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--master_port=29517",
            "-m",
            "lvm.cli",
            *common,
            "--out",
            str(tmp_path / "ddp"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    h1 = json.loads((tmp_path / "single" / "training_history.json").read_text())
    h2 = json.loads((tmp_path / "ddp" / "training_history.json").read_text())
    assert h2["world_size"] == 2 and h1["world_size"] == 1
    for a, b in zip(h1["epochs"], h2["epochs"], strict=False):
        assert abs(a["val_cosine"] - b["val_cosine"]) < 0.005
        assert abs(a["train_loss_mse"] - b["train_loss_mse"]) < 0.1 * a["train_loss_mse"]


# ---------------------------------------------------------------- bad input: one line, non-zero


def one_line(res):
    lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
    assert res.returncode == 2 and len(lines) == 1 and lines[0].startswith("lvm: error:"), res.stderr
    return lines[0]


def test_unknown_model_type(small_dataset):
    assert "invalid choice" in one_line(run_lvm("train", "--dataset", str(small_dataset), "--model", "mamba"))
    with pytest.raises(LvmError, match="unknown model type"):
        Trainer(TrainConfig(dataset=str(small_dataset), model="mamba"), "/nonexistent/never")


def test_corrupt_checkpoint_file(small_dataset, tmp_path):
    train(small_dataset, tmp_path / "run", epochs=1)
    w = tmp_path / "run" / "best.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    assert "corrupt" in one_line(run_lvm("evaluate", str(tmp_path / "run"), "--dataset", str(small_dataset)))
    (tmp_path / "run" / "last.json").write_text("{not json")
    assert "not valid JSON" in one_line(
        run_lvm("evaluate", str(tmp_path / "run" / "last.json"), "--dataset", str(small_dataset))
    )


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_execute_code_is_refused(small_dataset, tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"model_state_dict": {"w": torch.zeros(2)}, "extra": _Exploit(marker)}, tmp_path / "evil.pt")
    line = one_line(run_lvm("evaluate", str(tmp_path / "evil.pt"), "--dataset", str(small_dataset)))
    assert "refused" in line and not marker.exists()


def test_checkpoint_and_dataset_mismatch_is_refused(small_dataset, small_corpus, tmp_path):
    from lvm.data.build import BuildConfig, build_dataset
    from lvm.data.encoders import EncoderSpec
    from lvm.data.splits import SplitPolicy

    train(small_dataset, tmp_path / "run", epochs=1)
    cls = tmp_path / "cls"
    build_dataset(
        BuildConfig(
            corpus=str(small_corpus),
            encoder=EncoderSpec(pooling="cls"),
            split=SplitPolicy(ood_fraction=0.25, val_fraction=0.2, seed=1),
        ),
        cls,
        progress=False,
        log=lambda m: None,
    )
    assert "encoder fingerprint" in one_line(run_lvm("evaluate", str(tmp_path / "run"), "--dataset", str(cls)))
    res = run_lvm(
        "train",
        "--dataset",
        str(cls),
        "--warm-start",
        str(tmp_path / "run"),
        "--out",
        str(tmp_path / "warm"),
        "--quiet",
    )
    assert "encoder fingerprint" in one_line(res)


def test_warm_start_scales_the_learning_rate(small_dataset, tmp_path):
    train(small_dataset, tmp_path / "base", epochs=1)
    hist = train(
        small_dataset,
        tmp_path / "warm",
        epochs=1,
        warm_start=str(tmp_path / "base"),
        warm_start_lr_scale=0.5,
        lr=1e-3,
        warmup_frac=0.0,
        min_lr_ratio=1.0,
    )
    assert hist["epochs"][0]["lr"] == pytest.approx(5e-4)
    cfg = json.loads((tmp_path / "warm" / "config.json").read_text())
    assert cfg["warm_start"] == str(tmp_path / "base")


def test_an_existing_run_folder_is_not_overwritten(small_dataset, tmp_path):
    train(small_dataset, tmp_path / "run", epochs=1)
    line = one_line(run_lvm("train", "--dataset", str(small_dataset), "--out", str(tmp_path / "run"), "--quiet"))
    assert "already exists" in line
