"""Encoding throughput, side by side in one run (issue 23 item 1): torch vs the ONNX backends.

Not part of `make test` (the file name does not match test_*.py); `make bench` runs it and writes
reports/bench.json. Each round encodes the same 2,048 default-corpus chunks (every k-th chunk of the
default build, so their lengths are the corpus's) with every variant, in alternating order, batch size
64 (build-data's), and records wall time and the process's CPU time (user + system, all threads) of each
call. ``extra_info`` holds, per variant, the medians of chunks/s and chunks per CPU-second over the
rounds, each round's figures, the min cos against torch on those chunks and the ratios to torch; plus
the load average before and after, ``lscpu``'s model name and its avx2/avx512*/amx* flags, and the
thread counts. The benchmark's own timing is one round of all variants (the figures are in extra_info).

Variants:
- ``torch``: sentence-transformers' encode loop on the torch model (the torch backend as shipped).
- ``onnx_before``: the previous ONNX backend: the plain export, one session with as many intra-op
  threads as torch, sentence-transformers' encode loop (its batches sorted by characters).
- ``onnx_fused``: ONNX Runtime's transformer optimiser (``model_type="bert"``, its default fusions:
  Attention, SkipLayerNormalization, EmbedLayerNormalization, BiasGelu) on the export, run by the
  backend's loop; measured so that the choice of the plain graph can be rechecked on any CPU.
- ``onnx``: the ONNX backend as shipped (``lvm.data.onnx_opt``): the plain export, batches sorted by
  token count, one intra-op thread per batch and as many batches at a time as torch has threads.
- ``torch_by_length``: the torch model through the same length-sorted loop (one batch at a time,
  torch's own threads): how much of the gain is the batching rather than the runtime.

``test_bench_encode_agrees_on_5000_chunks``: min cos between the ONNX backend and torch on 5,000
default chunks (every k-th), asserted >= 0.9999.

    .venv/bin/python -m pytest tests/bench_encode.py -p no:cacheprovider -q --benchmark-json=OUT.json

``LVM_BENCH_ENCODE_ROUNDS`` (default 5) sets the rounds; ``LVM_BENCH_ENCODE_CHUNKS`` (default 2048) the chunks.
"""

from __future__ import annotations

import os
import re
import resource
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

ROUNDS = int(os.environ.get("LVM_BENCH_ENCODE_ROUNDS", "5"))
N_CHUNKS = int(os.environ.get("LVM_BENCH_ENCODE_CHUNKS", "2048"))
BATCH = 64
MIN_COS = 0.9999


def cpu_info() -> dict:
    """lscpu's model name and the vector/matrix flags that decide which kernels run."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        text = ""
    fields = dict(re.findall(r"^([^:\n]+):\s*(.*)$", text, flags=re.M))
    flags = fields.get("Flags", "").split()
    if not flags and Path("/proc/cpuinfo").is_file():
        m = re.search(r"^flags\s*:\s*(.*)$", Path("/proc/cpuinfo").read_text(), flags=re.M)
        flags = m.group(1).split() if m else []
    keep = sorted(f for f in flags if f == "avx2" or f.startswith(("avx512", "amx", "avx_vnni")))
    return {
        "model_name": fields.get("Model name", "unknown"),
        "cpus": fields.get("CPU(s)"),
        "hypervisor": fields.get("Hypervisor vendor"),
        "flags": keep,
    }


def default_chunks(n: int) -> list[str]:
    """Every k-th chunk of the default build (corpus and chunker of build-data's defaults)."""
    from lvm.data.build import BuildConfig, chunk_corpus
    from lvm.data.corpora import load_corpus

    cfg = BuildConfig()
    texts = chunk_corpus(load_corpus(cfg.corpus), cfg.chunker).texts
    step = len(texts) / n
    return [texts[int(i * step)] for i in range(n)]


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _padding(tokenizer, texts: list[str], order: np.ndarray, max_length: int) -> float:
    """Tokens computed per real token when ``texts`` are batched in ``order``."""
    lengths = np.array([len(x) for x in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]])
    batches = [lengths[order[i : i + BATCH]] for i in range(0, len(order), BATCH)]
    total = sum(int(b.max()) * len(b) for b in batches)
    return round(total / int(lengths.sum()), 3)


def _fused_session(export: Path, tmp: Path, config, ort):
    """A session on the transformer optimiser's default bert fusions of the export."""
    import warnings

    from onnxruntime.transformers.optimizer import optimize_model

    from lvm.data.onnx_opt import session_options

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = optimize_model(
            str(export),
            model_type="bert",
            num_heads=config.num_attention_heads,
            hidden_size=config.hidden_size,
            opt_level=0,
            use_gpu=False,
        )
    fused = {k: int(v) for k, v in model.get_fused_operator_statistics().items() if v}
    model.save_model_to_file(str(tmp / "fused.onnx"))
    session = ort.InferenceSession(str(tmp / "fused.onnx"), session_options(ort), providers=["CPUExecutionProvider"])
    return session, fused


@pytest.fixture(scope="module")
def encoders():
    from lvm.data.encoders import EncoderSpec, load_encoder

    return load_encoder(EncoderSpec(backend="torch")), load_encoder(EncoderSpec(backend="onnx"))


