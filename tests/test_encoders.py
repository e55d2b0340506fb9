import time
from pathlib import Path

import numpy as np
import pytest

from conftest import run_lvm
from lvm.data.encoders import EncoderSpec, fingerprint_of, load_encoder
from lvm.errors import LvmError


def test_fingerprint_is_identical_in_two_separate_processes():
    first, second = run_lvm("fingerprint"), run_lvm("fingerprint")
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    fp = first.stdout.strip()
    assert len(fp) == 64 and fp == second.stdout.strip()
    # and equal to the in-process value
    assert load_encoder().fingerprint == fp


def test_same_model_with_cls_pooling_has_a_different_fingerprint():
    mean, cls = load_encoder(), load_encoder(EncoderSpec(pooling="cls"))
    assert mean.dim == cls.dim == 384  # same dimension ...
    assert mean.fingerprint != cls.fingerprint  # ... different space
    # not only the pipeline description: the probe geometry itself differs
    assert fingerprint_of(mean.pipeline, mean.probe_vectors) != fingerprint_of(mean.pipeline, cls.probe_vectors)


def test_fingerprint_tolerates_float_noise_but_not_a_real_change():
    enc = load_encoder()
    p = enc.probe_vectors.astype(np.float64)
    noisy = p + np.random.default_rng(0).normal(0, 1e-7, p.shape)
    assert fingerprint_of(enc.pipeline, noisy) == enc.fingerprint
    assert fingerprint_of({**enc.pipeline, "max_length": 128}, p) != enc.fingerprint


def test_encodes_unit_vectors_and_similar_sentences_are_closer():
    enc = load_encoder()
    v = enc.encode(["A cat sat on the mat.", "A kitten rested on the rug.", "Interest rates rose sharply."])
    assert v.shape == (3, 384) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2


def test_an_unknown_encoder_fails_fast_with_one_line():
    start = time.perf_counter()
    res = run_lvm("fingerprint", "--encoder", "no-such-org/no-such-model")
    elapsed = time.perf_counter() - start
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot be loaded offline" in lines[0] and "--encoder PATH" in lines[0]
    # guard against the ~70 s hub retry loop (the real figure, ~1 s, is in the issue notes)
    assert elapsed < 20


def test_a_folder_that_is_not_a_model_is_refused(tmp_path):
    with pytest.raises(LvmError, match="not a sentence-transformers model folder"):
        load_encoder(EncoderSpec(name=str(tmp_path)))
    with pytest.raises(LvmError, match="unknown pooling"):
        load_encoder(EncoderSpec(pooling="median"))


# --- backends: torch and ONNX Runtime (issue 15) ---------------------------------------------------

# The torch fingerprint of the packaged model, as recorded by every dataset built before backends
# existed (data/wiki-minilm's meta.json): adding backends must not change it.
_PACKAGED_REVISION = "5076c6045d315992ac1325636e50a5a084335f5edad94d16747e5d4370a0fb0d"
_PACKAGED_TORCH_FINGERPRINT = "1464435b9241b3e0aa43403a7721531a0955949da7e1b4d8d7c6be3fcbf3100a"
_OLD_SPEC = {"name": "all-MiniLM-L6-v2", "pooling": None, "normalize": True, "max_length": None}
_OLD_PIPELINE_KEYS = {"fingerprint_version", "model_id", "revision", "pooling", "normalize", "max_length", "dim"}


