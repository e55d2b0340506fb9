"""What an outside fuzzer found (issue 20, round two), fixed as classes: each test failed before.

1. same-shape swaps: a dataset's files replaced by others of the same shape are refused on open;
2. damage ignored: every file a command needs is checked, one line naming it;
3. parser limits: deep JSON, garbage .npy headers, an ONNX export that does not load;
4. data loss in output folders: a rerun replaces only lvm's own files; a refused run leaves nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import run_lvm
from lvm.cli import main
from lvm.data.datasets import _HASHED_FILES, open_dataset
from lvm.data.synth import SynthConfig, synth_dataset
from lvm.errors import LvmError
from lvm.io import OUTPUT_MARKER, atomic_dir, sha256_files

N, DIM = 3_000, 16


def lvm(capsys, *argv: str) -> tuple[int, str]:
    """``lvm ARGV`` in this process: (exit code, stderr)."""
    capsys.readouterr()
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse
        rc = exc.code
    return rc, capsys.readouterr().err


def refused(capsys, *argv: str) -> str:
    """``lvm ARGV`` must refuse with exit 2 and exactly one line; that line."""
    rc, err = lvm(capsys, *argv)
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("lvm: error:"), (rc, err)
    return lines[0]


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> dict[str, Path]:
    """Two synthetic datasets of one shape (seeds 1 and 2) and a copy_last run on the first."""
    root = tmp_path_factory.mktemp("reliability")
    a, b = root / "a", root / "b"
    synth_dataset(SynthConfig(n_chunks=N, dim=DIM, seed=1), a, progress=False)
    synth_dataset(SynthConfig(n_chunks=N, dim=DIM, seed=2), b, progress=False)
    assert main(["train", "--model", "copy_last", "--dataset", str(a), "--out", str(root / "run"), "--quiet"]) == 0
    return {"a": a, "b": b, "run": root / "run"}


def reseal(folder: Path) -> Path:
    """Make ``folder`` self-consistent again after its files were edited on purpose: the content
    hash recomputed into meta.json, the integrity record dropped (the full hash runs on next open)."""
    meta = json.loads((folder / "meta.json").read_text())
    meta["content_hash"] = sha256_files([folder / f for f in _HASHED_FILES])
    (folder / "meta.json").write_text(json.dumps(meta))
    shutil.rmtree(folder / "cache", ignore_errors=True)
    return folder


# ============================================================================= 1. same-shape swaps


def test_a_same_shape_vectors_swap_is_refused_by_every_command(synth, tmp_path, capsys):
    a, b = synth["a"], synth["b"]
    copy = tmp_path / "copy"
    shutil.copytree(a, copy)
    assert open_dataset(copy).n_chunks == N  # a copy (new inodes and mtimes): hashed once, accepted
    shutil.copyfile(b / "vectors.npy", copy / "vectors.npy")  # another dataset's array, same shape
    with pytest.raises(LvmError, match="content hash mismatch: vectors.npy changed"):
        open_dataset(copy)
    for argv in (
        ["inspect", copy],
        ["coherence", copy],
        ["evaluate", synth["run"], "--dataset", copy],
        ["filter", copy, "--out", tmp_path / "f"],
        ["sequences", copy, "--ctx", "3", "--out", tmp_path / "s"],
    ):
        assert "vectors.npy changed" in refused(capsys, *argv)
    assert not (tmp_path / "f").exists() and not (tmp_path / "s").exists()


def test_rows_shuffled_in_place_with_size_and_mtime_kept_are_caught_by_the_sketch(synth, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(synth["a"], copy)
    open_dataset(copy)  # the record: sizes, mtimes, inodes and the sketch of these files
    vec_path = copy / "vectors.npy"
    st = vec_path.stat()
    vec = np.load(vec_path)
    with open(vec_path, "r+b") as fh:  # same file (inode), same size
        fh.seek(-vec.nbytes, os.SEEK_END)
        fh.write(vec[np.random.default_rng(0).permutation(N)].tobytes())
    os.utime(vec_path, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the old mtime
    assert vec_path.stat().st_mtime_ns == st.st_mtime_ns and vec_path.stat().st_ino == st.st_ino
    with pytest.raises(LvmError, match="vector sketch moved"):
        open_dataset(copy)


def test_symlinked_files_are_accepted_only_with_the_recorded_content(synth, tmp_path):
    a, b = synth["a"], synth["b"]
    same, other = tmp_path / "same", tmp_path / "other"
    for folder, target in ((same, a), (other, b)):
        shutil.copytree(a, folder)
        (folder / "vectors.npy").unlink()
        (folder / "vectors.npy").symlink_to(target / "vectors.npy")  # outside the folder
    assert open_dataset(same).n_chunks == N
    with pytest.raises(LvmError, match="vectors.npy changed"):
        open_dataset(other)
    (same / "vectors.npy").unlink()
    (same / "vectors.npy").symlink_to(b / "vectors.npy")  # re-pointed after it was accepted
    with pytest.raises(LvmError, match="vectors.npy changed"):
        open_dataset(same)


def test_a_view_whose_parent_was_swapped_is_refused(synth, tmp_path, capsys):
    parent, view = tmp_path / "parent", tmp_path / "view"
    shutil.copytree(synth["a"], parent)
    assert lvm(capsys, "filter", parent, "--out", view, "--min-coherence", "0.1")[0] == 0
    assert open_dataset(view).n_chunks > 0
    shutil.copyfile(synth["b"] / "vectors.npy", parent / "vectors.npy")
    line = refused(capsys, "evaluate", synth["run"], "--dataset", view)
    assert "is a view of" in line and "changed since the view was written" in line and "vectors.npy" in line
    assert "changed since" in refused(capsys, "inspect", view)


def test_a_dataset_without_a_record_is_hashed_once_then_recorded(synth, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(synth["a"], old)
    shutil.rmtree(old / "cache")  # as written before the record existed
    open_dataset(old)
    rec = json.loads((old / "cache" / "verified.json").read_text())
    assert rec["content_hash"] == open_dataset(old).content_hash and len(rec["vector_sketch"]) == 16
    shutil.rmtree(old / "cache")
    shutil.copyfile(synth["b"] / "vectors.npy", old / "vectors.npy")
    with pytest.raises(LvmError, match="content hash mismatch"):
        open_dataset(old)
    assert not (old / "cache" / "verified.json").exists()  # nothing recorded for damaged files


# ============================================================================= 2. damage ignored


def test_every_file_a_command_needs_is_checked_and_named(synth, tmp_path, capsys):
    a = synth["a"]
    for name, argv in (
        ("articles.jsonl", ["coherence", "{ds}"]),
        ("texts.jsonl", ["filter", "{ds}", "--out", "{out}"]),
        ("texts.jsonl", ["filter", "{ds}", "--out", "{out}", "--blocklist", ""]),
    ):
        ds = tmp_path / f"missing-{name}-{len(argv)}"
        shutil.copytree(a, ds)
        (ds / name).unlink()
        line = refused(capsys, *[x.format(ds=ds, out=tmp_path / "out") for x in argv])
        assert f"{name} is missing" in line
        assert not (tmp_path / "out").exists()
    # garbage, and the content hash recomputed to match it: the command reads what it needs anyway
    ds = tmp_path / "garbage-articles"
    shutil.copytree(a, ds)
    (ds / "articles.jsonl").write_text("[[[\n")
    assert "content hash mismatch: articles.jsonl changed" in refused(capsys, "coherence", ds)
    reseal(ds)
    assert "articles.jsonl" in refused(capsys, "coherence", ds)
    ds = tmp_path / "garbage-texts"
    shutil.copytree(a, ds)
    (ds / "texts.jsonl").write_text('"only one line"\n')
    reseal(ds)
    assert "texts.jsonl" in refused(capsys, "filter", ds, "--out", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ============================================================================= 3. parser limits


def test_json_nested_100000_deep_is_one_line(tmp_path, capsys):
    from lvm.data.corpora import load_corpus

    corpus = tmp_path / "deep.jsonl"
    corpus.write_text('{"id": "a", "text": "fine"}\n' + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(LvmError, match=r"deep.jsonl:2: not valid JSON \(nested too deeply\)"):
        load_corpus(str(corpus))
    near = tmp_path / "near.jsonl"  # just under the parser's limit, in a field that is turned into text
    near.write_text(json.dumps({"id": json.loads("[" * 900 + "]" * 900), "text": "x"}) + "\n")
    with contextlib.suppress(LvmError):
        load_corpus(str(near))
    line = refused(capsys, "build-data", "--corpus", corpus, "--out", tmp_path / "ds")
    assert "nested too deeply" in line and not (tmp_path / "ds").exists()


def _npy_member(header: bytes) -> bytes:
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + b"\0" * 16


@pytest.mark.parametrize(
    "header",
    [
        b"{'descr': '<f4', 'fortran_order': False, 'shape': (3,",  # tokenize.TokenError
        b"{'descr': '<f4' '''",  # TokenError (an open string)
        b"{'descr': '<f4', 'fortran_order': False, 'shape': (10**30,), }",  # ValueError
        b"{'descr': '<f4', 'fortran_order': False, 'shape': (3,)) }",  # SyntaxError
        b"(" * 5000,  # nested too deep
        b"\xff\xfe\x00",  # not text
    ],
)
def test_an_npz_member_with_a_garbage_header_is_one_line(tmp_path, capsys, header):
    from lvm.data.interop import read_npz

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("context_sequences.npy", _npy_member(header))
    path = tmp_path / "bad.npz"
    path.write_bytes(buf.getvalue())
    with pytest.raises(LvmError, match="not a readable .npz"):
        read_npz(path)
    assert "not a readable .npz" in refused(capsys, "import-npz", path, "--out", tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


def test_an_onnx_export_that_matches_its_record_but_does_not_load_is_exported_again(tmp_path, monkeypatch, capsys):
    from lvm.data.encoders import Encoder, EncoderSpec

    monkeypatch.setenv("LVM_CACHE_DIR", str(tmp_path))
    first = Encoder(EncoderSpec(backend="onnx"))
    [folder] = [p for p in (tmp_path / "onnx").iterdir() if not p.name.startswith(".")]
    model, record_path = folder / "model.onnx", folder / "export.json"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 3])  # truncated ...
    record = json.loads(record_path.read_text())
    record["bytes"], record["sha256"] = model.stat().st_size, hashlib.sha256(model.read_bytes()).hexdigest()
    record_path.write_text(json.dumps(record))  # ... and its record rewritten to match
    capsys.readouterr()
    again = Encoder(EncoderSpec(backend="onnx"))
    err = capsys.readouterr().err
    assert "does not load" in err and "exporting again" in err
    assert again.fingerprint == first.fingerprint


# ============================================================================= 4. output folders


def test_a_rerun_keeps_the_users_files_and_replaces_only_lvms(synth, tmp_path, capsys):
    out = tmp_path / "F"
    argv = ["filter", synth["a"], "--out", out, "--min-coherence", "0.1"]
    assert lvm(capsys, *argv)[0] == 0
    marker = json.loads((out / OUTPUT_MARKER).read_text())
    assert {"meta.json", "rows.npy", "mask.npy", "filter_summary.json"} <= set(marker["files"])
    assert all(len(f["sha256"]) == 64 and f["size"] >= 0 for f in marker["files"].values())
    (out / "my_notes.md").write_text("mine")
    (out / "plots").mkdir()
    (out / "plots" / "fig1.png").write_bytes(b"\x89PNG")
    line = refused(capsys, *argv)
    assert "my_notes.md" in line and "plots/fig1.png" in line
    assert (out / "my_notes.md").read_text() == "mine" and (out / "plots" / "fig1.png").read_bytes() == b"\x89PNG"
    (out / "my_notes.md").unlink()
    shutil.rmtree(out / "plots")
    # what lvm wrote, then rebuilt there (the index, caches): still lvm's, the rerun succeeds
    assert lvm(capsys, "build-index", out, "--quiet")[0] == 0
    assert lvm(capsys, *argv)[0] == 0 and not (out / "index.faiss").exists()
    # a file lvm wrote that the user has since changed is the user's
    (out / "filter_summary.json").write_text('{"my": "edit"}')
    assert "filter_summary.json" in refused(capsys, *argv)
    assert (out / "filter_summary.json").read_text() == '{"my": "edit"}'


def test_an_old_marker_without_a_file_list(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out, "dataset") as tmp:
        (tmp / "meta.json").write_text("{}")
    (out / OUTPUT_MARKER).write_text(json.dumps({"kind": "dataset", "written_at": "2026-01-01T00:00:00Z"}))
    (out / "cache").mkdir()
    (out / "cache" / "finite.json").write_text("[]")
    with atomic_dir(out, "dataset") as tmp:  # nothing but what a dataset holds: lvm's
        (tmp / "meta.json").write_text("{}")
    (out / OUTPUT_MARKER).write_text(json.dumps({"kind": "dataset", "written_at": "2026-01-01T00:00:00Z"}))
    (out / "notes.txt").write_text("mine")
    with pytest.raises(LvmError, match="notes.txt"), atomic_dir(out, "dataset") as tmp:
        (tmp / "meta.json").write_text("{}")
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing half-written beside it


def test_a_file_added_while_the_command_ran_is_kept(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        (tmp / "v.txt").write_text("old")
    with pytest.raises(LvmError, match="late.txt"), atomic_dir(out) as tmp:
        (tmp / "v.txt").write_text("new")
        (out / "late.txt").write_text("mine")  # the user, meanwhile
    assert (out / "late.txt").read_text() == "mine" and (out / "v.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_refused_train_leaves_no_folder(synth, tmp_path, capsys):
    """Refused after its options and data were read (a warm start of another model type)."""
    argv = ["train", "--model", "amn", "--dataset", synth["a"], "--epochs", "1", "--warm-start", synth["run"]]
    assert "cannot initialise" in refused(capsys, *argv, "--out", tmp_path / "new")
    assert not (tmp_path / "new").exists()
    (tmp_path / "empty").mkdir()
    assert "cannot initialise" in refused(capsys, *argv, "--out", tmp_path / "empty")
    assert list((tmp_path / "empty").iterdir()) == []  # an empty folder the user made stays, empty


def test_a_user_file_in_an_outputs_cache_folder_survives_a_rerun(tmp_path):
    """The widened fuzz suite (output_rerun): cache/ counted as lvm's whole, so a user's file there was deleted
    by a rerun. Only the files lvm writes in cache/ are its own now; the rerun refuses, naming the file."""
    out = tmp_path / "S"
    args = ("synth", "--out", str(out), "--n-chunks", "60", "--dim", "4", "--quiet")
    assert run_lvm(*args).returncode == 0
    (out / "cache").mkdir(exist_ok=True)
    (out / "cache" / "mine.txt").write_text("mine")
    again = run_lvm(*args)
    assert again.returncode == 2 and "cache/mine.txt" in again.stderr and len(again.stderr.strip().splitlines()) == 1
    assert (out / "cache" / "mine.txt").read_text() == "mine"
    (out / "cache" / "mine.txt").unlink()
    assert run_lvm(*args).returncode == 0  # lvm's own cache files do not block a rerun


# ============================================================================= 5. the long fuzz profile's leftovers


def _edit_json(path: Path, edit) -> None:
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


def test_a_damaged_integrity_record_is_hashed_again_not_a_traceback(synth, tmp_path, capsys):
    """cache/verified.json with a file's [size, mtime, inode] replaced by a number (1e999, a string,
    floats) crashed inspect / evaluate / coherence with a TypeError; now the file is hashed again."""
    copy = tmp_path / "copy"
    shutil.copytree(synth["a"], copy)
    open_dataset(copy)  # writes the record
    record = copy / "cache" / "verified.json"
    for bad in ("1e999", '"x"', "[1.5, 2, 3]", "[true, 1, 2]", "[]", "null"):
        text = json.loads(record.read_text())
        text["files"]["texts.jsonl"] = "@@"
        record.write_text(json.dumps(text).replace('"@@"', bad))
        for argv in (["inspect", copy], ["coherence", copy], ["evaluate", synth["run"], "--dataset", copy]):
            rc, err = lvm(capsys, *argv)
            assert rc == 0 and "Traceback" not in err, (bad, argv, err)


def test_an_article_table_with_ids_that_are_not_its_lines_is_refused(synth, tmp_path, capsys):
    """articles.jsonl rows carry their dense id; one edited to 1e999 / NaN / another article's id (and
    meta.json resealed) was accepted by filter and coherence."""
    for bad in ("1e999", "NaN", "-1", "5", '"0"'):
        copy = tmp_path / f"copy-{len(list(tmp_path.iterdir()))}"
        shutil.copytree(synth["a"], copy)
        lines = (copy / "articles.jsonl").read_text().splitlines()
        lines[1] = lines[1].replace('"article_id": 1,', f'"article_id": {bad},', 1)
        (copy / "articles.jsonl").write_text("\n".join(lines) + "\n")
        reseal(copy)
        for argv in (["coherence", copy, "--by-topic", "--json"], ["filter", copy, "--out", tmp_path / "f"]):
            assert "articles.jsonl:2: " in refused(capsys, *argv), bad
        assert not (tmp_path / "f").exists()


@pytest.mark.parametrize(
    "key, value", [("train_chunks", "1e999"), ("val_chunks", "-5"), ("ood_articles", "1"), ("articles", "7")]
)
def test_meta_counts_that_are_not_the_arrays_are_refused(synth, tmp_path, capsys, key, value):
    """meta.json's per-split counts edited (inf, negative, another dataset's) were accepted: every n the
    gates report would be misstated."""
    copy = tmp_path / "copy"
    shutil.copytree(synth["a"], copy)
    meta = (copy / "meta.json").read_text()
    doc = json.loads(meta)
    doc["counts"][key] = "@@"
    (copy / "meta.json").write_text(json.dumps(doc).replace('"@@"', value))
    for argv in (["inspect", copy, "--json"], ["coherence", copy], ["evaluate", synth["run"], "--dataset", copy]):
        assert "meta.json" in refused(capsys, *argv) and key.split("_")[0] in refused(capsys, *argv)


def test_a_resumed_run_config_out_of_the_flags_bounds_is_refused(synth, tmp_path, capsys):
    """config.json's max_per_article = 10**400 was accepted on resume (the flag itself is bounded)."""
    run = tmp_path / "run"
    argv = ["train", "--model", "amn", "--dataset", synth["a"], "--epochs", "1", "--batch-size", "64", "--quiet"]
    assert lvm(capsys, *argv, "--out", run)[0] == 0
    for bad in ("1" + "0" * 400, "-1", "1e999", "16777217"):
        shutil.copytree(run, tmp_path / "r2", dirs_exist_ok=True)
        text = (tmp_path / "r2" / "config.json").read_text()
        doc = json.loads(text)
        doc["max_per_article"] = "@@"
        (tmp_path / "r2" / "config.json").write_text(json.dumps(doc).replace('"@@"', bad))
        assert "max_per_article" in refused(capsys, "train", "--resume", tmp_path / "r2", "--epochs", "2", "--quiet")


