"""build-data refusals (the fuzz report behind issue 23): each is one line on stderr, exit 2, before any
encoding, and leaves nothing beside the output (no ``.partial-*``, no ``.tmp-*``): ``--max-length`` past the
encoder's position table (it was an ONNX Runtime traceback on the first long chunk) or too short to hold text
(2 was accepted), ``--nlist`` above the chunk count (refused only after encoding, in two lines), an ``--out``
that is a dangling symlink (a NotADirectoryError and a temporary folder left), a rerun refused because the
output holds a changed file (two lines). A build refused after encoding began removes its partial folder;
only an interrupted encode keeps it, to resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import run_lvm

LONG = " ".join(f"Word{i} is one more word in a sentence that never seems to end." for i in range(120))


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".partial-" in p.name or ".tmp-" in p.name or ".old-" in p.name)


def _refused(proc, *needles: str) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("lvm: error: "), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "encoding" not in proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def long_corpus(tmp_path) -> Path:
    """One chunk longer than 512 MiniLM tokens (about 2,000), then short ones."""
    path = tmp_path / "long.jsonl"
    rows = [
        {"id": "x", "title": "Long", "chunks": [LONG, "A short chunk follows it.", "And another one."]},
        {"id": "y", "title": "Short", "chunks": ["Cats sleep a lot.", "Dogs bark at night."]},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_max_length_past_the_position_table_is_refused_before_encoding(tmp_path, long_corpus):
    out = tmp_path / "ds"
    proc = run_lvm("build-data", "--corpus", str(long_corpus), "--out", str(out), "--max-length", "513", "--quiet")
    _refused(proc, "--max-length 513", "512")
    assert not out.exists() and _leftovers(tmp_path) == []


def test_max_length_too_short_for_any_text_is_refused(tmp_path, small_corpus):
    for n in ("2", "7"):
        proc = run_lvm("build-data", "--corpus", str(small_corpus), "--out", str(tmp_path / "ds"), "--max-length", n)
        _refused(proc, "--max-length", "[8, ")
    assert _leftovers(tmp_path) == [] and not (tmp_path / "ds").exists()


def test_the_library_refuses_the_same_max_lengths(tmp_path, small_corpus):
    from lvm.data.build import BuildConfig, build_dataset
    from lvm.data.encoders import EncoderSpec
    from lvm.errors import LvmError

    for n, needle in ((513, "512 tokens"), (2, "[8, ")):
        cfg = BuildConfig(corpus=str(small_corpus), encoder=EncoderSpec(max_length=n))
        with pytest.raises(LvmError, match=needle.replace("[", r"\[")):
            build_dataset(cfg, tmp_path / "ds", progress=False, log=lambda m: None)
    assert list(tmp_path.iterdir()) == []


def test_max_positions_reads_the_models_config(tmp_path):
    from lvm.data.encoders import max_positions, resolve_model_dir

    assert max_positions(resolve_model_dir("all-MiniLM-L6-v2")[0]) == 512
    cases = [
        ({"model_type": "mpnet", "max_position_embeddings": 514, "pad_token_id": 1}, 512),  # fairseq offset
        ({"model_type": "xlm-roberta", "max_position_embeddings": 514, "pad_token_id": 1}, 512),
        ({"model_type": "bert", "max_position_embeddings": 512, "pad_token_id": 0}, 512),
        ({"model_type": "t5", "n_positions": 512}, None),  # relative positions: no table to run past
        ({"model_type": "bert", "max_position_embeddings": 512, "position_embedding_type": "relative_key"}, None),
        ({"model_type": "bert", "max_position_embeddings": "512"}, None),
    ]
    for config, expected in cases:
        (tmp_path / "config.json").write_text(json.dumps(config))
        assert max_positions(tmp_path) == expected, config
    (tmp_path / "config.json").write_text("{not json")
    assert max_positions(tmp_path) is None


def test_nlist_above_the_chunk_count_is_refused_before_encoding(tmp_path, small_corpus):
    out = tmp_path / "ds"
    proc = run_lvm(
        "build-data", "--corpus", str(small_corpus), "--out", str(out), "--index", "ivf-flat-ip", "--nlist", "1000",
        "--quiet",
    )  # fmt: skip
    _refused(proc, "--nlist 1000", "54 chunks")
    assert not out.exists() and _leftovers(tmp_path) == []


def test_an_out_that_is_a_dangling_symlink_is_refused(tmp_path, small_corpus):
    out = tmp_path / "ds"
    out.symlink_to(tmp_path / "nowhere")
    proc = run_lvm("build-data", "--corpus", str(small_corpus), "--out", str(out), "--quiet")
    _refused(proc, "symbolic link", "nowhere")
    assert out.is_symlink() and not (tmp_path / "nowhere").exists() and _leftovers(tmp_path) == []


def test_a_refused_rerun_is_one_line(tmp_path, small_corpus, small_dataset):
    out = tmp_path / "ds"
    shutil.copytree(small_dataset, out)
    with open(out / "texts.jsonl", "a") as fh:  # a changed dataset: not reused, and not lvm's to replace
        fh.write('"an extra line"\n')
    proc = run_lvm("build-data", "--corpus", str(small_corpus), "--out", str(out), "--quiet")
    _refused(proc, "refusing to replace", "texts.jsonl")
    assert _leftovers(tmp_path) == []


def test_a_build_refused_after_encoding_leaves_no_partial_but_an_interrupted_one_resumes(
    tmp_path, small_corpus, monkeypatch
):
    from lvm.data import build
    from lvm.data.build import BuildConfig, build_dataset
    from lvm.errors import LvmError

    cfg = BuildConfig(corpus=str(small_corpus))
    out = tmp_path / "ds"

    def refuse(*a, **k):
        raise LvmError("the index cannot be built (test)")

    monkeypatch.setattr(build, "build_and_save_index", refuse)
    with pytest.raises(LvmError, match="test"):
        build_dataset(cfg, out, progress=False, log=lambda m: None)
    assert not out.exists() and _leftovers(tmp_path) == []

    def interrupt(*a, **k):  # Ctrl-C after the encode: the partial folder stays, documented, to resume
        raise KeyboardInterrupt

    monkeypatch.setattr(build, "build_and_save_index", interrupt)
    with pytest.raises(KeyboardInterrupt):
        build_dataset(cfg, out, progress=False, log=lambda m: None)
    kept = _leftovers(tmp_path)
    assert len(kept) == 1 and ".partial-" in kept[0]
    assert json.loads((tmp_path / kept[0] / "done.json").read_text())["rows"] == 54
    monkeypatch.undo()
    logs: list[str] = []
    res = build_dataset(cfg, out, progress=False, log=logs.append)
    assert res.meta["counts"]["chunks"] == 54 and _leftovers(tmp_path) == []