def _agreement_texts() -> list[str]:
    """Probes plus texts of very different lengths: one word, sentences, and paragraphs past the
    256-token truncation, so that padding, masking and truncation all take part."""
    from lvm.data.encoders import PROBE_SENTENCES

    long = " ".join(PROBE_SENTENCES * 8)
    return [
        *PROBE_SENTENCES,
        "Paris",
        "The mitochondrion is the powerhouse of the cell, producing most of its ATP.",
        " ".join(PROBE_SENTENCES[:4]),
        long,
        long[::-1],
        "Zürich, São Paulo and Kraków: naïve café façades — 東京 and Москва too.",
    ]


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_onnx_vectors_agree_with_torch_on_probes_and_texts():
    onnx, torch_ = load_encoder(EncoderSpec(backend="onnx")), load_encoder(EncoderSpec(backend="torch"))
    assert onnx.spec.backend == "onnx" and torch_.spec.backend == "torch"
    assert _cos(onnx.probe_vectors, torch_.probe_vectors).min() >= 0.9999
    texts = _agreement_texts()
    batched = _cos(onnx.encode(texts, batch_size=8), torch_.encode(texts, batch_size=8))
    single = _cos(onnx.encode(texts[-3:], batch_size=1), torch_.encode(texts[-3:], batch_size=1))  # no padding
    assert batched.min() >= 0.9999 and single.min() >= 0.9999, (batched.min(), single.min())
    assert np.allclose(np.linalg.norm(onnx.encode(texts), axis=1), 1.0, atol=1e-5)  # Normalize still last


def test_the_pooling_override_works_with_the_onnx_backend():
    onnx_cls = load_encoder(EncoderSpec(pooling="cls", backend="onnx"))
    torch_cls = load_encoder(EncoderSpec(pooling="cls", backend="torch"))
    assert onnx_cls.pipeline["pooling"] == "cls"
    assert _cos(onnx_cls.probe_vectors, torch_cls.probe_vectors).min() >= 0.9999
    assert onnx_cls.fingerprint not in {torch_cls.fingerprint, load_encoder(EncoderSpec(backend="onnx")).fingerprint}


def test_backends_have_different_fingerprints_and_torch_keeps_the_old_one():
    onnx, torch_ = load_encoder(EncoderSpec(backend="onnx")), load_encoder(EncoderSpec(backend="torch"))
    assert onnx.fingerprint != torch_.fingerprint
    assert set(torch_.pipeline) == _OLD_PIPELINE_KEYS  # the torch pipeline dict is the pre-backend one
    assert {k: v for k, v in onnx.pipeline.items() if k in _OLD_PIPELINE_KEYS} == torch_.pipeline
    assert (onnx.pipeline["backend"], onnx.pipeline["precision"]) == ("onnx", "fp32")
    assert onnx.pipeline["revision"] == torch_.revision  # the source weights, not the export's bytes
    if torch_.revision == _PACKAGED_REVISION:
        assert torch_.fingerprint == _PACKAGED_TORCH_FINGERPRINT
    # the export lives outside the packaged model folder: the torch fingerprint's weight digest is untouched
    from lvm.data.encoders import weights_digest

    assert not list(torch_.model_dir.rglob("*.onnx")) and weights_digest(torch_.model_dir) == torch_.revision


def test_an_old_spec_means_torch_and_specs_round_trip():
    from lvm.data.encoders import DEFAULT_BACKEND

    old = EncoderSpec.from_dict(_OLD_SPEC)
    assert (old.backend, old.precision) == ("torch", "fp32")
    assert old.to_dict() == _OLD_SPEC  # a torch spec is recorded exactly as before
    assert EncoderSpec().backend == DEFAULT_BACKEND == "onnx"  # new builds of the packaged model
    assert EncoderSpec(name="some/other-model").backend == "torch"  # never measured: torch
    onnx = EncoderSpec(backend="onnx")
    assert onnx.to_dict() == {**_OLD_SPEC, "backend": "onnx", "precision": "fp32"}
    assert EncoderSpec.from_dict(onnx.to_dict()) == onnx
    assert EncoderSpec.from_dict(old.to_dict()) == old
    with pytest.raises(LvmError, match="unknown encoder backend"):
        load_encoder(EncoderSpec(backend="tensorrt"))
    with pytest.raises(LvmError, match="unsupported encoder precision"):
        load_encoder(EncoderSpec(backend="onnx", precision="int4"))


