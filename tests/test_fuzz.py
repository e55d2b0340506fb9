"""Fuzz suite: corrupted inputs through the ``lvm`` CLI, in-process.

Hypothesis draws corrupted dataset folders, checkpoints (cards and safetensors weights), run folders,
``.npz`` imports, corpora, results files, gate profiles and pickles that try to run code
(``tests/fuzz_strategies.py``), and feeds each to the commands that read it, calling
``lvm.cli.main([...])`` with stdout/stderr captured. For every input the CLI must either refuse it
(exit 2 with exactly one line on stderr, ``lvm: error: ...``; no traceback) or, where the input may be
valid, succeed (exit 0, or a documented exit: 1 = regression for ``compare``, 3 = kill switch for
``train``); no file outside the named output may change or appear, nothing may run code from a file,
and nothing may hang (a wall-clock limit per input).

``LVM_FUZZ_EXAMPLES`` sets the examples per test (default 20: ``make test``, well under 90 s);
``make fuzz`` runs it with enough for more than 10,000 inputs, ``LVM_FUZZ_KEEP_GOING=1`` (record every
failure instead of stopping at the first) and ``LVM_FUZZ_REPORT=reports/fuzz.json`` (the tally).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path

import fuzz_strategies as fs
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

pytestmark = pytest.mark.fuzz

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = int(os.environ.get("LVM_FUZZ_EXAMPLES", "20"))
KEEP_GOING = os.environ.get("LVM_FUZZ_KEEP_GOING") == "1"
REPORT = os.environ.get("LVM_FUZZ_REPORT")
HANG_S = float(os.environ.get("LVM_FUZZ_HANG_S", "60"))  # an input running longer than this is a hang
SLOW_S = float(os.environ.get("LVM_FUZZ_SLOW_S", "30"))  # ... and one finishing after this one too
TINY_MODEL = '{"d_model": 8, "hidden_dim": 8}'
UNKNOWN_ENCODER = "acme/no-such-encoder-for-fuzzing"
# lines the trainer logs on stderr before it can fail (progress, not errors)
TRAIN_LOG_PREFIXES = ("training ", "epoch ", "resuming ", "  RED ", "  AMBER ", "  WARNING ", "ABORT", "done:")


def fuzz_settings(weight: float = 1.0):
    """``max_examples`` = ``LVM_FUZZ_EXAMPLES`` x weight; derandomized at the default size, so
    ``make test`` always runs the same inputs."""
    return settings(
        max_examples=max(3, int(EXAMPLES * weight)),
        deadline=None,
        derandomize=EXAMPLES <= 50,
        database=None,
        print_blob=True,
        suppress_health_check=list(HealthCheck),
    )


# ----------------------------------------------------------------------------- the tally


TALLY: Counter = Counter()
BY_TEST: dict[str, Counter] = {}
FAILURES: list[dict] = []
FAILURE_KINDS = (
    "tracebacks",
    "multi_line_errors",
    "other_exit_codes",
    "wrong_successes",
    "hangs",
    "code_executions",
    "files_lost",
    "files_stray",
)


@pytest.fixture(scope="module", autouse=True)
def _tally_report(request):
    yield
    doc = {
        "examples_per_test": EXAMPLES,
        "tally": {k: TALLY.get(k, 0) for k in ("inputs", "clean_refusals", "successes", *FAILURE_KINDS)},
        "failures": sum(TALLY.get(k, 0) for k in FAILURE_KINDS),
        "by_test": {k: dict(v) for k, v in BY_TEST.items()},
        "first_failures": FAILURES,  # up to 5 per test and kind
    }
    if REPORT:
        from lvm.io import write_json_atomic

        path = Path(REPORT) if Path(REPORT).is_absolute() else ROOT / REPORT
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, doc)
    line = "fuzz tally: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in doc["tally"].items())
    capman = request.config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
        sys.stdout.write("\n" + line + (f" (written to {REPORT})" if REPORT else "") + "\n")
        for f in FAILURES[:10] if REPORT else []:
            sys.stdout.write(f"  {f['kind']}: lvm {' '.join(f['argv'])[:200]} <- {f['input'][:200]}\n")


MEMORY_GB = float(os.environ.get("LVM_FUZZ_MEMORY_GB", "8"))


@pytest.fixture(scope="module", autouse=True)
def _memory_limit():
    """An input that asks for tens of GB must fail to allocate (and be judged), not get the whole run
    OOM-killed: the process's data segment is capped while this module runs."""
    import resource

    old = resource.getrlimit(resource.RLIMIT_DATA)
    cap = int(MEMORY_GB * (1 << 30))
    if old[0] == resource.RLIM_INFINITY or old[0] > cap:
        resource.setrlimit(resource.RLIMIT_DATA, (cap, old[1]))
    yield
    resource.setrlimit(resource.RLIMIT_DATA, old)


# ----------------------------------------------------------------------------- running the CLI in-process


class Hang(BaseException):
    """Raised by the alarm when an input runs past ``HANG_S``."""


def _alarm(signum, frame):
    raise Hang(f"still running after {HANG_S:.0f} s")


def _close_train_loggers() -> None:
    """The trainer adds a file and a stream handler per run (a CLI process exits; we do not)."""
    for name in [n for n in logging.Logger.manager.loggerDict if n.startswith("lvm.train.")]:
        log = logging.getLogger(name)
        for h in list(log.handlers):
            h.close()
            log.removeHandler(h)
        logging.Logger.manager.loggerDict.pop(name, None)


