"""Bad input: one clear line on stderr, a non-zero exit, nothing written."""

import json

import numpy as np

from conftest import run_lvm


def assert_one_line_error(res, *needles):
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("lvm: error: ")
    for n in needles:
        assert n in lines[0], lines[0]
    assert "Traceback" not in res.stderr


def test_missing_corpus_file(tmp_path):
    res = run_lvm("build-data", "--corpus", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "out"), "--quiet")
    assert_one_line_error(res, "not found")
    assert not (tmp_path / "out").exists()


def test_empty_corpus(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n")
    res = run_lvm("build-data", "--corpus", str(tmp_path / "empty.jsonl"), "--out", str(tmp_path / "out"), "--quiet")
    assert_one_line_error(res, "empty")
    assert not (tmp_path / "out").exists()


def test_jsonl_with_a_bad_line(tmp_path):
    good = json.dumps({"id": "a", "title": "A", "text": "One sentence here. Another sentence here."})
    (tmp_path / "bad.jsonl").write_text(good + "\n{not json\n")
    res = run_lvm("build-data", "--corpus", str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "out"), "--quiet")
    assert_one_line_error(res, "bad.jsonl:2", "not valid JSON")
    assert not (tmp_path / "out").exists()


def test_unknown_encoder(small_corpus, tmp_path):
    res = run_lvm(
        "build-data",
        "--corpus",
        str(small_corpus),
        "--encoder",
        "acme/unknown-encoder",
        "--out",
        str(tmp_path / "out"),
        "--quiet",
    )
    assert_one_line_error(res, "acme/unknown-encoder", "cannot be loaded offline")
    assert not (tmp_path / "out").exists()


def test_npz_without_the_needed_keys(tmp_path):
    np.savez(tmp_path / "x.npz", vectors=np.zeros((3, 4), dtype=np.float32))
    res = run_lvm("import-npz", str(tmp_path / "x.npz"), "--out", str(tmp_path / "out"))
    assert_one_line_error(res, "context_sequences", "target_vectors")
    assert not (tmp_path / "out").exists()


def test_npz_with_nan_vectors(tmp_path):
    c = np.random.default_rng(0).standard_normal((4, 5, 8)).astype(np.float32)
    t = np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32)
    t[2, 3] = np.nan
    np.savez(tmp_path / "nan.npz", context_sequences=c, target_vectors=t, article_ids=np.arange(4))
    res = run_lvm("import-npz", str(tmp_path / "nan.npz"), "--out", str(tmp_path / "out"))
    assert_one_line_error(res, "row 2", "NaN")
    assert not (tmp_path / "out").exists()


def test_missing_npz_and_missing_dataset(tmp_path):
    assert_one_line_error(run_lvm("import-npz", str(tmp_path / "none.npz"), "--out", str(tmp_path / "o")), "not found")
    assert_one_line_error(run_lvm("inspect", str(tmp_path / "nods")), "not found")


def test_a_failed_rebuild_leaves_the_existing_dataset_untouched(small_dataset, tmp_path):
    before = (small_dataset / "meta.json").read_text()
    res = run_lvm("build-data", "--corpus", str(tmp_path / "nope.jsonl"), "--out", str(small_dataset), "--quiet")
    assert res.returncode == 2
    assert (small_dataset / "meta.json").read_text() == before


def test_inspect_reports_counts_norms_coherence_and_splits(small_dataset):
    res = run_lvm("inspect", str(small_dataset), "--json")
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["dim"] == 384 and info["counts"]["chunks"] > 40
    assert abs(info["norms"]["mean"] - 1) < 1e-4 and info["norms"]["nonfinite"] == 0
    assert 0.0 < info["coherence"]["mean"] < 1.0 and abs(sum(info["coherence"]["histogram"].values()) - 1) < 1e-9
    assert info["sequences"]["train"] > 0 and info["index"]["kind"] == "flat-ip"
    text = run_lvm("inspect", str(small_dataset))
    assert text.returncode == 0 and "coherence" in text.stdout and "fingerprint" in text.stdout


def _train_parser():
    import argparse

    from lvm.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["train"]


def test_every_training_config_field_is_a_train_flag_with_the_dataclass_default():
    from dataclasses import MISSING, fields

    from lvm.losses import LossConfig
    from lvm.train import TrainConfig

    options = _train_parser()._option_string_actions
    for cls in (TrainConfig, LossConfig):
        for f in fields(cls):
            if f.name == "loss":  # the nested LossConfig: its own fields are the flags
                continue
            flag = "--" + f.name.replace("_", "-")
            assert flag in options, flag
            default = f.default_factory() if f.default is MISSING else f.default
            assert options[flag].default == default, (flag, options[flag].default, default)
            assert options[flag].help and f.metadata["help"] in options[flag].help, flag
    assert "--no-kill-switches" in options and "--no-adaptive-info" in options


def test_train_flags_parse_to_the_training_config():
    from lvm.losses import LossConfig
    from lvm.train import TrainConfig
    from lvm.train.config import config_from_args

    parser = _train_parser()
    assert config_from_args(TrainConfig, parser.parse_args([])) == TrainConfig()
    args = parser.parse_args(
        [
            "--no-kill-switches",
            "--adaptive-info",
            "--lambda-info",
            "0.5",
            "--model-config",
            '{"hidden_dim": 8}',
            "--threads",
            "2",
            "--warm-start",
            "runs/a",
            "--epochs",
            "3",
        ]
    )
    assert config_from_args(TrainConfig, args) == TrainConfig(
        kill_switches=False,
        loss=LossConfig(adaptive_info=True, lambda_info=0.5),
        model_config={"hidden_dim": 8},
        threads=2,
        warm_start="runs/a",
        epochs=3,
    )


def test_train_model_config_must_be_a_json_object(tmp_path):
    res = run_lvm("train", "--dataset", str(tmp_path), "--model-config", "{not json", "--out", str(tmp_path / "run"))
    assert_one_line_error(res, "--model-config", "not valid JSON")
    assert not (tmp_path / "run").exists()