def test_the_build_key_of_a_torch_spec_is_the_pre_backend_one():
    from lvm.data import build
    from lvm.data.encoders import resolve_model_dir, weights_digest

    model_dir, model_id = resolve_model_dir("all-MiniLM-L6-v2")
    old_key = build._sha(_OLD_SPEC, model_id, weights_digest(model_dir), build._package_versions())
    assert build.encoder_key(EncoderSpec(backend="torch")) == old_key  # old datasets are reused, not re-encoded
    assert build.encoder_key(EncoderSpec(backend="onnx")) != old_key


def _fresh_onnx(monkeypatch, cache: Path):
    """An onnx Encoder built now (not the per-process cache of load_encoder), exporting into ``cache``."""
    from lvm.data.encoders import Encoder

    monkeypatch.setenv("LVM_CACHE_DIR", str(cache))
    return Encoder(EncoderSpec(backend="onnx"))


def _export_folder(cache: Path) -> Path:
    [folder] = [p for p in (cache / "onnx").iterdir() if not p.name.startswith(".")]
    return folder


def test_the_export_cache_is_reused(tmp_path, monkeypatch):
    from lvm.data import encoders

    first = _fresh_onnx(monkeypatch, tmp_path)
    folder = _export_folder(tmp_path)
    assert {p.name for p in folder.iterdir()} == {"model.onnx", "export.json"}
    stat = (folder / "model.onnx").stat()

    def no_export(*args, **kwargs):
        raise AssertionError("the cached export should have been loaded, not redone")

    monkeypatch.setattr(encoders, "_export_onnx", no_export)
    second = _fresh_onnx(monkeypatch, tmp_path)
    again = (folder / "model.onnx").stat()
    assert (again.st_ino, again.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)
    assert second.fingerprint == first.fingerprint
    assert np.array_equal(second.probe_vectors, first.probe_vectors)


def test_a_damaged_or_partial_export_is_never_loaded(tmp_path, monkeypatch, capsys):
    first = _fresh_onnx(monkeypatch, tmp_path)
    folder = _export_folder(tmp_path)
    # a killed export: a temporary folder with a half-written model, of a process that no longer runs
    partial = folder.with_name(f".{folder.name}.tmp-999999999")
    partial.mkdir()
    (partial / "model.onnx").write_bytes((folder / "model.onnx").read_bytes()[:1000])
    # and the final model truncated after the fact (disk full, a stray copy)
    model = folder / "model.onnx"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    redone = _fresh_onnx(monkeypatch, tmp_path)
    err = capsys.readouterr().err
    assert "is damaged" in err and "exporting again" in err
    assert not partial.exists()  # the dead export's leftovers are cleared
    assert _cos(redone.probe_vectors, first.probe_vectors).min() >= 0.9999
    assert redone.fingerprint == first.fingerprint
    # a folder without its record (written last) is not an export either
    (folder / "export.json").unlink()
    assert _fresh_onnx(monkeypatch, tmp_path).fingerprint == first.fingerprint
    assert "no export.json" in capsys.readouterr().err