def test_a_swapped_or_damaged_index_file_is_rebuilt_not_trusted(synth, tmp_path):
    """index.faiss replaced by another dataset's index of the same shape, or with flipped bytes past the
    header, was loaded (index.json still matched) and oracle_recall went RED on good data. The file's
    hash is recorded in index.json and checked when its size, mtime or inode moved."""
    from lvm.data.index import load_index, load_or_build_index

    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(synth["a"], a)
    shutil.copytree(synth["b"], b)
    load_or_build_index(open_dataset(a))
    load_or_build_index(open_dataset(b))
    good = (a / "index.faiss").read_bytes()
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF
    for damage in ((b / "index.faiss").read_bytes(), bytes(flipped)):
        (a / "index.faiss").write_bytes(damage)
        with pytest.raises(LvmError, match="not the index file saved with index.json"):
            load_index(open_dataset(a))
        load_or_build_index(open_dataset(a))  # rebuilt
        assert (a / "index.faiss").read_bytes() == good  # the same index again (seeded build)
        load_index(open_dataset(a))
    (a / "index.faiss").unlink()
    (a / "index.faiss").mkdir()
    with pytest.raises(LvmError, match=r"index.faiss is a folder, not a file: remove it; and it cannot be rebuilt"):
        load_or_build_index(open_dataset(a))


