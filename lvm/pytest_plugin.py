"""The lvm pytest plugin: options, session fixtures, stoplights, the results file.

``pytest gates/ --checkpoint=RUN --dataset=DIR`` runs every gate in ``gates/`` parameterized over
checkpoints × datasets. Each gate test calls ``lvm.gates`` and hands the result to ``gate_status``:
GREEN passes, AMBER passes with a ``GateWarning`` (fails under ``--gates-strict``), RED fails with
the gate's message, SKIP skips with its reason. A gate that crashes is RED. The controller collects
every result (also from xdist workers, through ``user_properties``), prints one stoplight table,
runs the regression check against ``--baseline-results`` and writes the results file atomically.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

RESULT_PROPERTY = "lvm_gate_result"
DEFAULT_RESULTS = "reports/gate_results.json"


class GateWarning(UserWarning):
    """An AMBER gate: passes, but look before you ship."""


def pytest_addoption(parser) -> None:
    group = parser.getgroup("lvm", "lvm gates (latent vector model evaluation)")
    group.addoption("--checkpoint", action="append", default=[], metavar="PATH",
                    help="run folder or checkpoint file to gate (repeatable)")
    group.addoption("--dataset", action="append", default=[], metavar="DIR",
                    help="dataset folder (built by `lvm build-data` or `lvm import-npz`; repeatable)")
    group.addoption("--ood-dataset", default=None, metavar="DIR", help="separate out-of-distribution dataset")
    group.addoption("--baseline-dataset", default=None, metavar="DIR", help="dataset that worked, for coherence drift")
    group.addoption("--baseline-results", default=None, metavar="FILE", help="results file to check regressions against")
    group.addoption("--gate-profile", default=None, metavar="NAME|FILE", help="gate profile (default: from dataset metadata)")
    group.addoption("--gates-strict", action="store_true", default=False, help="AMBER gates fail")
    group.addoption("--results", default=None, metavar="FILE", help=f"where to write the results JSON (default {DEFAULT_RESULTS})")
    group.addoption("--nprobe", type=int, default=None, help="IVF lists searched by the retrieval gate (default: the index's)")
    group.addoption("--latency-threads", type=int, default=1, help="torch threads for the latency gate (default 1)")


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "lvm_gate(id): an lvm gate test")
    config._lvm_results = []  # filled on the controller from every report


# ----------------------------------------------------------------------------- parametrization


def _label(path: str) -> str:
    p = Path(path)
    return p.name if p.is_dir() else f"{p.parent.name}/{p.stem}"


def pytest_generate_tests(metafunc) -> None:
    opt = metafunc.config.getoption
    if "dataset_path" in metafunc.fixturenames:
        datasets = opt("--dataset") or [None]
        metafunc.parametrize("dataset_path", datasets, ids=[_label(d) if d else "no-dataset" for d in datasets], scope="session")
    if "checkpoint_path" in metafunc.fixturenames:
        ckpts = opt("--checkpoint") or [None]
        metafunc.parametrize("checkpoint_path", ckpts, ids=[_label(c) if c else "no-checkpoint" for c in ckpts], scope="session")


# ----------------------------------------------------------------------------- session state


class GateSession:
    """Everything loaded once per session: datasets, indexes, profiles, models, predictions, baselines."""

    def __init__(self, config):
        self.config = config
        self._cache: dict = {}

    def _once(self, key, make):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def dataset(self, path):
        from lvm.data.datasets import open_dataset

        return self._once(("ds", str(path)), lambda: open_dataset(path))

    def profile(self, ds):
        from lvm.profiles import profile_for_dataset

        return self._once(("profile", str(ds.path)), lambda: profile_for_dataset(ds.meta, self.config.getoption("--gate-profile")))

    def index(self, ds):
        from lvm.data.index import load_or_build_index

        return self._once(("index", str(ds.path)), lambda: load_or_build_index(ds)[0])

    def ood_view(self, ds, ctx, min_ctx):
        """The OOD sequences: a separate --ood-dataset (its OOD split, or all its sequences when it
        was built without splits, i.e. all in train), else the dataset's own OOD split."""
        other = self.config.getoption("--ood-dataset")
        if not other:
            return ds.sequences("ood", ctx, min_ctx)
        ood_ds = self.dataset(other)
        view = ood_ds.sequences("ood", ctx, min_ctx)
        return view if len(view) else ood_ds.sequences("train", ctx, min_ctx)

    def checkpoint(self, path, ds):
        from lvm.gates import checkpoint_integrity

        name = _label(path)
        return self._once(("ckpt", str(path), str(ds.path)), lambda: checkpoint_integrity(path, ds, self.profile(ds), name))

    def model_eval(self, path, ds, split):
        from lvm.evaluation import ModelEval

        def make():
            _, model, meta = self.checkpoint(path, ds)
            if model is None:
                return None
            ctx, min_ctx = int(meta["ctx"]), int(meta.get("min_ctx", 1))
            view = self.view(ds, split, ctx, min_ctx)
            return ModelEval(model, view, _label(path)) if len(view) else None

        return self._once(("eval", str(path), str(ds.path), split), make)

    def baselines(self, ds, ctx, min_ctx):
        """The null baselines (copy-last, context mean, ridge fitted once per dataset and context)."""
        from lvm.models.baselines import ContextMean, CopyLast, Ridge

        def fit_ridge():
            # closed form on a seeded sample: XᵀX costs N·(ctx·D)², so 20k sequences bound it at any size
            n_fit = self.profile(ds).gate("beats_baselines").get("ridge_fit_sample")
            ridge = Ridge(ds.dim, ctx)
            train, val = ds.sequences("train", ctx, min_ctx), ds.sequences("val", ctx, min_ctx)
            rng = np.random.default_rng(0)
            pick = lambda v: np.sort(rng.choice(len(v), size=min(n_fit or len(v), len(v)), replace=False))  # noqa: E731
            batches = lambda v, idx: (v.batch(idx[s : s + 4096]) for s in range(0, len(idx), 4096))  # noqa: E731
            ridge.fit(batches(train, pick(train)), batches(val, pick(val)))
            return ridge

        ridge = self._once(("ridge", str(ds.path), ctx, min_ctx), fit_ridge)
        return {"copy_last": CopyLast(), "context_mean": ContextMean(), "ridge": ridge}

    def view(self, ds, split, ctx, min_ctx):
        """One SequenceView per (dataset, split, ctx, min_ctx): models on it share its target vectors."""
        make = (lambda: self.ood_view(ds, ctx, min_ctx)) if split == "ood" else (lambda: ds.sequences(split, ctx, min_ctx))
        return self._once(("view", str(ds.path), split, ctx, min_ctx), make)