def run_cli(argv: list[str], cwd: Path) -> dict:
    """``lvm.cli.main(argv)`` with stdout/stderr (and warnings, as a process would print them) captured."""
    import torch

    from lvm.cli import main

    threads = torch.get_num_threads()  # --threads sets a process-wide value: put it back
    out, err = io.StringIO(), io.StringIO()
    old_cwd, crash = os.getcwd(), None
    old_handler = signal.signal(signal.SIGALRM, _alarm)
    t0 = time.perf_counter()
    try:
        os.chdir(cwd)
        with (
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
            warnings.catch_warnings(record=True) as caught,
        ):
            warnings.resetwarnings()
            warnings.simplefilter("always")
            for cat in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
                warnings.simplefilter("ignore", cat)  # hidden in a real process too
            signal.setitimer(signal.ITIMER_REAL, HANG_S)
            try:
                rc = main(list(argv))
            except SystemExit as exc:  # argparse
                rc = exc.code
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
    except Hang as exc:
        rc, crash = None, f"Hang: {exc}"
    except BaseException as exc:  # a crash: what a user would see as a traceback
        rc, crash = None, "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        os.chdir(old_cwd)
        _close_train_loggers()
        torch.set_num_threads(threads)
    stderr = err.getvalue() + "".join(
        warnings.formatwarning(w.message, w.category, w.filename, w.lineno) for w in caught
    )
    return {
        "rc": rc,
        "stdout": out.getvalue(),
        "stderr": stderr,
        "crash": crash,
        "seconds": time.perf_counter() - t0,
    }


# ----------------------------------------------------------------------------- snapshots and verdicts


def snapshot(roots: list[Path], skip: list[Path]) -> dict[str, str]:
    """SHA-256 of every file under ``roots`` (links not followed), except under ``skip`` (the named outputs)."""
    skip_s = [os.path.abspath(s) for s in skip]
    files = {}
    for root in roots:
        for folder, dirs, names in os.walk(root, followlinks=False):
            for name in [*names, *dirs]:
                p = os.path.join(folder, name)
                if any(p == s or p.startswith(s + os.sep) for s in skip_s):
                    continue
                if os.path.islink(p):
                    files[p] = "link:" + os.readlink(p)
                elif os.path.isfile(p):
                    with open(p, "rb") as fh:
                        files[p] = hashlib.sha256(fh.read()).hexdigest()
                elif os.path.isdir(p) and not os.listdir(p):
                    files[p + "/"] = "dir"
    return files


def _in_dataset_cache(path: str) -> bool:
    """Under a dataset folder's ``cache/`` (finiteness mark, fitted baselines: outside its content hash)."""
    parts = Path(path.rstrip("/")).parts
    return any(p == "cache" and Path(*parts[:i], "meta.json").is_file() for i, p in enumerate(parts))


class Fuzz:
    """One test's bookkeeping: a scratch folder per example, the snapshot, the run and its verdict."""

    def __init__(self, test: str, base: dict):
        self.test, self.base = test, base
        BY_TEST.setdefault(test, Counter())

    @contextlib.contextmanager
    def example(self):
        work = Path(tempfile.mkdtemp(prefix="ex-", dir=self.base["scratch"]))
        try:
            yield work
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def check(
        self,
        argv: list[str],
        work: Path,
        expect: str,
        label: str,
        outputs: tuple = (),
        documented: tuple = (),
        markers: tuple = (),
        sane=None,
    ) -> dict:
        """Run ``lvm argv`` and judge it; record the verdict and (unless keep-going) fail on a bad one."""
        roots = [work, self.base["root"]]
        before = snapshot(roots, list(outputs))
        res = run_cli(argv, work)
        after = snapshot(roots, list(outputs))
        kinds = self._judge(res, argv, expect, documented)
        if not kinds and res["rc"] == 0 and sane is not None:
            why = sane(res)
            if why:
                kinds.append(("wrong_successes", why))
        ran = [m for m in markers if Path(m).exists()]
        if ran:
            kinds.append(("code_executions", f"payload ran: {ran[0]} exists"))
        # a dataset's cache/ is lvm's (refreshed by any read, outside the content hash): not the user's files
        before, after = ({k: v for k, v in d.items() if not _in_dataset_cache(k)} for d in (before, after))
        lost = sorted(k for k in before if after.get(k) != before[k])
        stray = sorted(k for k in after if k not in before)
        if lost:
            kinds.append(("files_lost", f"changed or removed: {', '.join(lost[:3])}"))
        if stray:
            kinds.append(("files_stray", f"appeared outside the output: {', '.join(stray[:3])}"))
        verdict = kinds[0][0] if kinds else ("clean_refusals" if res["rc"] == 2 else "successes")
        TALLY["inputs"] += 1
        BY_TEST[self.test]["inputs"] += 1
        for k in {k for k, _ in kinds} or {verdict}:
            TALLY[k] += 1
            BY_TEST[self.test][k] += 1
        if kinds:
            detail = {
                "test": self.test,
                "kind": kinds[0][0],
                "why": kinds[0][1][-1500:],
                "argv": [str(a) for a in argv],
                "input": label,
                "rc": res["rc"],
                "stderr": res["stderr"][-1500:],
            }
            if sum(f["test"] == self.test and f["kind"] == detail["kind"] for f in FAILURES) < 5:
                FAILURES.append(detail)
            if not KEEP_GOING:
                pytest.fail(json.dumps(detail, indent=1), pytrace=False)
        return res

    @staticmethod
    def _judge(res: dict, argv: list[str], expect: str, documented: tuple) -> list[tuple[str, str]]:
        rc, err = res["rc"], res["stderr"]
        if res["crash"] and res["crash"].startswith("Hang"):
            return [("hangs", res["crash"])]
        if res["crash"]:
            return [("tracebacks", res["crash"])]
        if res["seconds"] > SLOW_S:
            return [("hangs", f"took {res['seconds']:.1f} s")]
        if "Traceback" in err:
            return [("tracebacks", err)]
        if rc == 0 or rc in documented:
            if expect == fs.REFUSE:
                return [("wrong_successes", f"exit {rc} on an input that must be refused")]
            if argv[0] != "train" and rc == 0 and err.strip() and not _only_log_lines(err, argv):
                return [("multi_line_errors", f"exit 0 but stderr says: {err[-300:]}")]
            return []
        if rc != 2:
            return [("other_exit_codes", f"exit {rc!r}: {err[-500:]}")]
        lines = [ln for ln in err.splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("lvm: error: ")]
        others = [ln for ln in lines if not ln.startswith("lvm: error: ")]
        if argv[0] == "train":
            others = [ln for ln in others if not ln.startswith(TRAIN_LOG_PREFIXES)]
        if len(errors) != 1 or others or lines[-1] != errors[0]:
            return [("multi_line_errors", err[-800:])]
        return []


