"""Shared fixtures: a small real corpus encoded with the real (packaged) encoder, built once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def synth_once(out: Path, n_chunks: int, dim: int, *segments: str) -> Path:
    """A synthetic dataset (``lvm synth``, low-coherence ``segments`` START:STOP:MEAN:STD) at ``out``,
    created only when it is not there yet (the benchmarks' data, kept between runs)."""
    if not (out / "meta.json").is_file():
        args = ["synth", "--out", str(out), "--n-chunks", str(n_chunks), "--dim", str(dim), "--quiet"]
        for s in segments:
            args += ["--segment", s]
        subprocess.run([sys.executable, "-m", "lvm.cli", *args], check=True, cwd=ROOT)
    return out


# Short encyclopaedic articles (3-7 sentences each) with topics; real text for the real encoder.
SMALL_ARTICLES = [
    (
        "Mercury",
        "Science",
        "Mercury is the smallest planet in the Solar System. It is the closest planet to the Sun. "
        "Mercury has no natural satellites. Its surface is heavily cratered, much like the Moon. "
        "A day on Mercury lasts 59 Earth days.",
    ),
    (
        "Venus",
        "Science",
        "Venus is the second planet from the Sun. It has a thick atmosphere of carbon dioxide. "
        "The greenhouse effect makes Venus the hottest planet. Its clouds are made of sulfuric acid.",
    ),
    (
        "Mars",
        "Science",
        "Mars is the fourth planet from the Sun. It is often called the Red Planet. "
        "Iron oxide on its surface gives Mars its reddish colour. Mars has two small moons, Phobos and Deimos. "
        "Olympus Mons on Mars is the tallest volcano in the Solar System.",
    ),
    (
        "Photosynthesis",
        "Science",
        "Photosynthesis is the process plants use to make food. "
        "Light energy is converted into chemical energy. Chlorophyll absorbs mostly blue and red light. "
        "Oxygen is released as a by-product of the reaction. Most life on Earth depends on photosynthesis.",
    ),
    (
        "Violin",
        "Arts",
        "The violin is a wooden string instrument. It is the smallest member of the violin family. "
        "A violinist plays it with a bow strung with horsehair. Famous violin makers include Stradivari and Guarneri.",
    ),
    (
        "Jazz",
        "Arts",
        "Jazz is a music genre that began in New Orleans. It grew out of blues and ragtime. "
        "Improvisation is central to jazz performance. Louis Armstrong was an early jazz star. "
        "Swing and bebop are jazz styles.",
    ),
    (
        "Impressionism",
        "Arts",
        "Impressionism was an art movement of the nineteenth century. "
        "Its painters tried to capture the effect of light. Claude Monet painted many scenes of water lilies. "
        "Critics first used the name as an insult.",
    ),
    (
        "Roman Empire",
        "History",
        "The Roman Empire ruled the Mediterranean for centuries. Augustus was its first emperor. "
        "Roman roads connected distant provinces. Latin was the language of administration. "
        "The western empire fell in 476.",
    ),
    (
        "French Revolution",
        "History",
        "The French Revolution began in 1789. The storming of the Bastille became its symbol. "
        "The monarchy was abolished in 1792. King Louis XVI was executed the following year. "
        "Napoleon rose to power afterwards.",
    ),
    (
        "Printing press",
        "History",
        "The printing press was developed by Johannes Gutenberg. "
        "It used movable metal type. Books became cheaper and more widely available. "
        "The press helped spread the Reformation.",
    ),
    (
        "Football",
        "Sport",
        "Association football is played by two teams of eleven players. "
        "The aim is to score goals by moving the ball into the opposing net. Only goalkeepers may handle the ball. "
        "The World Cup is held every four years.",
    ),
    (
        "Chess",
        "Sport",
        "Chess is a board game for two players. Each player starts with sixteen pieces. "
        "The goal is to checkmate the opponent's king. Computers now play chess better than any human.",
    ),
]


def write_small_corpus(path: Path) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        for i, (title, topic, text) in enumerate(SMALL_ARTICLES):
            fh.write(json.dumps({"id": f"a{i:02d}", "title": title, "topic": topic, "text": text}) + "\n")
    return path


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> Path:
    return write_small_corpus(tmp_path_factory.mktemp("corpus") / "small.jsonl")


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory, small_corpus) -> Path:
    """A dataset built from the small corpus with the real packaged MiniLM encoder."""
    from lvm.data.build import BuildConfig, build_dataset
    from lvm.data.splits import SplitPolicy

    out = tmp_path_factory.mktemp("ds") / "small"
    cfg = BuildConfig(corpus=str(small_corpus), split=SplitPolicy(ood_fraction=0.25, val_fraction=0.2, seed=1))
    build_dataset(cfg, out, progress=False, log=lambda m: None)
    return out