def test_an_output_path_that_is_a_symlink_is_refused_and_nothing_is_left(synth, tmp_path, capsys):
    """--out a dangling symlink: NotADirectoryError at the final swap and the temporary folder left
    behind (fuzz symlinks class); a link to a folder would have been moved aside, not written through."""
    (tmp_path / "target").mkdir()
    for target in (tmp_path / "nowhere" / "x", tmp_path / "target"):
        link = tmp_path / "out"
        link.unlink(missing_ok=True)
        link.symlink_to(target)
        before = sorted(p.name for p in tmp_path.iterdir())
        for argv in (
            ["filter", synth["a"], "--out", link],
            ["sequences", synth["a"], "--ctx", "3", "--out", link],
            ["synth", "--out", link, "--n-chunks", "60", "--dim", "4", "--quiet"],
        ):
            assert "is a symbolic link" in refused(capsys, *argv)
            assert sorted(p.name for p in tmp_path.iterdir()) == before and link.is_symlink()
        assert list((tmp_path / "target").iterdir()) == []


@pytest.mark.parametrize(
    "key, value", [("first_chunk", "9223372036854775808"), ("first_chunk", "0"), ("n_chunks", "1"), ("n_chunks", "0")]
)
def test_an_article_row_whose_chunk_range_is_not_its_rows_is_refused(synth, tmp_path, capsys, key, value):
    """articles.jsonl line 3's first_chunk = 2**63 (meta.json resealed) was accepted by filter and coherence
    (the long fuzz profile): each row's first_chunk / n_chunks must be its article's block in article_id.npy."""
    copy = tmp_path / "copy"
    shutil.copytree(synth["a"], copy)
    lines = (copy / "articles.jsonl").read_text().splitlines()
    row = json.loads(lines[2])
    row[key] = "@@"
    lines[2] = json.dumps(row).replace('"@@"', value)
    (copy / "articles.jsonl").write_text("\n".join(lines) + "\n")
    reseal(copy)
    for argv in (["coherence", copy, "--by-topic", "--json"], ["filter", copy, "--out", tmp_path / "f"]):
        assert "articles.jsonl:3: article 2 holds chunks" in refused(capsys, *argv)
    assert not (tmp_path / "f").exists()