def test_an_unwritable_export_cache_is_one_line(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    with pytest.raises(LvmError) as err:
        _fresh_onnx(monkeypatch, blocker)
    msg = str(err.value)
    assert "\n" not in msg and "LVM_CACHE_DIR" in msg and "--encoder-backend torch" in msg


def test_a_missing_onnxruntime_is_one_line(monkeypatch):
    import sys

    from lvm.data.encoders import Encoder

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
    with pytest.raises(LvmError) as err:
        Encoder(EncoderSpec(backend="onnx"))
    msg = str(err.value)
    assert "\n" not in msg and "onnxruntime" in msg and "--encoder-backend torch" in msg


def test_the_backend_option_of_the_cli():
    onnx, torch_ = (
        run_lvm("fingerprint", "--encoder-backend", "onnx"),
        run_lvm("fingerprint", "--encoder-backend", "torch"),
    )
    assert onnx.returncode == 0 and torch_.returncode == 0, onnx.stderr + torch_.stderr
    assert torch_.stdout.strip() == load_encoder(EncoderSpec(backend="torch")).fingerprint
    assert onnx.stdout.strip() == load_encoder(EncoderSpec(backend="onnx")).fingerprint != torch_.stdout.strip()


# --- the ONNX backend's CPU path (issue 23 item 1): length-sorted, batch-parallel encode loop ---------


def _real_chunks(n: int) -> list[str]:
    """Every k-th chunk of the default build (the corpus and chunker of build-data's defaults)."""
    from lvm.data.build import BuildConfig, chunk_corpus
    from lvm.data.corpora import load_corpus

    cfg = BuildConfig()
    texts = chunk_corpus(load_corpus(cfg.corpus), cfg.chunker).texts
    return [texts[int(i * len(texts) / n)] for i in range(n)]


def test_the_onnx_backend_agrees_with_torch_on_probes_and_real_chunks():
    onnx, torch_ = load_encoder(EncoderSpec(backend="onnx")), load_encoder(EncoderSpec(backend="torch"))
    texts = _real_chunks(384) + _agreement_texts()  # a few hundred real chunks, plus padding/truncation cases
    assert _cos(onnx.probe_vectors, torch_.probe_vectors).min() >= 0.9999
    got, ref = onnx.encode(texts), torch_.encode(texts)
    assert got.shape == ref.shape == (len(texts), 384) and got.dtype == np.float32
    assert _cos(got, ref).min() >= 0.9999, _cos(got, ref).min()


def test_the_length_sorted_loop_is_sentence_transformers_batches_in_the_callers_order(monkeypatch):
    """Each batch is what sentence-transformers' preprocess gives for its texts (trimmed to its longest):
    the vectors equal sentence-transformers' own encode loop on the same session, in the caller's order,
    for any batch size, window and worker count."""
    from lvm.data import onnx_opt

    onnx = load_encoder(EncoderSpec(backend="onnx"))
    texts = _real_chunks(150) + _agreement_texts()
    reference = onnx.model.encode(texts, batch_size=16, convert_to_numpy=True, normalize_embeddings=False)
    monkeypatch.setattr(onnx_opt, "SORT_WINDOW", 64)  # several windows, the last one short
    for batch_size, workers in ((16, 1), (16, 2), (7, 3), (1, 2), (500, 2)):
        got = onnx_opt.encode_by_length(onnx.model, texts, batch_size, workers)
        assert got.shape == reference.shape and got.dtype == np.float32
        assert np.abs(got - reference).max() < 1e-5, (batch_size, workers)
    assert onnx.encode(texts[:1]).shape == (1, 384) and onnx.encode([]).shape == (0, 384)
    with pytest.raises(LvmError, match="batch size"):
        onnx_opt.encode_by_length(onnx.model, texts, 0, 1)


def test_the_onnx_session_runs_one_intra_op_thread_and_batches_in_parallel(monkeypatch):
    """One session, one intra-op thread, called from as many threads as torch has: the batches of one
    encode call overlap (no spinning intra-op pool), and the fingerprint is the one datasets recorded."""
    import threading

    import torch

    onnx = load_encoder(EncoderSpec(backend="onnx"))
    ort_model = onnx.model[0].model
    session = ort_model.session
    assert session.get_session_options().intra_op_num_threads == 1
    active, peak, lock = [0], [0], threading.Lock()

    class Counting:
        def run(self, *args, **kwargs):
            with lock:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
            try:
                time.sleep(0.05)  # long enough for the other workers to start theirs
                return session.run(*args, **kwargs)
            finally:
                with lock:
                    active[0] -= 1

    monkeypatch.setattr(ort_model, "session", Counting())
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    onnx.encode(_real_chunks(64), batch_size=8)
    assert peak[0] == 2
    if onnx.revision == _PACKAGED_REVISION:  # the dataset's recorded onnx fingerprint did not move
        assert onnx.fingerprint == "08ac5d1585c3707ac0accab574295d538b27607e13b6637018d8f54140646a80"