@pytest.fixture(scope="session")
def gate_session(request) -> GateSession:
    return GateSession(request.config)


@pytest.fixture(scope="session")
def lvm_dataset(gate_session, dataset_path):
    if dataset_path is None:
        pytest.skip("no --dataset given")
    return gate_session.dataset(dataset_path)


@pytest.fixture(scope="session")
def gate_profile(gate_session, lvm_dataset):
    return gate_session.profile(lvm_dataset)


@pytest.fixture(scope="session")
def lvm_checkpoint(gate_session, lvm_dataset, checkpoint_path):
    """(integrity result, model or None, meta or None) of the checkpoint on the dataset."""
    if checkpoint_path is None:
        pytest.skip("no --checkpoint given")
    return gate_session.checkpoint(checkpoint_path, lvm_dataset)


def _model_eval(gate_session, lvm_dataset, checkpoint_path, lvm_checkpoint, split):
    if lvm_checkpoint[1] is None:
        pytest.skip(f"checkpoint failed integrity: {lvm_checkpoint[0].message}")
    ev = gate_session.model_eval(checkpoint_path, lvm_dataset, split)
    if ev is None:
        pytest.skip(f"no {split} sequences for this checkpoint's context")
    return ev


@pytest.fixture(scope="session")
def val_eval(gate_session, lvm_dataset, checkpoint_path, lvm_checkpoint):
    return _model_eval(gate_session, lvm_dataset, checkpoint_path, lvm_checkpoint, "val")