@pytest.fixture(scope="session")
def default_dataset() -> Path:
    """The full default dataset (real Wikipedia leads, real MiniLM); built once and cached on disk.

    Shared with `make smoke` through LVM_DEFAULT_DATASET (the Makefile sets it), so CI encodes
    the corpus once.
    """
    from lvm.data.build import BuildConfig, build_dataset

    out = Path(os.environ.get("LVM_DEFAULT_DATASET", ROOT / "data" / "wiki-minilm"))
    if not out.is_absolute():
        out = ROOT / out
    build_dataset(BuildConfig(), out, progress=False, log=lambda m: None)
    return out


# The 768-D dataset: all-mpnet-base-v2 on the first 2,000 articles of the default corpus, OOD and val a fifth
# each; the same build as `make data ENCODER=mpnet` (the Makefile's MPNET_DATA_ARGS), so the two share it.
MPNET_ARTICLES = 2000
MPNET_SPLIT = {"ood_fraction": 0.2, "val_fraction": 0.2}


@pytest.fixture(scope="session")
def mpnet_dataset() -> Path:
    """data/wiki-mpnet (real Wikipedia leads, the packaged all-mpnet-base-v2 at 768-D); built once and cached
    on disk (``LVM_MPNET_DATASET``, set by `make test`). Skipped when the encoder's parts are not installed
    (`make setup-mpnet`; `make test` installs them)."""
    from lvm.data import packaged
    from lvm.data.build import BuildConfig, build_dataset
    from lvm.data.encoders import EncoderSpec
    from lvm.data.splits import SplitPolicy

    if packaged.assembled(packaged.MPNET) is None and packaged.part_paths(packaged.MPNET) is None:
        pytest.skip("all-mpnet-base-v2 is not installed: run `make setup-mpnet` (`make test` does)")
    out = Path(os.environ.get("LVM_MPNET_DATASET", ROOT / "data" / "wiki-mpnet"))
    if not out.is_absolute():
        out = ROOT / out
    cfg = BuildConfig(encoder=EncoderSpec("mpnet"), split=SplitPolicy(**MPNET_SPLIT), max_articles=MPNET_ARTICLES)
    build_dataset(cfg, out, progress=False, log=lambda m: None)
    return out


def run_lvm(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the real `lvm` console entry point in a fresh process."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "lvm.cli", *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT
    )


def lvm_ok(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """``run_lvm`` that must exit 0 (else the command, its exit and the ends of its output)."""
    proc = run_lvm(*args, timeout=timeout)
    assert proc.returncode == 0, (
        f"lvm {' '.join(args)}: exit {proc.returncode}\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}"
    )
    return proc


def train_run(out: Path, dataset: Path, model: str, *args: str) -> Path:
    """``lvm train --model MODEL --dataset DATASET ARGS --out OUT --quiet`` (kill switches on), exit 0."""
    lvm_ok("train", "--model", model, "--dataset", str(dataset), *args, "--out", str(out), "--quiet")
    return out


def red(result, *named: str):
    """Assert RED and that the message names every metric (or text) expected to have fired."""
    assert result.status == "RED", (result.status, result.message, result.metrics)
    for text in named:
        assert text in result.message, (text, result.message)
    return result


def green(result):
    assert result.status == "GREEN", (result.status, result.message, result.metrics)
    return result


def sealed_copy(src: Path, dst: Path, vectors: np.ndarray | None = None) -> Path:
    """A copy of a dataset folder (without its index and cache), optionally with other vectors, its content
    hash recomputed so that the folder is self-consistent: only the vectors lie (a forged dataset, which the
    gates must catch; a copy with a stale hash is refused on open instead)."""
    import shutil

    from lvm.data.datasets import _HASHED_FILES
    from lvm.io import sha256_files

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("cache", "index.*"))
    if vectors is not None:
        np.save(dst / "vectors.npy", np.ascontiguousarray(vectors, dtype=np.float32))
        meta = json.loads((dst / "meta.json").read_text())
        meta["content_hash"] = sha256_files([dst / f for f in _HASHED_FILES])
        (dst / "meta.json").write_text(json.dumps(meta, indent=2))
    return dst


def unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    v = rng.standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)
