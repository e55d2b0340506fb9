"""Fuzz suite: bad inputs through the ``lvm`` CLI in-process (and the gate suite through pytest), by class of attack.

Hypothesis draws inputs (``tests/fuzz_strategies.py``) class by class and feeds each to the commands that read
it, calling ``lvm.cli.main([...])`` with stdout/stderr captured (the gate suite's own options run
``pytest --pyargs lvm.gatesuite`` in a child process, so that a crash of the interpreter is seen, not suffered).
Classes (``reports/fuzz.json`` counts outcomes per class under ``by_class``):

- corrupted datasets (meta.json, arrays, side files, views, the folder itself), checkpoints (cards, safetensors
  weights), run folders, ``.npz`` imports, corpora, results files, gate profiles, pickles that try to run code,
  odd option values, output folders of the user's (the classes this suite started with, one per test);
- ``same_shape_swap``: any array or table of a dataset, of a view's parent or of the view replaced by another
  of the same shape (another dataset's, a permutation, a byte-identical copy), copied, linked or rewritten in place;
- ``symlinks``: links in and out of dataset folders (the folder, a hashed file to an identical or a foreign file,
  dangling, looping, to a folder; the parent of a view; the index; an --out that is a link);
- ``extreme_numbers`` / ``deep_nesting``: ±1e308, NaN, ±Infinity, 10**400, -0.0, strings and bools where numbers
  go, and 10k-100k-deep nesting, in every JSON (and TOML profile) lvm reads or writes;
- ``parser_limits``: garbage ``.npy`` headers in dataset arrays, view rows and ``.npz`` members;
- ``numeric_flags``: every numeric option of every command, enumerated from the parser, at and beyond its bounds;
- ``gate_suite_options``: --results, --nprobe, --latency-threads, --gate-profile of the gate suite, odd values;
- ``nonsense_settings``: settings within their bounds that make no sense (no words, max length past the encoder,
  every loss weight 0, contexts no article reaches);
- ``damage_ignored``: texts/articles tables missing or damaged, with the content hash left or rewritten;
- ``output_rerun``: the user's files added to an output folder, then the command run again;
- ``tampered_cache``: the ONNX export cache and the FAISS index damaged (also with their records rewritten).

For every input the command must either refuse it (exit 2 with exactly one line on stderr, ``lvm: error: ...``;
for pytest a usage error, exit 4 with an ``ERROR:`` line; no traceback) or, where the input may be valid, succeed
(exit 0, or a documented exit: 1 = regression for ``compare`` or a RED gate, 3 = kill switch for ``train``) with
the right numbers where the suite knows them (a byte-identical swap gives the untouched data's). No file outside
the named output may change or appear, a refused command leaves no output behind (nothing half-written), the
user's files inside an output survive, nothing may run code from a file, and nothing may hang.

``LVM_FUZZ_EXAMPLES`` sets the examples per test (default 20: ``make test``); ``make fuzz`` runs it with enough
for more than 10,000 inputs, ``LVM_FUZZ_KEEP_GOING=1`` (record every failure instead of stopping at the first)
and ``LVM_FUZZ_REPORT=reports/fuzz.json`` (the tally). ``LVM_FUZZ_LOG=FILE`` appends one line per input.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import shlex
import shutil
import signal
import struct
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
LOG = os.environ.get("LVM_FUZZ_LOG")  # a file: one line per input (class, verdict, exit code, argv, input)
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
BY_CLASS: dict[str, Counter] = {}  # class of attack -> outcome -> inputs
FAILURES: list[dict] = []
FAILURES_KEPT = 5  # per test, class and kind
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
    outcomes = ("inputs", "clean_refusals", "successes", *FAILURE_KINDS)
    doc = {
        "examples_per_test": EXAMPLES,
        "tally": {k: TALLY.get(k, 0) for k in outcomes},
        "failure_count": sum(TALLY.get(k, 0) for k in FAILURE_KINDS),
        "by_class": {c: {k: v[k] for k in outcomes if v.get(k)} for c, v in sorted(BY_CLASS.items())},
        "by_test": {k: dict(v) for k, v in BY_TEST.items()},
        "failures": FAILURES,  # up to FAILURES_KEPT per test, class and kind
        "first_failures": FAILURES,  # the same list, under its former name
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
        for c, v in sorted(BY_CLASS.items()) if REPORT else []:
            bad = {k: v[k] for k in FAILURE_KINDS if v.get(k)}
            sys.stdout.write(f"  {c}: {v['inputs']} inputs" + (f", FAILING {bad}" if bad else "") + "\n")
        for f in FAILURES[:20] if REPORT else []:
            sys.stdout.write(f"  {f['class']} {f['kind']}: {' '.join(f['argv'])[:200]} <- {f['input'][:200]}\n")


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
    """One test's bookkeeping: a scratch folder per example, the snapshot, the run and its verdict.

    ``cls``: the class of attack the inputs belong to (``reports/fuzz.json`` counts outcomes per class);
    the test's name unless given."""

    def __init__(self, test: str, base: dict, cls: str | None = None):
        self.test, self.base, self.cls = test, base, cls or test
        BY_TEST.setdefault(test, Counter())
        BY_CLASS.setdefault(self.cls, Counter())

    @contextlib.contextmanager
    def example(self):
        work = Path(tempfile.mkdtemp(prefix="ex-", dir=self.base["scratch"]))
        try:
            yield work
        finally:
            _make_writable(work)
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
        keep: tuple = (),
        notices: tuple = (),
        runner=None,
        roots: list | None = None,
    ) -> dict:
        """Run ``lvm argv`` (or ``runner(argv, work)``) and judge it; record the verdict and (unless
        keep-going) fail on a bad one.

        ``outputs``: what the command may write (left out of the snapshot; one that did not exist
        before must still not exist after a refusal: nothing half-written). ``keep``: the user's
        files inside an output, which must survive unchanged whatever the command does.
        ``notices``: stderr line prefixes a successful run may print (not errors)."""
        roots = [work, self.base["root"]] if roots is None else roots
        before = snapshot(roots, list(outputs))
        written_before = {str(f): _digest(f) for f in _json_files(outputs)}
        existed = {str(o): os.path.lexists(o) for o in outputs}
        kept = {str(k): _digest(Path(k)) for k in keep}
        res = (runner or run_cli)(argv, work)
        after = snapshot(roots, list(outputs))
        kinds = (_judge_pytest if res.get("pytest") else self._judge)(res, argv, expect, documented, notices)
        if not kinds and res["rc"] == 0 and sane is not None:
            why = sane(res)
            if why:
                kinds.append(("wrong_successes", why))
        if not kinds and res["rc"] == 0:
            written = [f for f in _json_files(outputs) if written_before.get(str(f), "new") != _digest(f)]
            why = _nonstandard_json(res, argv, written)
            if why:
                kinds.append(("wrong_successes", why))
        ran = [m for m in markers if Path(m).exists()]
        if ran:
            kinds.append(("code_executions", f"payload ran: {ran[0]} exists"))
        # a dataset's cache/ is lvm's (refreshed by any read, outside the content hash): not the user's files
        before, after = ({k: v for k, v in d.items() if not _in_dataset_cache(k)} for d in (before, after))
        lost = sorted(k for k in before if after.get(k) != before[k])
        lost += sorted(k for k, h in kept.items() if _digest(Path(k)) != h)
        stray = sorted(k for k in after if k not in before)
        if res["rc"] not in (0, None, *documented):  # refused (or failed): no new output may be left behind
            stray += sorted(o for o, was in existed.items() if not was and os.path.lexists(o))
        if lost:
            kinds.append(("files_lost", f"changed or removed: {', '.join(lost[:3])}"))
        if stray:
            kinds.append(("files_stray", f"appeared (or half-written by a refused run): {', '.join(stray[:3])}"))
        self._record(kinds, res, argv, label)
        return res

    def _record(self, kinds: list, res: dict, argv: list, label: str) -> None:
        verdict = kinds[0][0] if kinds else ("clean_refusals" if res["rc"] not in (0, 1, 3) else "successes")
        if LOG:
            with open(LOG, "a") as fh:
                fh.write(json.dumps([self.cls, verdict, res["rc"], [str(a) for a in argv], label]) + "\n")
        TALLY["inputs"] += 1
        BY_TEST[self.test]["inputs"] += 1
        BY_CLASS[self.cls]["inputs"] += 1
        for k in {k for k, _ in kinds} or {verdict}:
            TALLY[k] += 1
            BY_TEST[self.test][k] += 1
            BY_CLASS[self.cls][k] += 1
        if kinds:
            detail = {
                "class": self.cls,
                "test": self.test,
                "kind": kinds[0][0],
                "why": kinds[0][1][-1500:],
                "argv": [str(a) for a in argv],
                "command": ("pytest --pyargs lvm.gatesuite " if res.get("pytest") else "lvm ")
                + shlex.join(map(str, argv)),
                "input": label,
                "rc": res["rc"],
                "stderr": res["stderr"][-1500:],
                "also": sorted({k for k, _ in kinds[1:]} - {kinds[0][0]}),
            }
            same = [f for f in FAILURES if (f["test"], f["class"], f["kind"]) == (self.test, self.cls, detail["kind"])]
            if len(same) < FAILURES_KEPT:
                FAILURES.append(detail)
            if not KEEP_GOING:
                pytest.fail(json.dumps(detail, indent=1), pytrace=False)

    @staticmethod
    def _judge(res: dict, argv: list[str], expect: str, documented: tuple, notices: tuple = ()) -> list:
        rc, err = res["rc"], res["stderr"]
        if res["crash"] and res["crash"].startswith("Hang"):
            return [("hangs", res["crash"])]
        if res["crash"]:
            return [("tracebacks", res["crash"])]
        if res["seconds"] > SLOW_S:
            return [("hangs", f"took {res['seconds']:.1f} s")]
        if "Traceback" in err:
            return [("tracebacks", err)]
        lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(notices or ("\0",))]
        if rc == 0 or rc in documented:
            if expect == fs.REFUSE:
                return [("wrong_successes", f"exit {rc} on an input that must be refused")]
            if argv[0] != "train" and rc == 0 and lines and not _only_log_lines("\n".join(lines), argv):
                return [("multi_line_errors", f"exit 0 but stderr says: {err[-300:]}")]
            return []
        if rc != 2:
            return [("other_exit_codes", f"exit {rc!r}: {err[-500:]}")]
        errors = [ln for ln in lines if ln.startswith("lvm: error: ")]
        others = [ln for ln in lines if not ln.startswith("lvm: error: ")]
        if argv[0] == "train":
            others = [ln for ln in others if not ln.startswith(TRAIN_LOG_PREFIXES)]
        if len(errors) != 1 or others or lines[-1] != errors[0]:
            return [("multi_line_errors", err[-800:])]
        return []