@pytest.fixture(scope="session")
def ood_eval(gate_session, lvm_dataset, checkpoint_path, lvm_checkpoint):
    return _model_eval(gate_session, lvm_dataset, checkpoint_path, lvm_checkpoint, "ood")


@pytest.fixture
def gate_status(request):
    """Record a GateResult and turn it into the test outcome (GREEN/AMBER/RED/SKIP)."""
    from lvm.gates import AMBER, RED, SKIP

    def check(result, per_sequence=None):
        data = result.to_dict()
        if per_sequence is not None and len(per_sequence) <= 200_000:
            data["per_sequence"] = [round(float(v), 5) for v in per_sequence]
        request.node.user_properties.append((RESULT_PROPERTY, _comparable(request, data)))
        if result.status == SKIP:
            pytest.skip(result.message)
        if result.status == RED:
            pytest.fail(result.message, pytrace=False)
        if result.status == AMBER:
            if request.config.getoption("--gates-strict"):
                pytest.fail(f"{result.message} (AMBER fails under --gates-strict)", pytrace=False)
            warnings.warn(GateWarning(result.message))
        return result

    return check


def _comparable(request, data: dict) -> dict:
    """Attach the comparability key (encoder fingerprint, dataset hash, profile, hardware class)."""
    from lvm.report.results import comparability, hardware_class

    gs = request.getfixturevalue("gate_session")
    ds_path = request.node.callspec.params.get("dataset_path") if hasattr(request.node, "callspec") else None
    fp = h = None
    pname, pver = "unknown", 0
    if ds_path:
        ds = gs.dataset(ds_path)
        fp, h = ds.encoder_fingerprint, ds.content_hash
        prof = gs.profile(ds)
        pname, pver = prof.name, prof.version
    data["comparability"], data["comparability_key"] = comparability(fp, h, pname, pver, hardware_class())
    data["profile"] = pname
    data["nodeid"] = request.node.nodeid
    ckpt = request.node.callspec.params.get("checkpoint_path") if hasattr(request.node, "callspec") else None
    data["checkpoint_path"] = str(ckpt) if ckpt else None
    data["dataset_path"] = str(ds_path) if ds_path else None
    return data


# ----------------------------------------------------------------------------- collection of results


def _unrecorded(report, status: str, message: str) -> dict:
    """A gate test that ended without recording a result (crashed or skipped), as a result row."""
    from lvm.gates import GateResult

    gate = report.nodeid.split("::")[-1].split("[")[0].removeprefix("test_")
    return {**GateResult(gate, status, message=message).to_dict(), "nodeid": report.nodeid}


def pytest_runtest_logreport(report) -> None:
    """Runs on the controller for every report (also from xdist workers)."""
    config = _CONFIG.get("config")
    if config is None:
        return
    props = dict(report.user_properties) if report.user_properties else {}
    is_gate = "/gates/" in f"/{report.nodeid}" and report.when in ("setup", "call")
    if RESULT_PROPERTY in props and report.when == "call":
        config._lvm_results.append(props[RESULT_PROPERTY])
    elif report.failed and RESULT_PROPERTY not in props and is_gate:
        # a gate that crashed is RED, never silently missing
        last = str(report.longrepr).splitlines()[-1][:300] if report.longrepr else ""
        config._lvm_results.append(_unrecorded(report, "RED", f"gate crashed: {last}"))
    elif report.skipped and is_gate:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        config._lvm_results.append(_unrecorded(report, "SKIP", reason.removeprefix("Skipped: ")))


_CONFIG: dict = {}


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session) -> None:
    _CONFIG["config"] = session.config