def _only_log_lines(err: str, argv: list[str]) -> bool:
    return argv[0] in ("build-data", "synth") and "warn" not in err.lower()


# ----------------------------------------------------------------------------- valid inputs, built once


def _must(argv: list[str], cwd: Path) -> dict:
    res = run_cli(argv, cwd)
    assert res["rc"] == 0 and not res["crash"], (argv, res)
    return res


def _results_doc() -> dict | None:
    """A small valid results file: the committed baseline with its per-sequence lists cut short."""
    path = ROOT / "reports" / "baseline.json"
    if not path.is_file():
        return None
    doc = json.loads(path.read_text())
    for r in doc.get("results", []):
        for k in ("per_sequence", "per_sequence_article"):
            if isinstance(r.get(k), list):
                r[k] = r[k][:12]
    return doc


class Base(dict):
    """The valid inputs (a dict); a short repr, since hypothesis prints the arguments of a failing example."""

    def __repr__(self) -> str:
        return "<fuzz base inputs>"


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict:
    """A tiny synthetic dataset, a tiny trained AMN run (resumable: one more epoch to go), a valid
    .npz import, a results file, a gate profile and a model factory; plus a scratch folder."""
    root = tmp_path_factory.mktemp("fuzz-base")
    scratch = tmp_path_factory.mktemp("fuzz-scratch")
    ds, run = root / "ds", root / "run"
    _must(
        ["synth", "--out", str(ds), "--n-chunks", "120", "--dim", "8", "--chunks-per-article", "6", "--quiet"]
        + ["--val-fraction", "0.25", "--ood-fraction", "0.25"],
        scratch,
    )
    _must(
        ["train", "--model", "amn", "--dataset", str(ds), "--epochs", "1", "--batch-size", "16", "--out", str(run)]
        + ["--quiet", "--no-kill-switches", "--model-config", TINY_MODEL],
        scratch,
    )
    cfg = json.loads((run / "config.json").read_text())
    cfg["epochs"] = 2  # so that --resume trains one epoch
    (run / "config.json").write_text(json.dumps(cfg, indent=2))

    # the .npz a legacy pipeline would have written for this dataset (ctx 3, zero left padding)
    vec = np.load(ds / "vectors.npy")
    aid, pos = np.load(ds / "article_id.npy"), np.load(ds / "position.npy")
    t = np.flatnonzero(pos >= 1)
    slots = t[:, None] - 3 + np.arange(3)[None, :]
    real = np.arange(3)[None, :] >= 3 - np.minimum(pos[t], 3)[:, None]
    npz = {
        "context_sequences": np.where(real[..., None], vec[np.maximum(slots, 0)], 0).astype(np.float32),
        "target_vectors": vec[t],
        "article_ids": aid[t] + 1000,
        "target_positions": pos[t].astype(np.int64),
        "target_texts": np.array([f"chunk {i}" for i in t]),
    }
    np.savez(root / "base.npz", **npz)
    _must(["import-npz", str(root / "base.npz"), "--out", str(scratch / "npz-check"), "--quiet"], scratch)
    shutil.rmtree(scratch / "npz-check")

    results = _results_doc()
    if results is not None:
        (root / "results.json").write_text(json.dumps(results))
    (root / "factory.py").write_text(
        "import torch\n\ndef build(**config):\n    return torch.nn.Linear(2, 2)\n",
    )
    profile_text = (ROOT / "lvm" / "profiles" / "gtr-t5-wiki.toml").read_text()
    import tomllib

    files = {f.name: f.read_bytes() for f in ds.iterdir() if f.is_file()}
    return Base(
        {
            "root": root,
            "scratch": scratch,
            "ds": ds,
            "run": run,
            "meta": json.loads((ds / "meta.json").read_text()),
            "arrays": fs.load_base_arrays(ds),
            "side_files": {k: v for k, v in files.items() if k in fs.DATASET_OTHER_FILES},
            "card": json.loads((run / "best.json").read_text()),
            "weights": (run / "best.safetensors").read_bytes(),
            "run_config": cfg,
            "npz": npz,
            "results": results,
            "profile_text": profile_text,
            "profile": tomllib.loads(profile_text),
            "factory": root / "factory.py",
        }
    )


def copy_dataset(base: dict, work: Path) -> Path:
    out = work / "ds"
    shutil.copytree(base["ds"], out)
    return out


def copy_run(base: dict, work: Path) -> Path:
    out = work / "run"
    shutil.copytree(base["run"], out)
    return out


# ----------------------------------------------------------------------------- datasets


def _inspect_norms_match(vectors_path: Path, parent: Path):
    """After ``inspect --json`` succeeded: the norms it reports are those of the vectors on disk
    (a view's: the rows of ``parent``, the only dataset views here read through, named by ``rows.npy``)."""

    def sane(res: dict) -> str | None:
        try:
            rows_path = vectors_path.parent / "rows.npy"
            if rows_path.exists():
                v = np.load(parent / "vectors.npy")[np.load(rows_path)]
            else:
                v = np.load(vectors_path)
            info = json.loads(res["stdout"])
        except Exception as exc:  # noqa: BLE001 - anything unreadable here is the CLI's wrong success
            return f"inspect succeeded but {type(exc).__name__}: {exc}"
        want = float(np.linalg.norm(v.astype(np.float64), axis=1).mean())
        got = info["norms"]["mean"]
        if not (abs(got - want) <= 1e-3 * max(1.0, abs(want)) or (np.isnan(got) and np.isnan(want))):
            return f"inspect reports mean norm {got}, the file's vectors have {want}"
        return None

    return sane