@pytest.mark.parametrize("literal", ["Infinity", "NaN", "-1e999", "1" + "0" * 400])
def test_meta_json_with_a_non_finite_number_in_any_key_is_refused(synth, tmp_path, capsys, literal):
    """meta.json's synthetic/seed = inf (a key no schema names) was accepted and copied by filter into a
    meta.json that is not JSON (the long fuzz profile's dataset_meta class)."""
    copy = tmp_path / "copy"
    shutil.copytree(synth["a"], copy)
    doc = json.loads((copy / "meta.json").read_text())
    doc.setdefault("synthetic", {})["seed"] = "@@"
    (copy / "meta.json").write_text(json.dumps(doc).replace('"@@"', literal))
    for argv in (["filter", copy, "--out", tmp_path / "f", "--min-coherence", "0.1"], ["inspect", copy]):
        assert "synthetic.seed is not a finite number" in refused(capsys, *argv)
    assert not (tmp_path / "f").exists()


def test_watch_with_a_context_beyond_the_models_is_a_usage_error_that_writes_nothing(synth, tmp_path, capsys):
    """lvm watch --ctx 4096 on a ctx-5 run: 'lvm watch: error: ...' per checkpoint and a watch log written
    (the long fuzz profile's numeric_flags class); now one usage line, exit 2, nothing written."""
    run = tmp_path / "run"
    assert (
        lvm(capsys, "train", "--model", "amn", "--dataset", synth["a"], "--epochs", "1", "--out", run, "--quiet")[0]
        == 0
    )
    before = sorted(p.name for p in run.iterdir())
    line = refused(capsys, "watch", run, "--once", "--dataset", synth["a"], "--settle", "0", "--ctx", "4096")
    assert "--ctx 4096: the run's model was built for contexts of at most 5 chunks" in line
    assert sorted(p.name for p in run.iterdir()) == before