def _is_controller(config) -> bool:
    return not hasattr(config, "workerinput")


def pytest_sessionfinish(session, exitstatus) -> None:
    config = session.config
    if not _is_controller(config) or not config._lvm_results:
        return
    from lvm.profiles import load_profile
    from lvm.report.results import build_document, compare, read_results, write_results

    results = [r for r in config._lvm_results if r.get("status") != "SKIP" or r.get("gate")]
    profile_name = next((r.get("profile") for r in results if r.get("profile") and r.get("profile") != "unknown"), None)
    profile = load_profile(profile_name) if profile_name else None
    base_path = config.getoption("--baseline-results")
    if base_path:
        base = read_results(base_path)
        new = {"results": results}
        regs = compare(new, base, (profile.data.get("regression") if profile else None))
        for r in regs:
            d = r.to_dict()
            d["comparability_key"] = None
            results.append(d)
        config._lvm_regressions = regs
        if any(r.status == "RED" for r in regs):
            session.exitstatus = 1
    doc = build_document(results, profile.name if profile else "unknown", profile.version if profile else 0)
    path = write_results(config.getoption("--results") or DEFAULT_RESULTS, doc)
    config._lvm_results_path = path


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if not _is_controller(config) or not config._lvm_results:
        return
    tr = terminalreporter
    rows = config._lvm_results
    colour = {"GREEN": {"green": True}, "AMBER": {"yellow": True}, "RED": {"red": True, "bold": True}, "SKIP": {}}
    tr.section("lvm gates: stoplights")
    w_gate = max(len("gate"), *(len(r["gate"] + (f"/{r['split']}" if r.get("split") else "")) for r in rows))
    w_ck = max(len("checkpoint"), *(len(str(r.get("checkpoint") or "-")) for r in rows))
    w_ds = max(len("dataset"), *(len(str(r.get("dataset") or "-")) for r in rows))
    tr.write_line(f"{'gate':<{w_gate}}  {'checkpoint':<{w_ck}}  {'dataset':<{w_ds}}  status  headline")
    from lvm.gates.spec import ORDER

    for r in sorted(rows, key=lambda r: (r.get("checkpoint") is not None, str(r.get("checkpoint")), ORDER.get(r["gate"], len(ORDER)))):
        gate = r["gate"] + (f"/{r['split']}" if r.get("split") else "")
        head = _headline(r)
        tr.write(f"{gate:<{w_gate}}  {str(r.get('checkpoint') or '-'):<{w_ck}}  {str(r.get('dataset') or '-'):<{w_ds}}  ")
        tr.write(f"{r['status']:<6}", **colour.get(r["status"], {}))
        tr.write_line(f"  {head}")
    counts = {s: sum(r["status"] == s for r in rows) for s in ("GREEN", "AMBER", "RED", "SKIP")}
    tr.write_line(" ".join(f"{k} {v}" for k, v in counts.items()))
    path = getattr(config, "_lvm_results_path", None)
    if path:
        tr.write_line(f"results: {path}")


def _headline(r: dict) -> str:
    """The one number a reader wants per gate."""
    m = r.get("metrics") or {}
    if r["status"] in ("AMBER", "RED") and r.get("message"):
        return r["message"].split(": ", 1)[-1][:110]
    keys = {"val_cosine": ("val_cosine", "val_cosine_ci_low", "val_cosine_ci_high"), "ood_cosine": ("ood_cosine", "ood_cosine_ci_low", "ood_cosine_ci_high")}
    if r["gate"] in keys:
        v, lo, hi = (m.get(k) for k in keys[r["gate"]])
        if isinstance(v, float):
            return f"{v:.4f} [{lo:.4f}, {hi:.4f}]"
    from lvm.gates.spec import spec

    k = spec(r["gate"]).headline if spec(r["gate"]) else None
    if k and k in m and m[k] is not None:
        v = m[k]
        return f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
    if r["status"] == "SKIP":
        return (r.get("message") or "")[:100]
    return ""