def _filtered_dataset_opens(out: Path):
    def sane(res: dict) -> str | None:
        from lvm.data.datasets import open_dataset
        from lvm.errors import LvmError

        try:
            open_dataset(out)
        except LvmError as exc:
            return f"filter wrote a dataset that does not open: {exc}"
        return None

    return sane


def dataset_commands(fz: Fuzz, base: dict, work: Path, ds: Path, expect: str, label: str, kill: bool) -> None:
    """Every command that reads a dataset folder, on ``ds``; build-index last (it writes into it)."""
    run = base["run"]
    fz.check(
        ["inspect", str(ds), "--json"], work, expect, label, sane=_inspect_norms_match(ds / "vectors.npy", base["ds"])
    )
    fz.check(["coherence", str(ds), "--json"], work, expect, label)
    fz.check(["coherence", str(ds), "--by-topic"], work, expect, label)
    fz.check(["coherence", str(base["ds"]), "--baseline", str(ds)], work, expect, label)
    fz.check(
        ["filter", str(ds), "--out", str(work / "filtered"), "--min-coherence", "0.1"],
        work,
        expect,
        label,
        outputs=(work / "filtered",),
        sane=_filtered_dataset_opens(work / "filtered"),
    )
    fz.check(["evaluate", str(run), "--dataset", str(ds), "--json"], work, expect, label)
    fz.check(
        ["sequences", str(ds), "--ctx", "3", "--min-ctx", "1", "--out", str(work / "seqs")],
        work,
        expect,
        label,
        outputs=(work / "seqs",),
    )
    fz.check(
        ["train", "--model", "amn", "--dataset", str(ds), "--epochs", "1", "--batch-size", "16"]
        + ["--out", str(work / "newrun"), "--quiet", "--model-config", TINY_MODEL]
        + ([] if kill else ["--no-kill-switches"]),
        work,
        expect,
        label,
        outputs=(work / "newrun",),
        documented=(3,),
    )
    fz.check(
        ["build-index", str(ds), "--quiet"],
        work,
        expect,
        label,
        outputs=(ds / "index.faiss", ds / "index.json"),
    )


def mutated_dataset_commands(base: dict, name: str, m: fs.Mutation, kill: bool) -> None:
    """One example of fuzz test ``name``: a copy of the base dataset damaged by ``m``, every dataset command on it."""
    fz = Fuzz(name, base)
    with fz.example() as work:
        ds = copy_dataset(base, work)
        m.apply(ds)
        dataset_commands(fz, base, work, ds, m.expect, m.label, kill)


@fuzz_settings(1.0)
@given(data=st.data())
def test_dataset_meta(base, data):
    """meta.json: fields of the wrong type, null, lists, huge, negative, deeply nested, missing; invalid,
    truncated or non-UTF-8 JSON."""
    n, dim = base["arrays"]["vectors"].shape
    m = data.draw(fs.dataset_meta_mutation(base["meta"], n, dim))
    mutated_dataset_commands(base, "dataset_meta", m, kill=data.draw(st.booleans()))


@fuzz_settings(1.0)
@given(data=st.data())
def test_dataset_arrays(base, data):
    """The four arrays: wrong dtype (int32, complex64, strings, objects...), rank, length; NaN/Inf rows;
    negative, shuffled, fractional, renamed article ids; positions shifted by one; split codes outside
    {0, 1, 2}; damaged or missing .npy files."""
    m = data.draw(fs.dataset_array_mutation(base["arrays"]))
    mutated_dataset_commands(base, "dataset_arrays", m, kill=data.draw(st.booleans()))


@fuzz_settings(0.6)
@given(data=st.data())
def test_dataset_side_files(base, data):
    """texts.jsonl, articles.jsonl, the index, probe vectors and the marker: damaged, retyped or missing."""
    m = data.draw(fs.dataset_file_mutation(base["side_files"]))
    mutated_dataset_commands(base, "dataset_side_files", m, kill=False)


@pytest.fixture(scope="module")
def view_base(base) -> Path:
    """A filtered dataset: a view of the base dataset (rows.npy + the parent's path and hash)."""
    out = base["root"] / "view"
    if not out.exists():
        _must(["filter", str(base["ds"]), "--out", str(out), "--min-coherence", "0.1"], base["scratch"])
    return out


@fuzz_settings(0.6)
@given(data=st.data())
def test_view_dataset(base, view_base, data):
    """A filtered view: rows.npy retyped, reshaped, cut, out of range or damaged; meta.json's parent
    reference (path, relative, content hash, rows) junk or pointing elsewhere, at itself (a cycle), or
    the parent gone. Only a relocated-but-findable parent or an in-range permutation may succeed."""
    fz = Fuzz("view_dataset", base)
    rows = np.load(view_base / "rows.npy")
    n_parent = len(base["arrays"]["vectors"])
    target = data.draw(st.sampled_from(["rows", "parent-field", "parent-gone", "cycle"]))
    expect, label = fs.REFUSE, target
    with fz.example() as work:
        ds = work / "view"
        shutil.copytree(view_base, ds)
        meta = json.loads((ds / "meta.json").read_text())
        ref = meta["parent"]
        ref["relative"] = os.path.relpath(ref["path"], ds)
        if target == "rows":
            kind = data.draw(
                st.sampled_from(["float", "2d", "short", "long", "negative", "too-big", "bytes", "missing", "perm"])
            )
            label = f"rows.npy {kind}"
            if kind == "bytes":
                new, how = data.draw(fs.corrupt_bytes((ds / "rows.npy").read_bytes()))
                (ds / "rows.npy").write_bytes(new)
                expect, label = fs.EITHER, f"rows.npy {how}"
            elif kind == "missing":
                (ds / "rows.npy").unlink()
            else:
                bad = {
                    "float": rows.astype(np.float64),
                    "2d": rows.reshape(1, -1),
                    "short": rows[:-1],
                    "long": np.r_[rows, rows[-1]],
                    "negative": np.r_[-1, rows[1:]],
                    "too-big": np.r_[rows[:-1], n_parent],
                    "perm": np.random.default_rng(0).permutation(n_parent)[: len(rows)],
                }[kind]
                np.save(ds / "rows.npy", bad)
                expect = fs.EITHER if kind == "perm" else fs.REFUSE
        elif target == "parent-field":
            key = data.draw(st.sampled_from(["path", "relative", "content_hash", "rows", "(whole)"]))
            value = data.draw(fs.junk)
            if key == "(whole)":
                meta["parent"] = value
                expect = fs.EITHER if isinstance(value, dict) else fs.REFUSE  # {}: a plain folder without vectors
            else:
                ref[key] = value
                # the other of path/relative still finds the parent
                expect = fs.EITHER if key in ("path", "relative") else fs.REFUSE
            label = f"parent.{key} = {str(value)[:40]!r}"
        elif target == "cycle":
            ref.update(relative=".", path=str(ds))
        else:
            ref.update(relative="../nowhere", path=str(work / "nowhere"))
        (ds / "meta.json").write_text(json.dumps(meta))
        dataset_commands(fz, base, work, ds, expect, label, kill=False)