def test_bench_encode_side_by_side(benchmark, encoders, tmp_path):
    """torch vs ONNX before vs ONNX fused vs ONNX as shipped, 2,048 default chunks, interleaved rounds."""
    import onnxruntime as ort
    import torch

    from lvm.data.encoders import ensure_onnx_export
    from lvm.data.onnx_opt import encode_by_length

    torch_enc, onnx_enc = encoders
    texts = default_chunks(N_CHUNKS)
    ort_model = onnx_enc.model[0].model  # the backend's stand-in for the Hugging Face model
    shipped = ort_model.session
    export = ensure_onnx_export(None, None, onnx_enc.revision) / "model.onnx"  # cached by the load above
    before_options = ort.SessionOptions()  # the previous backend's options
    before_options.intra_op_num_threads = torch.get_num_threads()
    before_options.inter_op_num_threads = 1
    before_options.log_severity_level = 3
    before = ort.InferenceSession(str(export), before_options, providers=["CPUExecutionProvider"])
    fused, fused_ops = _fused_session(export, tmp_path, torch_enc.model[0].model.config, ort)

    def with_session(session, fn):
        def run():
            ort_model.session = session
            try:
                return fn()
            finally:
                ort_model.session = shipped

        return run

    st_loop = onnx_enc.model.encode
    variants = {
        "torch": lambda: torch_enc.encode(texts, batch_size=BATCH),
        "onnx_before": with_session(
            before, lambda: st_loop(texts, batch_size=BATCH, convert_to_numpy=True, normalize_embeddings=False)
        ),
        "onnx_fused": with_session(fused, lambda: onnx_enc.encode(texts, batch_size=BATCH)),
        "onnx": lambda: onnx_enc.encode(texts, batch_size=BATCH),
        "torch_by_length": lambda: encode_by_length(torch_enc.model, texts, BATCH, workers=1),
    }
    runs: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
    vectors: dict[str, np.ndarray] = {}
    names = list(variants)
    load_before = os.getloadavg()
    rounds = iter(range(1 << 30))

    def one_round():
        r = next(rounds)
        for name in names if r % 2 == 0 else names[::-1]:
            wall, cpu = time.perf_counter(), _cpu_seconds()
            out = variants[name]()
            runs[name].append((time.perf_counter() - wall, _cpu_seconds() - cpu))
            vectors.setdefault(name, np.asarray(out, dtype=np.float32))

    for name in names:  # warm-up: first calls allocate arenas and pack weights
        variants[name]()
    benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1)

    ref = vectors["torch"]
    table = {}
    for name, rs in runs.items():
        v = vectors[name]
        table[name] = {
            "chunks_per_s": round(statistics.median(N_CHUNKS / w for w, _ in rs), 1),
            "chunks_per_cpu_s": round(statistics.median(N_CHUNKS / c for _, c in rs), 1),
            "rounds_chunks_per_s": [round(N_CHUNKS / w, 1) for w, _ in rs],
            "rounds_chunks_per_cpu_s": [round(N_CHUNKS / c, 1) for _, c in rs],
            "min_cos_vs_torch": float(_cos(v, ref).min()),
        }
    for row in table.values():
        row["x_torch_per_s"] = round(row["chunks_per_s"] / table["torch"]["chunks_per_s"], 2)
        row["x_torch_per_cpu_s"] = round(row["chunks_per_cpu_s"] / table["torch"]["chunks_per_cpu_s"], 2)
    tok = onnx_enc.model.tokenizer
    max_len = int(onnx_enc.model.max_seq_length)
    lengths = [len(x) for x in tok(texts, truncation=True, max_length=max_len)["input_ids"]]
    benchmark.extra_info.update(
        {
            "chunks": N_CHUNKS,
            "batch_size": BATCH,
            "rounds": ROUNDS,
            "variants": table,
            "fused_operators": fused_ops,
            "padding_by_characters": _padding(tok, texts, np.argsort([-len(t) for t in texts]), max_len),
            "padding_by_tokens": _padding(tok, texts, np.argsort([-n for n in lengths], kind="stable"), max_len),
            "tokens_mean": round(float(np.mean(lengths)), 1),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "cpu": cpu_info(),
            "torch_threads": torch.get_num_threads(),
            "onnxruntime": ort.__version__,
        }
    )
    for name, row in table.items():  # shown with -s
        print(f"{name:16s} {row['chunks_per_s']:7.1f} chunks/s {row['chunks_per_cpu_s']:7.1f} per CPU-s", row)
    print({k: v for k, v in benchmark.extra_info.items() if k != "variants"})
    for name, row in table.items():
        assert row["min_cos_vs_torch"] >= MIN_COS, (name, row)


def test_bench_encode_agrees_on_5000_chunks(benchmark, encoders):
    """The ONNX backend against torch on 5,000 default chunks: min cos >= 0.9999 (asserted)."""
    torch_enc, onnx_enc = encoders
    texts = default_chunks(5000)
    ref = torch_enc.encode(texts, batch_size=BATCH)
    got = benchmark.pedantic(lambda: onnx_enc.encode(texts, batch_size=BATCH), rounds=1, iterations=1)
    cos, probes = _cos(got, ref), _cos(onnx_enc.probe_vectors, torch_enc.probe_vectors)
    benchmark.extra_info.update(
        {
            "chunks": len(texts),
            "min_cos": float(cos.min()),
            "p001_cos": float(np.quantile(cos, 0.001)),
            "probes_min_cos": float(probes.min()),
            "onnx_fingerprint": onnx_enc.fingerprint,
            "torch_fingerprint": torch_enc.fingerprint,
            "cpu": cpu_info(),
        }
    )
    assert cos.min() >= MIN_COS and probes.min() >= MIN_COS, (cos.min(), probes.min())