def _strict_json(text: str) -> str | None:
    """Why ``text`` is not standard JSON (NaN/Infinity are Python's, not JSON's), or None."""

    def constant(name):
        raise ValueError(f"{name} is not JSON")

    try:
        json.loads(text, parse_constant=constant)
    except (ValueError, RecursionError) as exc:
        return str(exc)[:120]
    return None


def _json_files(outputs: tuple) -> list[Path]:
    """The .json/.jsonl files (and output markers) in a command's outputs."""
    files = []
    for o in map(Path, outputs):
        try:  # an output path may be one no file can have (too long, under a file)
            if o.is_dir() and not o.is_symlink():
                files += [f for f in o.rglob("*") if f.suffix in (".json", ".jsonl") or f.name == ".lvm-output"]
            elif o.suffix == ".json" and o.is_file():
                files.append(o)
        except OSError:
            continue
    return files[:200]


def _nonstandard_json(res: dict, argv: list[str], files: list[Path]) -> str | None:
    """After a success: what lvm wrote as JSON (``--json`` output; ``files``: the .json/.jsonl files it
    created or changed in its outputs) must be standard JSON that other tools read: no NaN, no Infinity."""
    if "--json" in argv and res["stdout"].strip() and not res.get("pytest"):
        why = _strict_json(res["stdout"])
        if why:
            return f"--json printed non-standard JSON ({why})"
    for f in files[:50]:
        try:
            if not f.is_file() or f.is_symlink() or f.stat().st_size > 4 << 20:
                continue
            text = f.read_text(errors="replace")
        except OSError:
            continue
        lines = text.splitlines() if f.suffix == ".jsonl" else [text]
        for line in lines:
            why = _strict_json(line) if line.strip() else None
            if why:
                return f"wrote non-standard JSON to {f.name} ({why})"
    return None


def _digest(p: Path) -> str | None:
    """SHA-256 of a file (a link: where it points), None when it is gone (or cannot be)."""
    try:
        if p.is_symlink():
            return "link:" + os.readlink(p)
        if not p.is_file():
            return None
        return hashlib.sha256(p.read_bytes()).hexdigest()
    except OSError:
        return None


def _make_writable(folder: Path) -> None:
    """Examples make folders read-only; give the owner write access back so they can be removed."""
    for d, dirs, _ in os.walk(folder):
        for x in [d, *[os.path.join(d, n) for n in dirs]]:
            with contextlib.suppress(OSError):
                if not os.path.islink(x):
                    os.chmod(x, 0o755)


def _judge_pytest(res: dict, argv: list[str], expect: str, documented: tuple, notices: tuple = ()) -> list:
    """The gate suite run by pytest: exit 0/1 = it ran (gates GREEN / some RED), 4 = a usage error
    (``ERROR: ...``: the clean refusal of a pytest option), anything else a crash; no traceback,
    INTERNALERROR or fatal error anywhere in its output."""
    rc, out = res["rc"], res["stdout"] + "\n" + res["stderr"]
    if res.get("wrong"):
        return [("wrong_successes", res["wrong"])]
    if res["crash"]:
        return [("hangs" if res["crash"].startswith("Hang") else "tracebacks", res["crash"][-1500:])]
    for bad in ("INTERNALERROR", "Traceback (most recent call last)", "Fatal Python error", "Segmentation fault"):
        if bad in out:
            i = out.index(bad)
            return [("tracebacks", out[max(0, i - 200) : i + 1300])]
    if rc is not None and rc < 0:
        return [("tracebacks", f"killed by signal {-rc}: {out[-800:]}")]
    if rc in (0, 1):
        if expect == fs.REFUSE:
            return [("wrong_successes", f"pytest exit {rc} (the gates ran) on options that must be refused")]
        return []
    if rc == 4:
        errs = [ln for ln in res["stderr"].splitlines() if ln.startswith("ERROR:")]
        if not errs:
            return [("multi_line_errors", f"usage error without an ERROR: line: {res['stderr'][-600:]}")]
        return []
    return [("other_exit_codes", f"pytest exit {rc}: {out[-800:]}")]


def run_pytest(argv: list[str], cwd: Path) -> dict:
    """``pytest --pyargs lvm.gatesuite argv`` in a child process (a crash there must not end the fuzz)."""
    import subprocess

    cmd = [sys.executable, "-m", "pytest", "--pyargs", "lvm.gatesuite", "-p", "no:cacheprovider", "-q"]
    cmd += ["-p", "no:randomly", "--assert=plain", *argv]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONDONTWRITEBYTECODE="1")
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=HANG_S)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
        return {"rc": None, "stdout": out, "stderr": "", "crash": f"Hang: still running after {HANG_S:.0f} s",
                "seconds": HANG_S, "pytest": True}  # fmt: skip
    return {"rc": p.returncode, "stdout": p.stdout, "stderr": p.stderr, "crash": None,
            "seconds": time.perf_counter() - t0, "pytest": True}  # fmt: skip


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
    # another dataset of the same shape (another seed): the source of same-shape swaps; both indexed
    other = root / "other"
    _must(
        ["synth", "--out", str(other), "--n-chunks", "120", "--dim", "8", "--chunks-per-article", "6", "--quiet"]
        + ["--val-fraction", "0.25", "--ood-fraction", "0.25", "--seed", "1"],
        scratch,
    )
    for d in (ds, other):
        _must(["build-index", str(d), "--quiet"], scratch)
    _must(["filter", str(other), "--out", str(root / "other-view"), "--min-coherence", "0.1"], scratch)
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
    import argparse

    import torch

    legacy = {"model_state_dict": torch.nn.Linear(2, 2).state_dict(), "model_config": {}}
    torch.save({**legacy, "args": argparse.Namespace(ctx=5, input_dim=2)}, root / "legacy.pt")
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
            "other": other,
            "other_view": root / "other-view",
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
    base["view"] = out
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


# ============================================================================= classes of attack (issue 20)
#
# Each test below generates one class of input that users (and an outside fuzzer) make and the tests above did
# not: same-shape swaps of a dataset's arrays, symlinks in and out of dataset folders, extreme and non-finite
# numbers and 10k-100k-deep nesting in every JSON (and TOML) the tool reads, garbage .npy headers, every
# numeric command-line flag at and beyond its bounds, the gate suite's own pytest options, settings that make
# no sense, damaged side files, user files in output folders across reruns, and tampered caches. The class
# name is what ``reports/fuzz.json`` counts under ``by_class``.


def _rehash(ds: Path) -> None:
    """Make ``meta.json``'s content hash match the files (as someone editing a dataset by hand would),
    so that the readers behind the hash check are reached; the integrity record is dropped."""
    h = hashlib.sha256()
    for name in HASHED_FILES:
        h.update(name.encode() + b"\0")
        h.update((ds / name).read_bytes())
    meta = json.loads((ds / "meta.json").read_text())
    meta["content_hash"] = h.hexdigest()
    (ds / "meta.json").write_text(json.dumps(meta))
    shutil.rmtree(ds / "cache", ignore_errors=True)


HASHED_FILES = ("vectors.npy", "article_id.npy", "position.npy", "split.npy", "texts.jsonl", "articles.jsonl")
VIEW_FILES = ("rows.npy", "article_id.npy", "position.npy", "split.npy", "articles.jsonl")


def _close(a, b, tol: float = 1e-6) -> bool:
    if a is None or b is None:
        return a is b
    return abs(float(a) - float(b)) <= tol * max(1.0, abs(float(b)))


def _same_numbers(want: dict, what: str):
    """A ``sane`` check: the command's JSON output holds the numbers of the untouched input."""

    def sane(res: dict) -> str | None:
        try:
            got = json.loads(res["stdout"])
        except ValueError:
            return f"{what}: exit 0 but its output is not JSON"
        for key, value in want.items():
            g = got
            for part in key.split("."):
                g = g.get(part) if isinstance(g, dict) else None
            if not _close(g, value):
                return f"{what}: {key} = {g!r}, the untouched data gives {value!r} (numbers of other data)"
        return None

    return sane


def _numbers_of(base: dict, ds: Path) -> dict:
    """The inspect and evaluate numbers of a dataset (computed once per dataset folder)."""
    key = ("numbers", str(ds))
    if key not in base:
        scratch = base["scratch"]
        ins = json.loads(_must(["inspect", str(ds), "--json"], scratch)["stdout"])
        ev = json.loads(_must(["evaluate", str(base["run"]), "--dataset", str(ds), "--json"], scratch)["stdout"])
        base[key] = {
            "inspect": {"norms.mean": ins["norms"]["mean"], "coherence.mean": ins["coherence"]["mean"]},
            "evaluate": {k: ev[k] for k in ("val_cosine", "ood_cosine", "val_sequences", "ood_sequences")},
        }
    return base[key]


def _reading_commands(fz: Fuzz, base: dict, work: Path, ds: Path, expect: str, label: str, numbers=None) -> None:
    """inspect, evaluate and coherence on ``ds``; when ``numbers`` is given (the input is the untouched data
    in another form) a success must report exactly those numbers."""
    sane_i = _same_numbers(numbers["inspect"], "inspect") if numbers else None
    sane_e = _same_numbers(numbers["evaluate"], "evaluate") if numbers else None
    fz.check(["inspect", str(ds), "--json"], work, expect, label, sane=sane_i)
    fz.check(["evaluate", str(base["run"]), "--dataset", str(ds), "--json"], work, expect, label, sane=sane_e)
    fz.check(["coherence", str(ds), "--json"], work, expect, label)


# ----------------------------------------------------------------------------- same-shape swaps


def _place(target: Path, blob: bytes, how: str, work: Path) -> str:
    """Put ``blob`` at ``target`` the way a user would: copied over, a symlink (absolute or relative) to a
    file elsewhere, a hard link, or written into the existing file (same inode; vectors: mtime kept too)."""
    src = work / "elsewhere" / target.parent.name / target.name
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_bytes(blob)
    if how == "in-place":
        st_ = target.stat()
        with open(target, "r+b") as fh:
            fh.write(blob)
            fh.truncate()
        if target.name == "vectors.npy":  # the integrity record matches: only the vector sketch can tell
            os.utime(target, ns=(st_.st_atime_ns, st_.st_mtime_ns))
        return how
    target.unlink()
    if how == "symlink-abs":
        target.symlink_to(src.resolve())
    elif how == "symlink-rel":
        target.symlink_to(os.path.relpath(src, target.parent))
    elif how == "hardlink":
        os.link(src, target)
    else:
        shutil.copyfile(src, target)
    return how