@fuzz_settings(0.3)
@given(kind=st.sampled_from(["missing", "file", "empty-dir", "meta-dir", "symlink-loop"]))
def test_dataset_folder_itself(base, kind):
    fz = Fuzz("dataset_folder", base)
    with fz.example() as work:
        ds = work / "ds"
        if kind == "file":
            ds.write_text("not a folder")
        elif kind == "empty-dir":
            ds.mkdir()
        elif kind == "meta-dir":
            ds.mkdir()
            (ds / "meta.json").mkdir()
        elif kind == "symlink-loop":
            ds.symlink_to(ds)
        dataset_commands(fz, base, work, ds, fs.REFUSE, kind, kill=False)


# ----------------------------------------------------------------------------- checkpoints and runs


def checkpoint_commands(fz: Fuzz, base: dict, work: Path, run: Path, expect: str, label: str, which: str) -> None:
    ds = base["ds"]
    target = {"folder": run, "json": run / "best.json", "weights": run / "best.safetensors"}[which]
    fz.check(["evaluate", str(target), "--dataset", str(ds)], work, expect, label)
    fz.check(
        ["train", "--model", "amn", "--dataset", str(ds), "--epochs", "1", "--batch-size", "16", "--quiet"]
        + ["--no-kill-switches", "--model-config", TINY_MODEL, "--warm-start", str(run / "best.json")]
        + ["--out", str(work / "warm")],
        work,
        expect,
        label,
        outputs=(work / "warm",),
    )


def _write_card(run: Path, card_bytes: bytes) -> None:
    (run / "best.json").write_bytes(card_bytes)


@fuzz_settings(1.0)
@given(data=st.data())
def test_checkpoint_card(base, data):
    """best.json: wrong types, ctx 0/negative/float/huge, min_ctx > ctx, dims of 10^9, unknown model
    types, invalid JSON; against evaluate and train --warm-start (export: see test_export)."""
    fz = Fuzz("checkpoint_card", base)
    card_bytes, paths, label = data.draw(fs.json_text_mutation(base["card"], fs.CARD_FOCUS))
    doc = fs.parses_as_json_object(card_bytes)
    expect = fs.REFUSE if doc is None or fs.card_invalid(doc) else fs.EITHER
    which = data.draw(st.sampled_from(["folder", "json", "weights"]))
    with fz.example() as work:
        run = copy_run(base, work)
        _write_card(run, card_bytes)
        checkpoint_commands(fz, base, work, run, expect, f"best.json: {label}", which)


@fuzz_settings(1.0)
@given(data=st.data())
def test_checkpoint_weights(base, data):
    """best.safetensors: NaN/Inf/int weights, a header that lies about dtype, shape or offsets, missing or
    extra tensors, truncated or random bytes; with the card's SHA-256 updated (or not, or removed)."""
    fz = Fuzz("checkpoint_weights", base)
    new, label, expect = data.draw(fs.safetensors_mutation(base["weights"]))
    sha = data.draw(st.sampled_from(["updated", "updated", "stale", "removed"]))
    card = dict(base["card"])
    if sha == "updated":
        card["weights_sha256"] = hashlib.sha256(new).hexdigest()
    elif sha == "removed":
        card.pop("weights_sha256")
    if sha == "stale" and new != base["weights"]:
        expect = fs.REFUSE
    which = data.draw(st.sampled_from(["folder", "json", "weights"]))
    with fz.example() as work:
        run = copy_run(base, work)
        (run / "best.safetensors").write_bytes(new)
        _write_card(run, json.dumps(card).encode())
        checkpoint_commands(fz, base, work, run, expect, f"weights: {label} (sha {sha})", which)


@fuzz_settings(0.25)
@given(data=st.data())
def test_export(base, data):
    """lvm export of a corrupted checkpoint (torch.export is slow: fewer examples)."""
    fz = Fuzz("export", base)
    if data.draw(st.booleans()):
        card_bytes, _, label = data.draw(fs.json_text_mutation(base["card"], fs.CARD_FOCUS))
        weights = base["weights"]
        doc = fs.parses_as_json_object(card_bytes)
        expect = fs.REFUSE if doc is None or fs.card_invalid(doc) else fs.EITHER
    else:
        weights, label, expect = data.draw(fs.safetensors_mutation(base["weights"]))
        card = dict(base["card"], weights_sha256=hashlib.sha256(weights).hexdigest())
        card_bytes = json.dumps(card).encode()
    with fz.example() as work:
        run = copy_run(base, work)
        (run / "best.safetensors").write_bytes(weights)
        _write_card(run, card_bytes)
        out = work / "exported.pt2"
        fz.check(
            ["export", str(run), "--out", str(out)],
            work,
            expect,
            label,
            outputs=(out, out.with_suffix(".json")),
        )


RUN_FILES = ("config.json", "resume.pt", "training_history.json", "last.json", "best.json")


@fuzz_settings(1.0)
@given(data=st.data())
def test_resume(base, data):
    """train --resume on a corrupted run folder: config.json with wrong types, a damaged or foreign
    resume.pt, a broken training history, missing files."""
    fz = Fuzz("resume", base)
    name = data.draw(st.sampled_from(RUN_FILES))
    kind = data.draw(st.sampled_from(["edit", "edit", "missing", "resume-dict"]))
    with fz.example() as work:
        run = copy_run(base, work)
        p = run / name
        expect = fs.EITHER
        if kind == "missing":
            p.unlink()
            label = f"{name} missing"
            expect = fs.REFUSE if name in ("config.json", "resume.pt") else fs.EITHER
        elif kind == "resume-dict" or name == "resume.pt":
            import torch

            state = torch.load(run / "resume.pt", weights_only=True)
            op = data.draw(st.sampled_from(["drop", "junk", "bytes", "tensor", "inner", "inner"]))
            key = data.draw(st.sampled_from(sorted(state)))
            if op == "drop":
                del state[key]
            elif op == "tensor":
                state[key] = torch.full((3,), float("nan"))
            elif op == "junk":
                state[key] = data.draw(fs.junk)
            elif op == "inner":  # one tensor of the model, EMA or optimizer state reshaped or retyped
                key = data.draw(
                    st.sampled_from(["model", "ema", "optimizer", "optimizer-groups", "scheduler", "adaptive"])
                )
                if key == "optimizer-groups":
                    key, inner = "optimizer.param_groups", state["optimizer"]["param_groups"][0]
                else:
                    inner = state[key]["state"] if key == "optimizer" else state[key]
                if key == "optimizer" and inner:
                    inner = inner[data.draw(st.sampled_from(sorted(inner)))]
                names = sorted(inner, key=str) if isinstance(inner, dict) else []
                if names:
                    name = data.draw(st.sampled_from(names))
                    inner[name] = data.draw(
                        st.sampled_from(
                            [
                                torch.zeros(7),
                                torch.zeros(2, 2, dtype=torch.int64),
                                torch.tensor(float("nan")),
                                "x",
                                None,
                            ]
                        )
                    )
                    key = f"{key}.{name}"
            if op == "bytes":
                raw, label = data.draw(fs.corrupt_bytes((run / "resume.pt").read_bytes()))
                (run / "resume.pt").write_bytes(raw)
                label = f"resume.pt {label}"
            else:
                torch.save(state, run / "resume.pt")
                label = f"resume.pt: {key} {op}"
        else:
            doc = json.loads(p.read_text())
            raw, _, label = data.draw(fs.json_text_mutation(doc))
            p.write_bytes(raw)
            label = f"{name}: {label}"
            if name == "config.json" and fs.parses_as_json_object(raw) is None:
                expect = fs.REFUSE
        fz.check(["train", "--resume", str(run), "--quiet"], work, expect, label, outputs=(run,), documented=(3,))


# ----------------------------------------------------------------------------- .npz imports


@fuzz_settings(1.0)
@given(data=st.data())
def test_import_npz(base, data):
    """import-npz: missing/renamed keys, object arrays, wrong shapes and dtypes, NaN, broken zips."""
    fz = Fuzz("import_npz", base)
    raw, label, expect = data.draw(fs.npz_mutation(base["npz"]))
    with fz.example() as work:
        (work / "x.npz").write_bytes(raw)
        out = work / "imported"
        fz.check(["import-npz", str(work / "x.npz"), "--out", str(out), "--quiet"], work, expect, label, outputs=(out,))


user_files = st.dictionaries(
    st.sampled_from(["notes.txt", "data.csv", "vectors.npy", "sub/keep.md", "index.json", "config.json"]),
    st.binary(max_size=64),
    min_size=1,
    max_size=4,
)


@fuzz_settings(0.5)
@given(files=user_files, cmd=st.sampled_from(["import-npz", "filter", "sequences", "synth", "import-checkpoint"]))
def test_out_is_a_user_folder(base, files, cmd):
    """--out naming a folder of the user's files (no .lvm-output): refused, every file kept."""
    fz = Fuzz("out_user_folder", base)
    with fz.example() as work:
        out = work / "mine"
        for name, blob in files.items():
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (out / name).write_bytes(blob)
        ds = str(base["ds"])
        argv = {
            "import-npz": ["import-npz", str(base["root"] / "base.npz"), "--quiet"],
            "filter": ["filter", ds, "--min-coherence", "0.1"],
            "sequences": ["sequences", ds, "--ctx", "3"],
            "synth": ["synth", "--n-chunks", "40", "--dim", "4", "--quiet"],
            "import-checkpoint": ["import-checkpoint", str(work / "x.pt"), "--factory", f"py:{base['factory']}:build"],
        }[cmd]
        if cmd == "import-checkpoint":
            import torch

            torch.save({"model_state_dict": torch.nn.Linear(2, 2).state_dict(), "model_config": {}}, work / "x.pt")
        fz.check([*argv, "--out", str(out)], work, fs.REFUSE, f"user files {sorted(files)}")


# ----------------------------------------------------------------------------- corpora