def _permuted(name: str, blob: bytes, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    if name.endswith(".jsonl"):
        lines = blob.decode().splitlines()
        return ("\n".join(lines[i] for i in rng.permutation(len(lines))) + "\n").encode()
    arr = np.load(io.BytesIO(blob))
    return fs.npy_bytes(arr[rng.permutation(len(arr))])


@fuzz_settings(0.6)
@given(data=st.data())
def test_same_shape_swap(base, view_base, data):
    """Any array or table of a dataset, of a view's parent, or of the view itself replaced by one of the same
    shape and dtype: another dataset's (synthesised with another seed), a permutation of itself, or a
    byte-identical copy; copied over, symlinked, hard-linked or rewritten in place. A different content must be
    refused (the content hash); an identical one must give exactly the untouched numbers."""
    fz = Fuzz("same_shape_swap", base)
    where = data.draw(st.sampled_from(["dataset", "dataset", "view-parent", "view"]))
    names = VIEW_FILES if where == "view" else HASHED_FILES
    name = data.draw(st.sampled_from(names))
    source = data.draw(st.sampled_from(["other", "other", "permuted", "identical"]))
    how = data.draw(st.sampled_from(["copy", "symlink-abs", "symlink-rel", "hardlink", "in-place"]))
    with fz.example() as work:
        ds = copy_dataset(base, work)
        view = work / "view"
        shutil.copytree(view_base, view)
        _fix_view_parent(view, ds)
        target_ds = view if where == "view" else ds
        opened = view if where in ("view", "view-parent") else ds
        numbers = _numbers_of(base, base["view"] if opened == view else base["ds"])
        original = (target_ds / name).read_bytes()
        if source == "other":
            src_ds = base["other_view"] if where == "view" else base["other"]
            blob = (src_ds / name).read_bytes() if (src_ds / name).is_file() else original
            if where == "view" and name != "articles.jsonl":  # same shape: rows/columns of the right length
                arr = np.load(io.BytesIO(original))
                other = np.load(src_ds / name)
                moved = np.resize(other, arr.shape).astype(arr.dtype)
                blob = fs.npy_bytes(moved if not np.array_equal(moved, arr) else np.roll(arr, 1))
        elif source == "permuted":
            blob = _permuted(name, original, data.draw(st.integers(0, 2**16)))
        else:
            blob = original
        _place(target_ds / name, blob, how, work)
        same = blob == original
        label = f"{where}: {name} <- {source} ({how}){' byte-identical' if same else ''}"
        _reading_commands(fz, base, work, opened, fs.EITHER if same else fs.REFUSE, label, numbers if same else None)


def _fix_view_parent(view: Path, parent: Path) -> None:
    """A copied view reads the copied parent (beside it, as ``lvm filter`` would have written them)."""
    meta = json.loads((view / "meta.json").read_text())
    meta["parent"]["relative"] = os.path.relpath(parent, view)
    meta["parent"]["path"] = str(parent.resolve())
    (view / "meta.json").write_text(json.dumps(meta))


# ----------------------------------------------------------------------------- symlinks in and out of datasets


@fuzz_settings(0.5)
@given(
    kind=st.sampled_from(
        [
            "folder-link",
            "file-to-identical",
            "file-to-other",
            "dangling",
            "loop",
            "to-folder",
            "meta-to-other",
            "parent-link",
            "index-to-other",
            "out-to-user-folder",
            "out-dangling",
            "out-inside-dataset",
        ]
    ),
    name=st.sampled_from(HASHED_FILES),
)
def test_symlinks(base, view_base, kind, name):
    """Symlinks in and out of a dataset folder: the folder itself a link; a hashed file linked to an
    identical copy (fine: same numbers), to another dataset's file, to nowhere, to itself or to a folder
    (refused); meta.json linked to another dataset's; a view whose parent is reached through a link; the
    index linked to another dataset's (build-index must not write through it); an --out that is a link to a
    user's folder or to nowhere, or that lies inside a dataset."""
    fz = Fuzz("symlinks", base)
    with fz.example() as work:
        ds = copy_dataset(base, work)
        other = work / "other"
        shutil.copytree(base["other"], other)
        label = f"{kind} ({name})"
        numbers = _numbers_of(base, base["ds"])
        if kind == "folder-link":
            link = work / "link"
            link.symlink_to(ds)
            return _reading_commands(fz, base, work, link, fs.EITHER, label, numbers)
        if kind == "parent-link":
            real = work / "real-parent"
            ds.rename(real)
            ds.symlink_to(real)
            view = work / "view"
            shutil.copytree(view_base, view)
            _fix_view_parent(view, ds)
            meta = json.loads((view / "meta.json").read_text())
            meta["parent"]["path"] = str(ds)  # through the link
            (view / "meta.json").write_text(json.dumps(meta))
            return _reading_commands(fz, base, work, view, fs.EITHER, label, _numbers_of(base, base["view"]))
        if kind == "index-to-other":
            (ds / "index.faiss").unlink()
            (ds / "index.faiss").symlink_to(other / "index.faiss")
            fz.check(["inspect", str(ds), "--json"], work, fs.EITHER, label)
            fz.check(
                ["build-index", str(ds), "--quiet"],
                work,
                fs.EITHER,
                label,
                outputs=(ds / "index.faiss", ds / "index.json"),
            )
            return None
        if kind.startswith("out-"):
            user = work / "user"
            user.mkdir()
            (user / "my_notes.md").write_text("mine")
            out = work / "filtered"
            if kind == "out-to-user-folder":
                out.symlink_to(user)
            elif kind == "out-dangling":
                out.symlink_to(work / "nowhere" / "f")
            else:
                out = ds / "filtered"
            fz.check(
                ["filter", str(ds), "--out", str(out), "--min-coherence", "0.1"],
                work,
                fs.EITHER,
                label,
                outputs=(out,),
                keep=(user / "my_notes.md",),
            )
            if kind == "out-inside-dataset":  # the dataset still opens, with its numbers
                _reading_commands(fz, base, work, ds, fs.EITHER, label + ", then read", numbers)
            return None
        target = ds / ("meta.json" if kind == "meta-to-other" else name)
        same = False
        if kind == "file-to-identical":
            copy = work / "elsewhere" / name
            copy.parent.mkdir()
            shutil.copyfile(target, copy)
            target.unlink()
            target.symlink_to(copy)
            same = True
        elif kind in ("file-to-other", "meta-to-other"):
            same = target.read_bytes() == (other / target.name).read_bytes()
            target.unlink()
            target.symlink_to(other / target.name)
        elif kind == "dangling":
            target.unlink()
            target.symlink_to(work / "nowhere" / name)
        elif kind == "loop":
            target.unlink()
            target.symlink_to(target)
        else:
            target.unlink()
            target.symlink_to(other)
        _reading_commands(fz, base, work, ds, fs.EITHER if same else fs.REFUSE, label, numbers if same else None)
        return None


# ----------------------------------------------------------------------------- every JSON / TOML the tool reads

JSON_TARGETS = (
    "meta.json",
    "checkpoint card",
    "run config.json",
    "training_history.json",
    "index.json",
    "results (compare NEW)",
    "results (compare BASELINE)",
    "results (leaderboard)",
    "corpus line",
    "texts.jsonl line",
    "articles.jsonl line",
    ".lvm-output marker",
    "dataset cache/verified.json",
    "--model-config",
    "safetensors header",
    "gate profile (TOML)",
)
TINY_CORPUS = [
    {"id": "a1", "title": "Mercury", "topic": "Science", "text": "Mercury is the smallest planet. It is near the Sun. "
     "It has no moons at all. A day there lasts long."},
    {"id": "a2", "title": "Jazz", "topic": "Arts", "text": "Jazz began in New Orleans. It grew out of blues. "
     "Improvisation is central to it. Swing is a jazz style."},
    {"id": "a3", "title": "Rome", "topic": "History", "text": "Rome ruled the Mediterranean. Augustus was its first "
     "emperor. Its roads crossed Europe. Latin was its language."},
    {"id": "a4", "title": "Violin", "topic": "Arts", "chunks": ["The violin is a string instrument.",
     "It is played with a bow.", "Stradivari made famous violins."]},
]  # fmt: skip
REAL_ENCODER_ARGS = ["--quiet", "--val-fraction", "0.25", "--ood-fraction", "0.25"]


def _write_corpus(path: Path, records: list, raw_line: bytes | None = None, at: int = 0) -> None:
    lines = [fs.dumps(r).encode() for r in records]
    if raw_line is not None:
        lines[at] = raw_line
    path.write_bytes(b"\n".join(lines) + b"\n")


def _results_metric_oracle(doc, path: tuple, new, other_doc) -> str | None:
    """When ``path`` is a gated metric of a result (one of its thresholds' metrics, not a timing) and the
    other side holds it as a finite number: what compare must not call GREEN."""
    if len(path) != 4 or path[0] != "results" or path[2] != "metrics" or fs.finite_number(new) or new is None:
        return None  # null: a metric not measured (absent); anything else not a finite number must not pass
    try:
        r = doc["results"][path[1]]
        b = other_doc["results"][path[1]]
    except (KeyError, IndexError, TypeError):
        return None
    if not isinstance(r, dict) or r.get("gate") in ("latency",):
        return None
    gated = {t.get("metric") for t in r.get("thresholds") or [] if isinstance(t, dict)}
    theirs = (b.get("metrics") or {}).get(path[3]) if isinstance(b, dict) else None
    if path[3] in gated and fs.finite_number(theirs):
        return f"{r.get('gate')}.{path[3]} = {fs.short(new)}"
    return None


# metrics the leaderboard shows beside the gated ones (a sampling bias only: the oracle does not depend on it)
SHOWN_METRICS = ("val_cosine", "ood_cosine", "ood_minus_val", "p95_ms", "n_params", "margin", "best_baseline")


def _gated_metric_paths(doc: dict) -> list[tuple]:
    """("results", i, "metrics", m) of every metric a result's thresholds name (what compare compares), its
    gate's headline and what the leaderboard shows (cosines and their intervals, latency, margins)."""
    from lvm.gates.spec import BY_ID

    out = []
    for i, r in enumerate(doc.get("results", [])):
        metrics = r.get("metrics") or {}
        names = {t.get("metric") for t in r.get("thresholds") or [] if isinstance(t, dict)}
        spec = BY_ID.get(r.get("gate"))
        names |= {spec.headline} if spec and spec.headline else set()
        names |= {m for m in metrics if m.startswith(SHOWN_METRICS) or m.startswith(("recall", "contain", "mrr"))}
        out += [("results", i, "metrics", m) for m in sorted(n for n in names if n in metrics)]
    return out


def _config_broken(path: tuple, old, new) -> bool:
    """A run's config.json field edited to a value ``lvm train`` must refuse (its bounds are the options')."""
    if not path:
        return True
    if isinstance(old, bool):
        return not isinstance(new, bool)
    if isinstance(old, str) and path[0] in ("dataset", "model", "device"):
        return not isinstance(new, str)
    if fs.is_number(old):
        if fs.number_broken(old, new):
            return True
        if path[0] == "model_config":
            return _size_broken(new)
        sem = fs.SEMANTIC_BOUNDS.get("--" + str(path[-1]).replace("_", "-"))
        return sem is not None and not fs._within(float(new), *sem)
    return False


def _size_broken(v) -> bool:
    """A model size (d_model, hidden_dim, ...): a whole number in [1, 65536]."""
    if not fs.is_number(v) or not fs.finite_number(v):
        return True
    return not float(v).is_integer() or not 1 <= v <= 65_536


def json_reader_case(fz: Fuzz, base: dict, work: Path, target: str, attack: str, data) -> None:  # noqa: C901, PLR0915 - one branch per reader
    """One input for one JSON (or TOML) reader: ``attack`` is "extreme" (a number replaced by an extreme one)
    or "deep" (10k-100k nesting); the reader's commands run on it with the oracle of that file."""

    def edit(doc, focus=(), paths=None):
        if attack == "deep":
            raw, path, label = data.draw(fs.deep_edit(doc))
            return raw, path, None, fs.UNPARSEABLE, label
        raw, path, old, label = data.draw(fs.extreme_edit(doc, focus, paths))
        return raw, path, old, fs.parse_json(raw), label

    n, dim = base["arrays"]["vectors"].shape
    if target == "meta.json":
        ds = copy_dataset(base, work)
        raw, path, old, doc, label = edit(base["meta"], fs.META_FOCUS)
        (ds / "meta.json").write_bytes(raw)
        ok = isinstance(doc, dict) and fs.meta_valid(doc, n, dim)
        ok = ok and not (path and path[0] in ("format_version", "content_hash", "dim", "counts", "parent"))
        expect = fs.EITHER if ok else fs.REFUSE
        return _reading_commands(
            fz, base, work, ds, expect, f"meta.json: {label}", _numbers_of(base, base["ds"]) if ok else None
        )
    if target == "checkpoint card":
        run = copy_run(base, work)
        raw, path, old, doc, label = edit(base["card"], fs.CARD_FOCUS)
        _write_card(run, raw)
        expect = fs.REFUSE if not isinstance(doc, dict) or fs.card_invalid(doc) else fs.EITHER
        if (
            isinstance(doc, dict)
            and path
            and path[0] == "model_config"
            and fs.is_number(old)
            and _size_broken(fs.get_path(doc, path))
        ):
            expect = fs.REFUSE if path[-1] in ("d_model", "hidden_dim", "n_layers", "n_heads") else expect
        return checkpoint_commands(fz, base, work, run, expect, f"best.json: {label}", "folder")
    if target == "run config.json":
        run = copy_run(base, work)
        raw, path, old, doc, label = edit(
            base["run_config"], ("epochs", "lr", "batch_size", "ctx", "loss", "model_config")
        )
        (run / "config.json").write_bytes(raw)
        broken = not isinstance(doc, dict) or _config_broken(path, old, fs.get_path(doc, path) if path else doc)
        argv = ["train", "--resume", str(run), "--quiet"]
        fz.check(
            argv, work, fs.REFUSE if broken else fs.EITHER, f"config.json: {label}", outputs=(run,), documented=(3,)
        )
        return None
    if target == "training_history.json":
        run = copy_run(base, work)
        hist = json.loads((run / "training_history.json").read_text())
        raw, path, old, doc, label = edit(hist)
        (run / "training_history.json").write_bytes(raw)
        expect = fs.REFUSE if not isinstance(doc, dict) else fs.EITHER
        argv = ["train", "--resume", str(run), "--quiet"]
        fz.check(argv, work, expect, f"training_history.json: {label}", outputs=(run,), documented=(3,))
        return None
    if target == "index.json":
        ds = copy_dataset(base, work)
        raw, path, old, doc, label = edit(json.loads((ds / "index.json").read_text()))
        (ds / "index.json").write_bytes(raw)
        label = f"index.json: {label}"
        fz.check(
            ["inspect", str(ds), "--json"],
            work,
            fs.EITHER,
            label,
            sane=_same_numbers(_numbers_of(base, base["ds"])["inspect"], "inspect"),
        )
        fz.check(
            ["build-index", str(ds), "--quiet"], work, fs.EITHER, label, outputs=(ds / "index.faiss", ds / "index.json")
        )
        return None
    if target.startswith("results"):
        if base["results"] is None:
            return None
        raw, path, old, doc, label = edit(base["results"], ("results",), _gated_metric_paths(base["results"]))
        good, bad = work / "good.json", work / "bad.json"
        good.write_text(json.dumps(base["results"]))
        bad.write_bytes(raw)
        expect = fs.REFUSE if not isinstance(doc, dict) else fs.EITHER
        if "leaderboard" in target:
            out = work / "lb"
            sane = lambda res: None if (out / "leaderboard.md").is_file() else "exit 0 but no leaderboard.md"  # noqa: E731
            fz.check(["leaderboard", str(bad), "--out", str(out)], work, expect, label, outputs=(out,), sane=sane)
            return None
        new, old_f = (bad, good) if "NEW" in target else (good, bad)
        nan_metric = (
            _results_metric_oracle(
                doc, path, fs.get_path(doc, path) if isinstance(doc, dict) and path else None, base["results"]
            )
            if isinstance(doc, dict)
            else None
        )

        def sane(res, what=nan_metric, side=target):
            return f"compare exit 0 (all GREEN) although {side.split()[-1].rstrip(')')}'s {what}" if what else None

        fz.check(["compare", str(new), str(old_f)], work, expect, f"{target}: {label}", documented=(1,), sane=sane)
        return None
    if target == "corpus line":
        at = data.draw(st.integers(0, len(TINY_CORPUS) - 1))
        raw, path, old, doc, label = edit(TINY_CORPUS[at], ("id", "text", "chunks"))
        corpus = work / "c.jsonl"
        _write_corpus(corpus, TINY_CORPUS, raw, at)
        out = work / "built"
        expect = fs.REFUSE if doc is fs.UNPARSEABLE else fs.EITHER
        fz.check(
            ["build-data", "--corpus", str(corpus), "--out", str(out), *REAL_ENCODER_ARGS],
            work,
            expect,
            f"corpus line {at + 1}: {label}",
            outputs=(out,),
            sane=_filtered_dataset_opens(out),
        )
        return None
    if target in ("texts.jsonl line", "articles.jsonl line"):
        ds = copy_dataset(base, work)
        name = target.split()[0]
        lines = (ds / name).read_text().splitlines()
        at = data.draw(st.integers(0, len(lines) - 1))
        raw, path, old, doc, label = edit(json.loads(lines[at]), ("article_id", "first_chunk", "n_chunks", "split"))
        lines[at] = raw.decode("utf-8", "surrogateescape")
        (ds / name).write_bytes("\n".join(lines).encode("utf-8", "surrogateescape") + b"\n")
        _rehash(ds)  # past the content hash: the readers themselves
        label = f"{name} line {at + 1}: {label} (meta.json rehashed)"
        damaged = doc is fs.UNPARSEABLE or (name == "texts.jsonl" and not isinstance(doc, str))
        if name == "articles.jsonl" and doc is not fs.UNPARSEABLE:
            damaged = not isinstance(doc, dict) or (
                bool(path)
                and path[0] in ("article_id", "first_chunk", "n_chunks", "split")
                and fs.get_path(doc, path) != old
            )
        out = work / "filtered"
        fz.check(["filter", str(ds), "--out", str(out), "--min-coherence", "0.1"], work,
                 fs.REFUSE if damaged else fs.EITHER, label, outputs=(out,))  # fmt: skip
        topic_damage = name == "articles.jsonl" and damaged
        fz.check(["coherence", str(ds), "--by-topic", "--json"], work, fs.REFUSE if topic_damage else fs.EITHER, label)
        fz.check(["inspect", str(ds), "--json"], work, fs.EITHER, label)
        return None
    if target == ".lvm-output marker":
        out = work / "filtered"
        argv = ["filter", str(base["ds"]), "--out", str(out), "--min-coherence", "0.1"]
        _must(argv, work)
        marker = json.loads((out / ".lvm-output").read_text())
        raw, path, old, doc, label = edit(marker, ("files",))
        (out / ".lvm-output").write_bytes(raw)
        keep = ()
        if data.draw(st.booleans()):
            (out / "my_notes.md").write_text("the user's")
            keep = (out / "my_notes.md",)
        fz.check(argv, work, fs.EITHER, f".lvm-output: {label}", outputs=(out,), keep=keep)
        return None
    if target == "dataset cache/verified.json":
        ds = copy_dataset(base, work)
        rec = ds / "cache" / "verified.json"
        if not rec.is_file():
            _must(["inspect", str(ds)], work)
        if not rec.is_file():
            return None
        raw, path, old, doc, label = edit(json.loads(rec.read_text()), ("files", "vector_sketch"))
        rec.write_bytes(raw)
        return _reading_commands(
            fz, base, work, ds, fs.EITHER, f"cache/verified.json: {label}", _numbers_of(base, base["ds"])
        )
    if target == "--model-config":
        raw, path, old, doc, label = edit(json.loads(TINY_MODEL), ("d_model", "hidden_dim"))
        broken = not isinstance(doc, dict) or (bool(path) and _size_broken(fs.get_path(doc, path)))
        argv = ["train", "--model", "amn", "--dataset", str(base["ds"]), "--epochs", "1", "--batch-size", "16"]
        argv += [
            "--out",
            str(work / "run"),
            "--quiet",
            "--no-kill-switches",
            "--model-config",
            raw.decode("utf-8", "replace"),
        ]
        fz.check(
            argv,
            work,
            fs.REFUSE if broken else fs.EITHER,
            f"--model-config {label}",
            outputs=(work / "run",),
            documented=(3,),
        )
        return None
    if target == "safetensors header":
        header, body = fs.read_safetensors(base["weights"])
        raw, path, old, doc, label = edit(header)
        new_header = raw + b" " * (-len(raw) % 8)
        weights = struct.pack("<Q", len(new_header)) + new_header + body
        run = copy_run(base, work)
        (run / "best.safetensors").write_bytes(weights)
        _write_card(run, json.dumps(dict(base["card"], weights_sha256=hashlib.sha256(weights).hexdigest())).encode())
        changed = doc is fs.UNPARSEABLE or (bool(path) and path[0] != "__metadata__")
        return checkpoint_commands(
            fz, base, work, run, fs.REFUSE if changed else fs.EITHER, f"safetensors header: {label}", "folder"
        )
    # the gate profile (TOML): coherence, compare and train read it
    prof = work / "p.toml"
    if attack == "deep":
        raw, label = data.draw(fs.deep_toml(base["profile_text"]))
        broken = True
    else:
        doc = json.loads(json.dumps(base["profile"]))
        if data.draw(st.booleans()):  # a gate parameter (declared in lvm.gates.spec) set in its table
            from lvm.gates.spec import GATES

            g = data.draw(st.sampled_from([g for g in GATES if g.params]))
            key = data.draw(st.sampled_from(sorted(g.params)))
            doc.setdefault("gates", {}).setdefault(g.id, {})[key] = g.params[key]
        raw, path, old, new, label = data.draw(fs.extreme_toml(doc))
        # a rule threshold (min_/max_green, min_/max_amber) is compared as a real number: 1.5 where 0 was is a
        # threshold like any other (at most one non-finite output), not "a fraction where an integer was"
        threshold = bool(path) and str(path[-1]).startswith(("min_", "max_")) and "rules" in map(str, path)
        broken = (
            fs.number_broken(old, new)
            and not (threshold and fs.finite_number(new))
            or (fs.is_number(old) and isinstance(old, int) and old > 0 and fs.is_number(new) and new < 0)
        )
        broken = broken or (isinstance(old, list) and not isinstance(new, list) and path[-1] == "ks")
    prof.write_bytes(raw)
    expect = fs.REFUSE if broken else fs.EITHER
    label = f"profile: {label}"
    fz.check(["coherence", str(base["ds"]), "--gate-profile", str(prof), "--json"], work, expect, label)
    if base["results"] is not None:
        good = work / "good.json"
        good.write_text(json.dumps(base["results"]))
        fz.check(["compare", str(good), str(good), "--gate-profile", str(prof)], work, expect, label, documented=(1,))
    argv = ["train", "--model", "amn", "--dataset", str(base["ds"]), "--epochs", "1", "--batch-size", "16"]
    argv += ["--out", str(work / "run"), "--quiet", "--model-config", TINY_MODEL, "--gate-profile", str(prof)]
    fz.check(argv, work, expect, label, outputs=(work / "run",), documented=(3,))
    return None


@fuzz_settings(1.5)
@given(data=st.data(), target=st.sampled_from(JSON_TARGETS))
def test_extreme_numbers(base, data, target):
    """±1e308, NaN, ±Infinity, 10**400 (and 5000-digit) integers, -0.0, 5e-324, strings and bools where numbers
    go, in every JSON the tool reads and writes (dataset meta, checkpoint card, run config and history, index
    parameters, results files, corpus lines, texts/articles tables, the output marker, the integrity record,
    --model-config, the safetensors header) and in gate profiles (TOML)."""
    fz = Fuzz(f"extreme_numbers[{target}]", base, "extreme_numbers")
    with fz.example() as work:
        json_reader_case(fz, base, work, target, "extreme", data)


@fuzz_settings(0.5)
@given(data=st.data(), target=st.sampled_from(JSON_TARGETS))
def test_deep_nesting(base, data, target):
    """JSON arrays/objects nested 10k-100k deep (the whole document or one value), in every JSON reader and
    in TOML profiles: refused with one line where the file is required, never a RecursionError."""
    fz = Fuzz(f"deep_nesting[{target}]", base, "deep_nesting")
    with fz.example() as work:
        json_reader_case(fz, base, work, target, "deep", data)


# ----------------------------------------------------------------------------- .npy headers


@fuzz_settings(0.5)
@given(data=st.data(), where=st.sampled_from(["dataset", "view rows", "npz required", "npz optional"]))
def test_npy_headers(base, view_base, data, where):
    """Garbage .npy headers (deep or unbalanced brackets, unterminated strings, 10**400 shapes, code that must
    never run, lying lengths and versions) in a dataset's arrays, a view's rows.npy and .npz members."""
    fz = Fuzz("npy_headers", base, "parser_limits")
    with fz.example() as work:
        marker = str(work / "PWNED")
        if where == "dataset":
            ds = copy_dataset(base, work)
            name = data.draw(st.sampled_from(fs.DATASET_ARRAYS))
            raw, label, valid = data.draw(fs.npy_header_attack(base["arrays"][name], marker))
            (ds / f"{name}.npy").write_bytes(raw)
            label = f"{name}.npy: {label}"
            expect = fs.REFUSE if not valid or raw != (base["ds"] / f"{name}.npy").read_bytes() else fs.EITHER
            fz.check(["inspect", str(ds), "--json"], work, expect, label, markers=(marker,))
            fz.check(["evaluate", str(base["run"]), "--dataset", str(ds)], work, expect, label, markers=(marker,))
        elif where == "view rows":
            view = work / "view"
            shutil.copytree(view_base, view)
            ds = copy_dataset(base, work)
            _fix_view_parent(view, ds)
            raw, label, _ = data.draw(fs.npy_header_attack(np.load(view / "rows.npy"), marker))
            (view / "rows.npy").write_bytes(raw)  # other bytes than the view's hash names: refused either way
            fz.check(["inspect", str(view), "--json"], work, fs.REFUSE, f"rows.npy: {label}", markers=(marker,))
        else:
            required = ("context_sequences", "target_vectors", "article_ids")
            keys = required if where == "npz required" else tuple(k for k in sorted(base["npz"]) if k not in required)
            key = data.draw(st.sampled_from(keys))
            raw, label, valid = data.draw(fs.npy_header_attack(base["npz"][key], marker))
            members = {f"{k}.npy": fs.npy_bytes(v) for k, v in base["npz"].items()}
            members[f"{key}.npy"] = raw
            (work / "x.npz").write_bytes(fs.npz_bytes(members))
            out = work / "imported"
            expect = fs.REFUSE if where == "npz required" and not valid else fs.EITHER
            argv = ["import-npz", str(work / "x.npz"), "--out", str(out), "--quiet"]
            fz.check(argv, work, expect, f"{key}.npy in the .npz: {label}", outputs=(out,), markers=(marker,))


# ----------------------------------------------------------------------------- numeric flags


def numeric_flags() -> list[tuple[str, str, tuple]]:
    """Every numeric option of every ``lvm`` command, found on the parser itself: (command, option, bound)."""
    import argparse

    from lvm.cli import build_parser

    parser = build_parser(with_train_options=True)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    found = []
    for cmd, sp in sub.choices.items():
        for action in sp._actions:
            bound = fs.flag_bound(action, cmd) if action.option_strings else None
            if bound is not None:
                found.append((cmd, max(action.option_strings, key=len), bound))
    return found


# valid values that would only make an example slow (epochs, threads, bank sizes): run at this instead
FLAG_COST_CAPS = {"--epochs": 2, "--threads": 2, "--n-chunks": 600, "--dim": 64, "--settle": 0.5, "--interval": 1}
TRAIN_COST_CAPS = {"--ctx": 64, "--min-ctx": 64}


def flag_base_argv(cmd: str, base: dict, work: Path) -> tuple[list[str], tuple]:
    """A valid, fast invocation of ``cmd`` (argv, outputs) that a numeric option is added to."""
    ds = str(base["ds"])
    out = work / "out"
    if cmd == "build-data":
        corpus = work / "c.jsonl"
        _write_corpus(corpus, TINY_CORPUS + [LONG_ARTICLE])
        return ["build-data", "--corpus", str(corpus), "--out", str(out), *REAL_ENCODER_ARGS], (out,)
    if cmd == "build-index":
        copy = copy_dataset(base, work)
        return ["build-index", str(copy), "--quiet"], (copy / "index.faiss", copy / "index.json")
    if cmd == "watch":
        run = copy_run(base, work)
        return ["watch", str(run), "--once", "--dataset", ds, "--settle", "0"], (run / "lvm-watch.jsonl", run / "KILL")
    table = {
        "inspect": (["inspect", ds, "--json"], ()),
        "import-npz": (["import-npz", str(base["root"] / "base.npz"), "--out", str(out), "--quiet"], (out,)),
        "train": (
            ["train", "--model", "amn", "--dataset", ds, "--epochs", "1", "--batch-size", "16", "--out", str(out)]
            + ["--quiet", "--no-kill-switches", "--model-config", TINY_MODEL],
            (out,),
        ),
        "fingerprint": (["fingerprint"], ()),
        "synth": (["synth", "--out", str(out), "--n-chunks", "120", "--dim", "8", "--quiet"], (out,)),
        "coherence": (["coherence", ds, "--json"], ()),
        "filter": (["filter", ds, "--out", str(out), "--min-coherence", "0.1"], (out,)),
        "calibrate": (
            ["calibrate", ds, "--reference", str(work / "no-such-run"), "--out", str(work / "p.toml")],
            (work / "p.toml",),
        ),
        "sequences": (["sequences", ds, "--ctx", "3", "--out", str(out)], (out,)),
        "import-checkpoint": (
            ["import-checkpoint", str(base["root"] / "legacy.pt"), "--factory", f"py:{base['factory']}:build"]
            + ["--out", str(out), "--no-export", "--dataset", ds],
            (out,),
        ),
    }
    return table.get(cmd, ([cmd, "--help"], ()))  # a command without a base here: its parser only


LONG_ARTICLE = {"id": "long", "title": "Long", "topic": "Arts", "text": " ".join(["word"] * 3000) + "."}


def _cross_flag_ok(cmd: str, opt: str, value: str, argv: list[str]) -> bool:
    """Ranges that tie an option to another in the same command line (min-ctx <= ctx, target >= min chars)."""
    v = int(float(value)) if value.lstrip("-").replace(".", "", 1).isdigit() else None
    if v is None:
        return True
    ctx = int(argv[argv.index("--ctx") + 1]) if "--ctx" in argv else 5
    if opt == "--min-ctx" and cmd in ("inspect", "filter", "sequences", "train") and v > ctx:
        return False
    return not (opt == "--target-chars" and v < 20)


@fuzz_settings(1.0)
@given(data=st.data())
def test_numeric_flags(base, data):
    """Every numeric option of every command (enumerated from the parser, so a new one is covered), at and
    just beyond its declared bounds (``lvm.bounds.number`` or the train schema) and the values that make sense
    at all, and at extremes (NaN, ±inf, 1e400, 10**400, hex, underscores, empty): refused with one line before
    anything runs, or run (a valid value)."""
    flags = base.setdefault("numeric_flags", numeric_flags())
    cmd, opt, bound = data.draw(st.sampled_from(flags))
    fz = Fuzz("numeric_flags", base)
    value = data.draw(fs.flag_value(opt, bound))
    with fz.example() as work:
        argv, outputs = flag_base_argv(cmd, base, work)
        ok = fs.flag_value_ok(opt, value, bound) and _cross_flag_ok(cmd, opt, value, argv)
        caps = {**FLAG_COST_CAPS, **(TRAIN_COST_CAPS if cmd == "train" else {})}
        if ok and opt in caps and float(value) > caps[opt]:
            value = str(caps[opt])
        if opt in argv:  # replace the base's own value
            i = argv.index(opt)
            argv = argv[:i] + argv[i + 2 :]
        if argv[-1] == "--help":  # parsed before --help ends the run
            argv = [argv[0], f"{opt}={value}", "--help"]
        else:
            argv = [*argv, f"{opt}={value}"]
        label = f"{cmd} {opt}={value!r} (bounds {bound[1]}..{bound[2]} from {bound[5]})"
        documented = (3,) if cmd in ("train", "watch") else ()  # 3: a kill switch
        fz.check(argv, work, fs.EITHER if ok else fs.REFUSE, label, outputs=outputs, documented=documented)


# ----------------------------------------------------------------------------- the gate suite's pytest options


def _results_paths(kind: str, work: Path, ds: Path) -> tuple[str, str, tuple]:
    """An odd --results path: (path, expect, user files that must survive)."""
    user = work / "user.txt"
    user.write_text("the user's")
    if kind == "existing-folder":
        (work / "resdir").mkdir()
        (work / "resdir" / "mine.txt").write_text("mine")
        return str(work / "resdir"), fs.EITHER, (work / "resdir" / "mine.txt", user)
    if kind == "file-as-parent":
        return str(ds / "meta.json" / "x.json"), fs.REFUSE, (user,)
    if kind == "user-file-as-parent":
        return str(user / "r.json"), fs.REFUSE, (user,)
    if kind == "missing-parents":
        return str(work / "a" / "b" / "c" / "r.json"), fs.EITHER, (user,)
    if kind == "trailing-slash":
        return str(work / "r.json") + "/", fs.EITHER, (user,)
    if kind == "dangling-link":
        (work / "l.json").symlink_to(work / "nowhere" / "x.json")
        return str(work / "l.json"), fs.EITHER, (user,)
    if kind == "link-to-user-file":
        (work / "l.json").symlink_to(user)
        return str(work / "l.json"), fs.EITHER, (user,)
    if kind == "long-name":
        return str(work / ("r" * 300 + ".json")), fs.REFUSE, (user,)
    return "", fs.EITHER, (user,)


GATE_SUITE_OPTION_GATES = {"--nprobe": "retrieval or oracle_recall", "--latency-threads": "latency"}  # what reads them


def gate_suite_numeric_options() -> list[tuple[str, tuple]]:
    """Every numeric option the lvm pytest plugin adds (found by calling its ``pytest_addoption``), with
    its bound: declared with ``lvm.bounds.number``, else none (the semantic bounds still apply)."""

    class Group:
        def __init__(self):
            self.found = []

        def addoption(self, *names, **kw):
            t = kw.get("type")
            b = getattr(t, "bound", None)
            if b is not None:
                self.found.append((max(names, key=len), (b.kind, b.lo, b.hi, b.lo_open, False, "lvm.bounds")))
            elif t in (int, float):
                self.found.append((max(names, key=len), (t, None, None, False, False, "undeclared")))

    group = Group()

    class Parser:
        def getgroup(self, *a, **k):
            return group

        addoption = group.addoption

    from lvm import pytest_plugin

    pytest_plugin.pytest_addoption(Parser())
    return group.found


def _profile_option(data, base: dict, work: Path) -> tuple[list[str], str, str]:
    """--gate-profile as a folder, missing, empty, JSON, without .toml, a shipped name, or a profile with one
    gate parameter out of range; the gate that reads it selected (-k): (pytest args, expect, label)."""
    from lvm.gates.spec import GATES

    kind = data.draw(st.sampled_from(["folder", "missing", "empty", "json", "no-suffix", "name", "param", "param"]))
    gate = data.draw(st.sampled_from([g for g in GATES if g.params and g.id != "latency"]))
    expect, prof = fs.REFUSE, work / "p.toml"
    if kind == "folder":
        prof.mkdir()
    elif kind == "empty":
        prof.write_text("")
    elif kind == "json":
        prof.write_text(json.dumps(base["profile"]))
    elif kind == "no-suffix":
        prof = work / "profile"
        prof.write_text(base["profile_text"])
        expect = fs.EITHER  # read as a name: not found (refused), or as the file
    elif kind == "name":
        prof, expect = "gtr-t5-wiki", fs.EITHER
    elif kind == "param":
        key = data.draw(st.sampled_from(sorted(gate.params)))
        default = gate.params[key]
        new = data.draw(st.sampled_from([-5, -1, 0, 1.5, math.nan, math.inf, 10**400, True, "10", [], 1]))
        doc = json.loads(json.dumps(base["profile"]))
        doc.setdefault("gates", {}).setdefault(gate.id, {})[key] = new
        prof.write_text(fs.to_toml(doc))
        broken = fs.number_broken(default, new) or (fs.is_number(new) and new < 0)
        broken = broken or (isinstance(default, list) and not isinstance(new, list))
        expect = fs.REFUSE if broken else fs.EITHER
        kind = f"[gates.{gate.id}] {key} = {fs.short(new)}"
    tail = [f"--gate-profile={prof}", "-k", gate.id]
    if gate.kind == "model":
        tail.append(f"--checkpoint={base['run']}")
    return tail, expect, f"--gate-profile {kind}"


@fuzz_settings(0.12)
@given(
    data=st.data(),
    option=st.sampled_from(["--results", "--results", "numeric", "numeric", "--gate-profile", "--gate-profile"]),
)
def test_gate_suite_options(base, data, option):
    """``pytest --pyargs lvm.gatesuite`` with odd --results paths (a folder, under a file, under a missing
    folder, a link, a 300-character name), --nprobe and --latency-threads at and beyond their bounds, and
    --gate-profile as a folder, a missing or non-TOML file, or a profile whose gate parameters are out of
    range (run with the gate that reads them): a usage error (exit 4, ``ERROR: ...``) or a run; never a
    traceback, an INTERNALERROR or a crash of the interpreter."""
    fz = Fuzz("gate_suite_options", base)
    with fz.example() as work:
        ds = copy_dataset(base, work)
        argv = [f"--dataset={ds}"]
        keep: tuple = ()
        results = work / "out" / "gate_results.json"
        if option == "--results":
            kind = data.draw(
                st.sampled_from(
                    ["existing-folder", "file-as-parent", "user-file-as-parent", "missing-parents", "trailing-slash"]
                    + ["dangling-link", "link-to-user-file", "long-name", "empty"]
                )
            )
            path, expect, keep = _results_paths(kind, work, ds)
            argv += [f"--results={path}", "-k", "normalization"]
            label = f"--results {kind}"
        elif option == "numeric":
            opt, bound = data.draw(st.sampled_from(gate_suite_numeric_options()))
            value = data.draw(st.one_of(fs.flag_value(opt, bound), st.sampled_from(["100000", str(2**31), str(2**63)])))
            expect = fs.EITHER if fs.flag_value_ok(opt, value, bound) else fs.REFUSE
            if expect == fs.EITHER and "thread" in opt and float(value) > 2:
                value = "2"  # valid, but thousands of threads only slow the example down
            gates = GATE_SUITE_OPTION_GATES.get(opt, "normalization")
            argv += [f"{opt}={value}", f"--checkpoint={base['run']}", f"--results={results}", "-k", gates]
            label = f"{opt}={value!r} (bounds {bound[1]}..{bound[2]} from {bound[5]})"
        else:
            tail, expect, label = _profile_option(data, base, work)
            argv += [*tail, f"--results={results}"]
        outputs = (results.parent, ds / "index.faiss", ds / "index.json", ds / "cache")
        if option == "--results":
            outputs = (Path(argv[1].split("=", 1)[1].rstrip("/")), ds / "index.faiss", ds / "index.json")
        fz.check(argv, work, expect, label, outputs=outputs, keep=keep, documented=(1,), runner=run_pytest,
                 roots=[base["root"], ds])  # fmt: skip


# ----------------------------------------------------------------------------- nonsense settings

NONSENSE_CORPORA = {  # name: (records, has words)
    "punctuation": ([{"id": i, "title": "", "text": "!!! ... ??? ;;; --- ,,, ..."} for i in range(4)], False),
    "whitespace": ([{"id": i, "title": "t", "text": " \t \u3000 \u00a0 "} for i in range(4)], False),
    "empty-text": ([{"id": i, "title": "t", "text": ""} for i in range(4)], False),
    "empty-chunks": ([{"id": i, "title": "t", "chunks": []} for i in range(4)], False),
    "blank-chunks": ([{"id": i, "title": "t", "chunks": ["", " ", "..."]} for i in range(4)], False),
    "symbols": ([{"id": i, "title": "t", "text": "∑∫√∞ ≈≠≤≥ ←→↑↓ ■□▲△"} for i in range(4)], False),
    "emoji": ([{"id": i, "title": "t", "text": "😀😃😄 😁😆 🎉🎉 🚀."} for i in range(4)], False),
    "one-letter": (
        [{"id": i, "title": "t", "text": f"{'abcd'[i]}. {'efgh'[i]}. {'ijkl'[i]}."} for i in range(4)],
        True,
    ),
    "digits": ([{"id": i, "title": "t", "text": f"{i}. {i + 1}. 42. 1e308. NaN."} for i in range(4)], True),
    "same-id": ([{"id": "x", "title": "t", "text": r["text"]} for r in TINY_CORPUS[:3]], True),
    "long-sentence": ([LONG_ARTICLE] + TINY_CORPUS[:3], True),
    "long-word": ([{"id": "w", "title": "w", "text": "a" * 20_000 + "."}] + TINY_CORPUS[:3], True),
    "normal": (TINY_CORPUS, True),
}
MODEL_MAX_TOKENS = 512  # the packaged MiniLM's position embeddings


@fuzz_settings(0.4)
@given(
    data=st.data(),
    what=st.sampled_from(["build-data", "build-data", "train-losses", "train-contexts"]),
)
def test_nonsense_settings(base, data, what):
    """Settings that each pass their own bounds but make no sense together or with the data: corpora with
    no words (punctuation, whitespace, symbols, empty chunks), a --max-length beyond the encoder's positions or
    too short to hold a token, chunk sizes that cross; lvm train with every loss weight 0, an adaptive λ range
    upside down, or a --min-ctx no article reaches. Refused with one line; a success must be a dataset worth
    having (it opens; distinct texts do not all get one vector)."""
    fz = Fuzz("nonsense_settings", base)
    with fz.example() as work:
        if what == "build-data":
            name = data.draw(st.sampled_from(sorted(NONSENSE_CORPORA)))
            records, words = NONSENSE_CORPORA[name]
            corpus = work / "c.jsonl"
            _write_corpus(corpus, records)
            extra, problems = [], [] if words else ["no words"]
            max_len = data.draw(st.sampled_from([None, None, 1, 2, 3, 512, 513, 4096, 131072]))
            if max_len is not None:
                extra += ["--max-length", str(max_len)]
                if max_len > MODEL_MAX_TOKENS:
                    problems.append("max length beyond the encoder's positions")
                if max_len < 3:
                    problems.append("max length leaves no room for a token between [CLS] and [SEP]")
            min_chars = data.draw(st.sampled_from([None, 1, 20, 100_000]))
            target = data.draw(st.sampled_from([None, None, 1, 19, 20, 1_000_000]))
            if min_chars is not None:
                extra += ["--min-chars", str(min_chars)]
            if target is not None:
                extra += ["--target-chars", str(target)]
                if target < (min_chars if min_chars is not None else 20):
                    problems.append("target chars below min chars")
            out = work / "built"

            def sane(res, out=out):
                why = _filtered_dataset_opens(out)(res)
                if why:
                    return why
                vec = np.load(out / "vectors.npy")
                texts = {json.loads(line) for line in (out / "texts.jsonl").read_text().splitlines()}
                if len(texts) > 1 and np.allclose(vec, vec[0]):
                    return f"exit 0 but all {len(vec)} chunks ({len(texts)} different texts) got the same vector"
                return None

            label = f"corpus {name} {' '.join(extra)}" + (f" ({'; '.join(problems)})" if problems else "")
            fz.check(
                ["build-data", "--corpus", str(corpus), "--out", str(out), *REAL_ENCODER_ARGS, *extra],
                work,
                fs.REFUSE if problems else fs.EITHER,
                label,
                outputs=(out,),
                sane=sane,
            )
            return
        argv = ["train", "--model", "amn", "--dataset", str(base["ds"]), "--epochs", "1", "--batch-size", "16"]
        argv += ["--out", str(work / "run"), "--quiet", "--no-kill-switches", "--model-config", TINY_MODEL]
        if what == "train-losses":
            names = ["--lambda-mse", "--lambda-cos", "--lambda-info", "--lambda-moment", "--lambda-variance"]
            zeros = st.sampled_from(["0", "0.0", "-0.0", "0e5"])
            any_w = st.sampled_from(["0", "0.0", "-0.0", "1e-300", "1", "5e-324"])
            every_zero = data.draw(st.booleans())
            weights = {n: data.draw(zeros if every_zero else any_w) for n in names}
            adaptive = data.draw(
                st.sampled_from(
                    [[], ["--adaptive-info"], ["--adaptive-info", "--adaptive-min", "0.9", "--adaptive-max", "0.1"]]
                )
            )
            tail = [x for n, v in weights.items() for x in (n, v)] + adaptive
            all_zero = all(float(v) == 0 for v in weights.values()) and not adaptive  # adaptive: λ_info >= min
            upside_down = "--adaptive-min" in adaptive
            expect = fs.REFUSE if all_zero or upside_down else fs.EITHER
            label = (
                " ".join(tail)
                + (" (every loss weight 0)" if all_zero else "")
                + (" (min > max)" if upside_down else "")
            )
        else:
            pos, split = base["arrays"]["position"], base["arrays"]["split"]
            ctx = data.draw(st.sampled_from([1, 5, 12, 64]))
            min_ctx = data.draw(st.sampled_from([1, ctx // 2 or 1, ctx]))
            n_train = int(((split == 0) & (pos >= min_ctx)).sum())
            n_val = int(((split == 1) & (pos >= min_ctx)).sum())
            tail = ["--ctx", str(ctx), "--min-ctx", str(min_ctx)]
            expect = fs.REFUSE if n_train == 0 or n_val == 0 else fs.EITHER
            label = f"--ctx {ctx} --min-ctx {min_ctx}: {n_train} train / {n_val} val sequences"
        fz.check([*argv, *tail], work, expect, label, outputs=(work / "run",), documented=(3,))


# ----------------------------------------------------------------------------- damaged side files


@fuzz_settings(0.5)
@given(
    data=st.data(),
    name=st.sampled_from(["texts.jsonl", "articles.jsonl"]),
    damage=st.sampled_from(
        ["missing", "empty", "garbage", "truncated", "line-dropped", "not-json", "wrong-type", "dir"]
    ),
    rehash=st.booleans(),
    via_view=st.booleans(),
)
def test_damaged_tables(base, view_base, data, name, damage, rehash, via_view):
    """A dataset's texts.jsonl or articles.jsonl missing, empty, garbage, cut short, a line dropped, not JSON
    or of the wrong type, or a folder; with meta.json's content hash left alone (every command must refuse) or
    rewritten to match the damaged file (the commands that read it must refuse: filter reads both, coherence
    --by-topic the article table); also read through a filtered view of the damaged dataset."""
    fz = Fuzz("damaged_tables", base, "damage_ignored")
    with fz.example() as work:
        ds = copy_dataset(base, work)
        p = ds / name
        lines = p.read_text().splitlines()
        if damage == "missing":
            p.unlink()
        elif damage == "dir":
            p.unlink()
            p.mkdir()
        elif damage == "empty":
            p.write_bytes(b"")
        elif damage == "garbage":
            p.write_bytes(data.draw(st.binary(min_size=1, max_size=200)).replace(b"\n", b" ") + b"\n")
        elif damage == "truncated":
            blob = p.read_bytes()
            p.write_bytes(blob[: data.draw(st.integers(1, len(blob) - 2))])
        elif damage == "line-dropped":
            del lines[data.draw(st.integers(0, len(lines) - 1))]
            p.write_text("\n".join(lines) + "\n")
        elif damage == "not-json":
            lines[data.draw(st.integers(0, len(lines) - 1))] = data.draw(st.sampled_from(["{", "[1,", "nope", "\x00"]))
            p.write_text("\n".join(lines) + "\n")
        else:
            lines[data.draw(st.integers(0, len(lines) - 1))] = data.draw(
                st.sampled_from(
                    ["null", "1", "[]", '{"x": 1}', '"text"', "{}"]
                    if name == "articles.jsonl"
                    else ["null", "1", "[]", "{}"]
                )
            )
            p.write_text("\n".join(lines) + "\n")
        hashed = rehash and p.is_file()
        if hashed:
            _rehash(ds)
        label = f"{name} {damage}" + (" (meta.json rehashed to match)" if hashed else "")
        target = ds
        if via_view:
            view = work / "view"
            shutil.copytree(view_base, view)
            _fix_view_parent(view, ds)
            if hashed:  # the view records its parent's hash: re-pointed too, as one who rehashed would
                meta = json.loads((view / "meta.json").read_text())
                meta["parent"]["content_hash"] = json.loads((ds / "meta.json").read_text())["content_hash"]
                (view / "meta.json").write_text(json.dumps(meta))
                _rehash_view(view)
            target = view
            label += " via a filtered view"
        every = fs.REFUSE if not hashed else fs.EITHER
        out = work / "filtered"
        # a view has its own article table: its parent's is read by nothing a filter of the view does
        own_table = via_view and name == "articles.jsonl" and hashed
        fz.check(["filter", str(target), "--out", str(out), "--min-coherence", "0.1"], work,
                 fs.EITHER if own_table else fs.REFUSE, label, outputs=(out,))  # fmt: skip
        by_topic = fs.REFUSE if (name == "articles.jsonl" or not hashed) else fs.EITHER
        if via_view and name == "articles.jsonl" and hashed:
            by_topic = fs.EITHER  # the view has its own article table
        fz.check(["coherence", str(target), "--by-topic", "--json"], work, by_topic, label)
        fz.check(["inspect", str(target), "--json"], work, every, label)
        fz.check(["evaluate", str(base["run"]), "--dataset", str(target), "--json"], work, every, label)


def _rehash_view(view: Path) -> None:
    own = hashlib.sha256()
    for name in VIEW_FILES:
        own.update(name.encode() + b"\0")
        own.update((view / name).read_bytes())
    meta = json.loads((view / "meta.json").read_text())
    meta["content_hash"] = hashlib.sha256(
        f"view:{own.hexdigest()}:{meta['parent']['content_hash']}".encode()
    ).hexdigest()
    (view / "meta.json").write_text(json.dumps(meta))
    shutil.rmtree(view / "cache", ignore_errors=True)


# ----------------------------------------------------------------------------- user files in output folders, rerun

RERUN_COMMANDS = ("filter", "build-data", "sequences", "import-checkpoint", "train", "import-npz", "synth")
USER_FILES = ("my_notes.md", "plots/fig1.png", ".hidden", "cache/mine.txt", "notes/a/b/c.txt", "my_notes.md~")


def rerun_argv(cmd: str, base: dict, work: Path, out: Path, variant: int) -> list[str]:
    """``cmd`` writing ``out``; ``variant`` 0 = the first run's options, 1/2 = changed ones."""
    ds = str(base["ds"])
    if cmd == "filter":
        return ["filter", ds, "--out", str(out), "--min-coherence", ["0.1", "0.2", "0.1"][variant]] + (
            ["--materialize"] if variant == 2 else []
        )
    if cmd == "build-data":
        corpus = work / "c.jsonl"
        if not corpus.exists():
            _write_corpus(corpus, TINY_CORPUS)
        return ["build-data", "--corpus", str(corpus), "--out", str(out), *REAL_ENCODER_ARGS] + [
            [],
            ["--force"],
            ["--seed", "3"],
        ][variant]
    if cmd == "sequences":
        return ["sequences", ds, "--ctx", ["3", "4", "3"][variant], "--out", str(out)]
    if cmd == "import-checkpoint":
        return ["import-checkpoint", str(base["root"] / "legacy.pt"), "--factory", f"py:{base['factory']}:build",
                "--out", str(out), "--no-export"] + [[], ["--name", "other"], ["--dataset", ds]][variant]  # fmt: skip
    if cmd == "train":
        changed = [[], ["--seed", "1"], ["--lr", "0.002"]][variant]
        return ["train", "--model", "amn", "--dataset", ds, "--epochs", "1", "--batch-size", "16", "--out", str(out),
                "--quiet", "--no-kill-switches", "--model-config", TINY_MODEL, *changed]  # fmt: skip
    if cmd == "import-npz":
        return ["import-npz", str(base["root"] / "base.npz"), "--out", str(out), "--quiet"] + [[], ["--seed", "1"], []][
            variant
        ]
    return ["synth", "--out", str(out), "--n-chunks", "60", "--dim", "4", "--quiet"] + [[], ["--seed", "1"], []][
        variant
    ]


@fuzz_settings(0.5)
@given(
    cmd=st.sampled_from(RERUN_COMMANDS),
    files=st.lists(st.sampled_from(USER_FILES), min_size=1, max_size=3, unique=True),
    edit_own=st.booleans(),
    link=st.booleans(),
    variant=st.sampled_from([0, 0, 1, 2]),
)
def test_output_rerun(base, cmd, files, edit_own, link, variant):
    """An output folder written by lvm, then files the user adds to it (notes, plots, a hidden file, a file
    under cache/, a nested folder, a link to a file of theirs outside), or a file of lvm's the user edited; the
    same command (or the same with other options) run again: every user file survives unchanged, or the
    command refuses (and then changes nothing)."""
    fz = Fuzz("output_rerun", base)
    with fz.example() as work:
        out = work / "out"
        first = rerun_argv(cmd, base, work, out, 0)
        res = run_cli(first, work)
        if res["rc"] not in (0, 3):
            fz.check(first, work, fs.EITHER, "first run", outputs=(out,))
            return
        keep = []
        for name in files:
            p = out / name
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"the user's " + name.encode())
            keep.append(p)
        if link:
            mine = work / "mine.txt"
            mine.write_text("outside, the user's")
            (out / "link-to-mine.txt").symlink_to(mine)
            keep += [out / "link-to-mine.txt", mine]
        if edit_own:
            own = sorted(
                p
                for p in out.rglob("*")
                if p.is_file() and not p.name.startswith(".") and p.suffix in (".json", ".md", ".log", ".jsonl")
            )
            if own:
                with open(own[0], "ab") as fh:
                    fh.write(b"\n")
                keep.append(own[0])
        label = f"{cmd} rerun (variant {variant}) after the user added {files}" + (" and a link" if link else "")
        label += f", edited {keep[-1].name}" if edit_own and keep else ""
        second = rerun_argv(cmd, base, work, out, variant)
        fz.check(second, work, fs.EITHER, label, outputs=(out,), keep=tuple(keep), documented=(3,))


# ----------------------------------------------------------------------------- tampered caches


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    """A private $LVM_CACHE_DIR holding the packaged encoder's ONNX export (copied from the user's cache when
    there is one, else exported once), and the encoder's fingerprint."""
    import lvm.data.encoders as enc

    root = tmp_path_factory.mktemp("fuzz-onnx-cache")
    theirs = enc.onnx_cache_root()
    if theirs.is_dir():
        shutil.copytree(theirs, root / "onnx", ignore=shutil.ignore_patterns(".*"))
    old = os.environ.get("LVM_CACHE_DIR")
    os.environ["LVM_CACHE_DIR"] = str(root)
    enc._CACHE.clear()
    try:
        res = _must(["fingerprint"], root)
    finally:
        enc._CACHE.clear()
        if old is None:
            os.environ.pop("LVM_CACHE_DIR", None)
        else:
            os.environ["LVM_CACHE_DIR"] = old
    folders = [f for f in (root / "onnx").iterdir() if f.is_dir() and not f.name.startswith(".")]
    return {"root": root, "folder": folders[0].name, "fingerprint": res["stdout"].strip()}


@pytest.fixture(scope="module", autouse=True)
def _private_lvm_cache(onnx_cache):
    """Every command of the fuzz uses the private export cache (never the user's ~/.cache/lvm)."""
    old = os.environ.get("LVM_CACHE_DIR")
    os.environ["LVM_CACHE_DIR"] = str(onnx_cache["root"])
    yield
    if old is None:
        os.environ.pop("LVM_CACHE_DIR", None)
    else:
        os.environ["LVM_CACHE_DIR"] = old


def _run_with_cache(cache: Path):
    """run_cli with $LVM_CACHE_DIR = ``cache`` and no encoder loaded yet (as a new process would be)."""

    def runner(argv: list[str], cwd: Path) -> dict:
        import lvm.data.encoders as enc

        old = os.environ.get("LVM_CACHE_DIR")
        os.environ["LVM_CACHE_DIR"] = str(cache)
        enc._CACHE.clear()
        try:
            return run_cli(argv, cwd)
        finally:
            enc._CACHE.clear()
            if old is None:
                os.environ.pop("LVM_CACHE_DIR", None)
            else:
                os.environ["LVM_CACHE_DIR"] = old

    return runner


@fuzz_settings(0.05)
@given(
    data=st.data(),
    op=st.sampled_from(
        [
            "truncate",
            "flip",
            "flip",
            "zeros",
            "append",
            "garbage",
            "record",
            "record-deep",
            "model-dir",
            "model-dangling",
            "model-devnull",
            "record-missing",
            "record-dir",
        ]
    ),  # fmt: skip
    rewrite=st.booleans(),
)
def test_onnx_cache(base, onnx_cache, data, op, rewrite):
    """The encoder's ONNX export cache ($LVM_CACHE_DIR/onnx): model.onnx truncated, bytes flipped or zeroed,
    junk appended, replaced by garbage, a folder, a dangling link or /dev/null; export.json with extreme
    numbers, nested 100k deep, missing or a folder; with the record rewritten to match the damaged model (size
    and SHA-256) or not. ``lvm fingerprint`` must give the encoder's fingerprint (exported again if need be) or
    refuse in one line; it must never compute vectors with a damaged model."""
    fz = Fuzz("onnx_cache", base, "tampered_cache")
    with fz.example() as work:
        cache = work / "cache"
        shutil.copytree(onnx_cache["root"], cache)
        folder = cache / "onnx" / onnx_cache["folder"]
        model, record = folder / "model.onnx", folder / "export.json"
        rec = json.loads(record.read_text())
        blob = model.read_bytes()
        label = op
        if op == "truncate":
            k = data.draw(st.integers(0, len(blob) - 1))
            model.write_bytes(blob[:k])
            label = f"model.onnx truncated to {k} bytes"
        elif op in ("flip", "zeros"):
            i = data.draw(st.integers(0, len(blob) - 64))
            with open(model, "r+b") as fh:
                fh.seek(i)
                fh.write(bytes(16) if op == "zeros" else bytes([blob[i] ^ data.draw(st.integers(1, 255))]))
            label = f"model.onnx {op} at byte {i}"
        elif op == "append":
            with open(model, "ab") as fh:
                fh.write(b"junk" * 8)
        elif op == "garbage":
            model.write_bytes(data.draw(st.binary(min_size=1, max_size=512)))
        elif op in ("record", "record-deep"):
            raw = (
                data.draw(fs.deep_edit(rec))[0]
                if op == "record-deep"
                else data.draw(fs.extreme_edit(rec, ("bytes", "sha256")))[0]
            )
            record.write_bytes(raw)
            label = f"export.json: {raw[:80]!r}"
            rewrite = False
        elif op == "model-dir":
            model.unlink()
            model.mkdir()
        elif op == "model-dangling":
            model.unlink()
            model.symlink_to(folder / "nowhere.onnx")
        elif op == "model-devnull":
            model.unlink()
            model.symlink_to("/dev/null")
        elif op == "record-missing":
            record.unlink()
        else:
            record.unlink()
            record.mkdir()
        if rewrite and model.is_file() and record.is_file() and not op.startswith("record"):
            rec.update(bytes=model.stat().st_size, sha256=hashlib.sha256(model.read_bytes()).hexdigest())
            record.write_text(json.dumps(rec))
            label += " (record rewritten to match)"
        want = onnx_cache["fingerprint"]

        def sane(res):
            got = res["stdout"].strip()
            return (
                None
                if got == want
                else f"fingerprint {got[:16]}… from the damaged cache, the encoder's is {want[:16]}…"
            )

        fz.check(["fingerprint"], work, fs.EITHER, label, outputs=(cache,), sane=sane,
                 notices=("lvm: the ONNX export cache",), runner=_run_with_cache(cache))  # fmt: skip


@pytest.fixture(scope="module")
def recall_reference(base) -> dict | None:
    """The oracle_recall metrics of the untouched base dataset (one gate-suite run)."""
    work = base["scratch"] / "recall-reference"
    shutil.copytree(base["ds"], work / "ds")
    res = run_pytest([f"--dataset={work / 'ds'}", f"--results={work / 'r.json'}", "-k", "oracle_recall"], work)
    if res["rc"] != 0 or not (work / "r.json").is_file():
        return None
    return _gate_metrics(work / "r.json", "oracle_recall")


def _gate_metrics(path: Path, gate: str) -> dict | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    for r in doc.get("results", []):
        if r.get("gate") == gate:
            return {k: v for k, v in r.get("metrics", {}).items() if k.startswith("recall")}
    return None


@fuzz_settings(0.05)
@given(
    data=st.data(),
    op=st.sampled_from(
        ["truncate", "flip", "zeros", "garbage", "other-dataset", "empty", "index.json", "index.json-deep", "dir"]
    ),
)
def test_faiss_index(base, recall_reference, data, op):
    """A dataset's FAISS index: index.faiss truncated, flipped, zeroed, garbage, empty, a folder, or another
    dataset's (same shape) with this one's index.json; index.json with extreme numbers or nested 100k deep.
    The gate suite's oracle_recall must rebuild or refuse it, and never report recall computed on a damaged
    index (its metrics are those of the untouched dataset)."""
    fz = Fuzz("faiss_index", base, "tampered_cache")
    with fz.example() as work:
        ds = copy_dataset(base, work)
        idx, params = ds / "index.faiss", ds / "index.json"
        blob = idx.read_bytes()
        label = op
        if op == "truncate":
            k = data.draw(st.integers(0, len(blob) - 1))
            idx.write_bytes(blob[:k])
            label = f"index.faiss truncated to {k} bytes"
        elif op in ("flip", "zeros"):
            i = data.draw(st.integers(0, len(blob) - 16))
            b = bytearray(blob)
            b[i : i + (16 if op == "zeros" else 1)] = (
                bytes(16) if op == "zeros" else bytes([blob[i] ^ data.draw(st.integers(1, 255))])
            )
            idx.write_bytes(bytes(b))
            label = f"index.faiss {op} at byte {i}"
        elif op == "garbage":
            idx.write_bytes(data.draw(st.binary(min_size=1, max_size=256)))
        elif op == "other-dataset":
            shutil.copyfile(base["other"] / "index.faiss", idx)
        elif op == "empty":
            idx.write_bytes(b"")
        elif op == "dir":
            idx.unlink()
            idx.mkdir()
        else:
            doc = json.loads(params.read_text())
            raw = data.draw(fs.deep_edit(doc))[0] if op.endswith("deep") else data.draw(fs.extreme_edit(doc))[0]
            params.write_bytes(raw)
            label = f"index.json: {raw[:80]!r}"
        results = work / "out" / "r.json"
        want = recall_reference

        def sane(res):
            got = _gate_metrics(results, "oracle_recall")
            if want is None or got is None:
                return None
            bad = {k: (got.get(k), v) for k, v in want.items() if not _close(got.get(k), v, 1e-9)}
            return f"oracle_recall from the damaged index: {bad}" if bad else None

        def judge_red(res, sane=sane):
            if res["rc"] == 1:
                return "oracle_recall RED on the damaged index (the untouched data is GREEN): " + (sane(res) or "")
            return sane(res)

        outputs = (results.parent, idx, params, ds / "cache")
        argv = [f"--dataset={ds}", f"--results={results}", "-k", "oracle_recall"]
        runner = _pytest_as_success(judge_red)
        fz.check(
            argv, work, fs.EITHER, label, outputs=outputs, documented=(1,), runner=runner, roots=[base["root"], ds]
        )


def _pytest_as_success(check):
    """run_pytest whose exit 1 (a RED gate) is judged by ``check`` as a wrong result rather than a run."""

    def runner(argv, cwd):
        res = run_pytest(argv, cwd)
        if res["rc"] == 1 and not res["crash"]:
            res["wrong"] = check(res)
        return res

    return runner