@fuzz_settings(0.6)
@given(data=st.data())
def test_build_data_corpus(base, data):
    """build-data on a bad JSONL corpus or folder of .txt files, with an encoder that does not exist
    (nothing is ever encoded): always exit 2, fast, nothing written."""
    fz = Fuzz("build_data", base)
    with fz.example() as work:
        if data.draw(st.booleans()):
            raw, label = data.draw(fs.jsonl_corpus())
            corpus = work / data.draw(st.sampled_from(["c.jsonl", "c.json", "c.ndjson", "c.txt"]))
            corpus.write_bytes(raw)
        else:
            files = data.draw(fs.text_folder())
            corpus = work / "texts"
            corpus.mkdir()
            for name, blob in files.items():
                (corpus / name).parent.mkdir(parents=True, exist_ok=True)
                (corpus / name).write_bytes(blob)
            label = f"text folder {sorted(files)}"
        out = work / "built"
        fz.check(
            ["build-data", "--corpus", str(corpus), "--encoder", UNKNOWN_ENCODER, "--out", str(out), "--quiet"],
            work,
            fs.REFUSE,
            label,
        )


# ----------------------------------------------------------------------------- results files


@fuzz_settings(0.6)
@given(data=st.data())
def test_results_files(base, data):
    """compare and leaderboard on results files with wrong field types anywhere."""
    if base["results"] is None:
        pytest.skip("reports/baseline.json is missing")
    fz = Fuzz("results", base)
    raw, _, label = data.draw(fs.json_text_mutation(base["results"], ("results", "schema", "schema_version")))
    side = data.draw(st.sampled_from(["new", "baseline"]))
    expect = fs.REFUSE if fs.parses_as_json_object(raw) is None else fs.EITHER
    with fz.example() as work:
        good, bad = work / "good.json", work / "bad.json"
        good.write_text(json.dumps(base["results"]))
        bad.write_bytes(raw)
        new, old = (bad, good) if side == "new" else (good, bad)
        fz.check(["compare", str(new), str(old)], work, expect, f"{side}: {label}", documented=(1,))
        if data.draw(st.integers(0, 3)) == 0:  # the leaderboard draws plots: slower
            out = work / "lb"
            fz.check(["leaderboard", str(bad), "--out", str(out)], work, expect, label, outputs=(out,))


# ----------------------------------------------------------------------------- gate profiles


@fuzz_settings(0.8)
@given(data=st.data())
def test_profiles(base, data):
    """coherence --gate-profile FILE.toml: wrong types, bad rules, extends cycles, broken TOML."""
    fz = Fuzz("profiles", base)
    raw, label = data.draw(fs.profile_mutation(base["profile"], base["profile_text"]))
    with fz.example() as work:
        prof = work / "p.toml"
        raw = raw.replace(b'"self"', json.dumps(str(prof)).encode())
        prof.write_bytes(raw)
        fz.check(["coherence", str(base["ds"]), "--gate-profile", str(prof), "--json"], work, fs.EITHER, label)


# ----------------------------------------------------------------------------- pickles that try to run code


CARRIERS = (
    "import-checkpoint",
    "import-npz-member",
    "import-npz-array",
    "evaluate-pt",
    "evaluate-as-safetensors",
    "resume",
    "warm-start",
    "dataset-vectors",
    "dataset-probes",
    "compare",
    "profile",
)


@fuzz_settings(1.0)
@given(
    carrier=st.sampled_from(CARRIERS),
    how=st.sampled_from(fs.PAYLOAD_HOWS),
    shape=st.sampled_from(["bare", "state", "args", "config", "raw"]),
)
def test_pickle_payload_never_runs(base, carrier, how, shape):
    """A pickle whose __reduce__ would create a marker file, fed to every command that reads a file:
    refused with one line, and the marker never appears."""
    fz = Fuzz("pickle_payload", base)
    with fz.example() as work:
        marker = work / "PWNED"
        pt = work / "evil.pt"
        fs.torch_payload(pt, str(marker), how, shape)
        ds = str(base["ds"])
        outputs: tuple = ()
        if carrier == "import-checkpoint":
            argv = ["import-checkpoint", str(pt), "--factory", f"py:{base['factory']}:build", "--out", str(work / "o")]
        elif carrier in ("import-npz-member", "import-npz-array"):
            members = {f"{k}.npy": fs.npy_bytes(v) for k, v in base["npz"].items()}
            key = "target_texts" if carrier == "import-npz-array" else "metadata"
            if carrier == "import-npz-array":
                members[f"{key}.npy"] = fs.npy_bytes(
                    np.array([fs.Payload(str(marker), how)] * 2, dtype=object), allow_pickle=True
                )
            else:
                members[f"{key}.npy"] = fs.npy_payload(str(marker), how)
            (work / "evil.npz").write_bytes(fs.npz_bytes(members))
            argv = ["import-npz", str(work / "evil.npz"), "--out", str(work / "o"), "--quiet"]
        elif carrier == "evaluate-pt":
            argv = ["evaluate", str(pt), "--dataset", ds]
        elif carrier == "evaluate-as-safetensors":
            run = copy_run(base, work)
            shutil.copy(pt, run / "best.safetensors")
            card = dict(base["card"], weights_sha256=hashlib.sha256(pt.read_bytes()).hexdigest())
            (run / "best.json").write_text(json.dumps(card))
            argv = ["evaluate", str(run), "--dataset", ds]
        elif carrier == "resume":
            run = copy_run(base, work)
            shutil.copy(pt, run / "resume.pt")
            argv = ["train", "--resume", str(run), "--quiet"]
            outputs = (run,)
        elif carrier == "warm-start":
            argv = ["train", "--dataset", ds, "--warm-start", str(pt), "--out", str(work / "o"), "--quiet"]
            argv += ["--model-config", TINY_MODEL, "--epochs", "1"]
            outputs = (work / "o",)
        elif carrier in ("dataset-vectors", "dataset-probes"):
            copy = copy_dataset(base, work)
            name = "vectors.npy" if carrier == "dataset-vectors" else "probe_vectors.npy"
            arr = np.array([fs.Payload(str(marker), how)] * 2, dtype=object)
            (copy / name).write_bytes(fs.npy_bytes(arr, allow_pickle=True))
            argv = ["inspect", str(copy)]
        elif carrier == "compare":
            argv = ["compare", str(pt), str(pt)]
        else:
            argv = ["coherence", ds, "--gate-profile", str(pt.rename(work / "evil.toml"))]
        expect = fs.EITHER if carrier == "dataset-probes" else fs.REFUSE
        fz.check(argv, work, expect, f"{carrier} {how} {shape}", outputs=outputs, markers=(marker,))


# ----------------------------------------------------------------------------- options


@fuzz_settings(1.0)
@given(data=st.data())
def test_train_options(base, data):
    """lvm train with odd option values: zero or negative sizes, NaN/Inf rates, ranges crossed,
    devices that do not exist, model configs of the wrong shape; 1-3 epochs on the tiny dataset."""
    fz = Fuzz("train_options", base)
    tail, label, expect = data.draw(fs.train_options())
    model = data.draw(st.sampled_from(["amn", "amn", "gru", "transformer", "copy_last", "ridge"]))
    with fz.example() as work:
        argv = ["train", "--model", model, "--dataset", str(base["ds"]), "--epochs", "1", "--batch-size", "16"]
        argv += ["--out", str(work / "run"), "--quiet", "--no-kill-switches"]
        if "--model-config" not in " ".join(tail) and model != "copy_last":
            argv += ["--model-config", TINY_MODEL if model == "amn" else '{"hidden_dim": 8}']
        fz.check([*argv, *tail], work, expect, label, outputs=(work / "run",), documented=(3,))


@fuzz_settings(0.6)
@given(
    cmd=st.sampled_from(["inspect", "filter", "sequences", "coherence", "build-index", "evaluate"]),
    ctx=st.sampled_from(["-1", "0", "1", "3", "4096", "4097", "x", "2.5"]),
    min_ctx=st.sampled_from(["-1", "0", "1", "2", "9", None]),
    extra=st.sampled_from(
        [
            [],
            ["--min-coherence", "nan"],
            ["--min-coherence", "inf"],
            ["--min-coherence", "-1e308"],
            ["--min-coherence", "2"],
            ["--blocklist", "("],
            ["--blocklist", "(a+)+$"],
            ["--blocklist", ""],
            ["--segment-width", "0"],
            ["--segment-width", "-3"],
            ["--segment-width", "1"],
            ["--segment-width", str(10**18)],
            ["--nlist", "0"],
            ["--nlist", "-1"],
            ["--nlist", "1000"],
            ["--nprobe", "0"],
            ["--index", "ivf-flat-ip"],
            ["--index", "ivf-flat-ip", "--nlist", "200"],
            ["--index", "ivf-sq8-ip"],
            ["--index", "ivf-sq8-ip", "--nlist", "3", "--nprobe", "1"],
            ["--materialize"],
        ]
    ),
)
def test_dataset_command_options(base, cmd, ctx, min_ctx, extra):
    """The commands that read a (valid) dataset, with odd ctx, min-ctx, thresholds, regexes and index settings."""
    fz = Fuzz("dataset_options", base)
    with fz.example() as work:
        ds = copy_dataset(base, work)
        argv = {
            "inspect": ["inspect", str(ds), "--ctx", ctx],
            "filter": ["filter", str(ds), "--out", str(work / "f"), "--ctx", ctx],
            "sequences": ["sequences", str(ds), "--out", str(work / "s"), "--ctx", ctx],
            "coherence": ["coherence", str(ds)],
            "build-index": ["build-index", str(ds), "--quiet"],
            "evaluate": ["evaluate", str(base["run"]), "--dataset", str(ds)],
        }[cmd]
        if min_ctx is not None and cmd in ("inspect", "filter", "sequences"):
            argv += ["--min-ctx", min_ctx]
        known = {
            "filter": ("--min-coherence", "--blocklist", "--materialize"),
            "coherence": ("--segment-width",),
            "build-index": ("--nlist", "--nprobe", "--index"),
        }.get(cmd, ())
        if extra and extra[0] in known:
            argv += extra
        label = " ".join(argv[2:])
        outputs = (work / "f", work / "s", ds / "index.faiss", ds / "index.json")
        fz.check(argv, work, fs.EITHER, label, outputs=outputs)


@fuzz_settings(0.5)
@given(data=st.data())
def test_import_checkpoint(base, data):
    """import-checkpoint on a seeds' .pt that is damaged or holds the wrong things (no export: fast)."""
    import argparse

    import torch

    fz = Fuzz("import_checkpoint", base)
    state = torch.nn.Linear(2, 2).state_dict()
    good = {
        "model_type": "linear",
        "model_state_dict": state,
        "model_config": {},
        "args": argparse.Namespace(ctx=5, input_dim=2, out=Path("runs/x")),
        "epoch": 3,
    }
    key = data.draw(st.sampled_from(sorted(good)))
    op = data.draw(st.sampled_from(["junk", "drop", "bytes", "tensors", "bare"]))
    obj = dict(good)
    if op == "junk":
        obj[key] = data.draw(fs.junk)
    elif op == "drop":
        del obj[key]
    elif op == "tensors":
        obj["model_state_dict"] = {"weight": torch.zeros(3, 3), "bias": torch.zeros(2, dtype=torch.int64)}
    elif op == "bare":
        obj = dict(state)
    label = f"{key} {op}"
    with fz.example() as work:
        pt = work / "best_model.pt"
        torch.save(obj, pt)
        if op == "bytes":
            raw, label = data.draw(fs.corrupt_bytes(pt.read_bytes()))
            pt.write_bytes(raw)
        out = work / "imported"
        argv = ["import-checkpoint", str(pt), "--factory", f"py:{base['factory']}:build", "--out", str(out)]
        argv += [
            "--no-export",
            *data.draw(st.sampled_from([[], ["--ctx", "0"], ["--input-dim", "-2"], ["--ctx", "3"]])),
        ]
        fz.check(argv, work, fs.EITHER, label, outputs=(out,))
