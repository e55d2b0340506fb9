"""The lvm pytest plugin: options, session fixtures, stoplights, the results file.

``pytest gates/ --checkpoint=SPEC --dataset=DIR`` (or ``pytest --pyargs lvm.gatesuite ...`` from an
installed wheel) runs every gate parameterized over checkpoints × datasets. A gate test is any test
that uses the ``gate_status`` fixture: it calls ``lvm.gates`` and hands the result to it. GREEN
passes, AMBER passes with a ``GateWarning`` (fails under ``--gates-strict``), RED fails with the
gate's message, SKIP skips with its reason; a gate that crashes is RED. Each gate test carries the
markers of its ``GateSpec`` (``lvm_gate``, ``data`` / ``model``, ``latency``), so ``-m data`` works.

The plugin is one object registered per session (``LvmGatesPlugin``, kept in ``config.stash``): it
collects every result (also from xdist workers, through ``user_properties``), prints one stoplight
table, runs the regression check against ``--baseline-results`` and writes the results file
atomically, also when the regression check cannot run. A misused option is a ``pytest.UsageError``.
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from pathlib import Path

import pytest

RESULT_PROPERTY = "lvm_gate_result"
WHERE_PROPERTY = "lvm_gate_where"
STATUS_PROPERTY = "lvm_gate_status"
PER_SEQUENCE_LIMIT = 200_000  # per-sequence scores kept for the paired regression check
DEFAULT_RESULTS = "reports/gate_results.json"
PLUGIN_KEY = pytest.StashKey["LvmGatesPlugin"]()


class GateWarning(UserWarning):
    """An AMBER gate: passes, but look before you ship."""


def pytest_addoption(parser) -> None:
    group = parser.getgroup("lvm", "lvm gates (latent vector model evaluation)")
    group.addoption(
        "--checkpoint",
        action="append",
        default=[],
        metavar="SPEC",
        help="model to gate (repeatable): run folder, NAME.json/.safetensors, NAME.pt2 (torch.export), "
        "or py:file.py:factory / py:pkg.module:factory (imports and runs that code)",
    )
    group.addoption(
        "--model-card",
        default=None,
        metavar="FILE",
        help="JSON model card for py: / .pt2 checkpoints that do not carry their own",
    )
    group.addoption(
        "--predictions",
        action="append",
        default=[],
        metavar="DIR",
        help="predictions folder (per-split .npy aligned to `lvm sequences`; repeatable)",
    )
    group.addoption(
        "--dataset",
        action="append",
        default=[],
        metavar="DIR",
        help="dataset folder (built by `lvm build-data` or `lvm import-npz`; repeatable)",
    )
    group.addoption("--ood-dataset", default=None, metavar="DIR", help="separate out-of-distribution dataset")
    group.addoption(
        "--ood-split",
        default=None,
        choices=("train", "val", "ood"),
        help="score only this split of --ood-dataset (default: all of it)",
    )
    group.addoption("--baseline-dataset", default=None, metavar="DIR", help="dataset that worked, for coherence drift")
    group.addoption(
        "--baseline-results", default=None, metavar="FILE", help="results file to check regressions against"
    )
    group.addoption(
        "--gate-profile", default=None, metavar="NAME|FILE", help="gate profile (default: from dataset metadata)"
    )
    group.addoption("--gates-strict", action="store_true", default=False, help="AMBER gates fail")
    group.addoption(
        "--results", default=None, metavar="FILE", help=f"where to write the results JSON (default {DEFAULT_RESULTS})"
    )
    group.addoption(
        "--nprobe", type=int, default=None, help="IVF lists searched by the retrieval gate (default: the index's)"
    )
    group.addoption("--latency-threads", type=int, default=1, help="torch threads for the latency gate (default 1)")


def _check_options(config) -> None:
    """Misused options fail the session before any gate runs, in one line."""
    opt = config.getoption
    _check_paths_exist(opt)
    _check_files_load(opt)
    for name in ("--nprobe", "--latency-threads"):
        if opt(name) is not None and opt(name) < 1:
            raise pytest.UsageError(f"{name} must be at least 1; got {opt(name)}")


def _check_paths_exist(opt) -> None:
    """Files and folders named by options exist."""
    for name in ("--baseline-results", "--model-card"):
        if opt(name) and not Path(opt(name)).is_file():
            raise pytest.UsageError(f"{name}: file {opt(name)} not found")
    for name in ("--ood-dataset", "--baseline-dataset"):
        if opt(name) and not Path(opt(name)).is_dir():
            raise pytest.UsageError(f"{name}: folder {opt(name)} not found")
    for d in opt("--dataset") + opt("--predictions"):
        if not Path(d).is_dir():
            raise pytest.UsageError(f"--dataset/--predictions: folder {d} not found")


def _check_profile_fits(profile, datasets: list) -> None:
    """A profile calibrated for another encoder or dimension than a --dataset's is a misused option."""
    import json

    from lvm.profiles import check_fits

    for d in datasets:
        try:
            meta = json.loads((Path(d) / "meta.json").read_text())
        except (OSError, ValueError):
            continue  # an unreadable dataset is its gates' RED, with the reason
        if isinstance(meta, dict):
            check_fits(profile, meta)


def _check_files_load(opt) -> None:
    """The gate profile and the baseline results named by options can be read."""
    from lvm.errors import LvmError

    if opt("--gate-profile"):
        from lvm.profiles import load_profile

        try:
            profile = load_profile(opt("--gate-profile"))
            _check_profile_fits(profile, opt("--dataset"))
        except LvmError as exc:
            raise pytest.UsageError(f"--gate-profile: {exc}") from None
    if opt("--baseline-results"):
        from lvm.report.results import read_results

        try:
            read_results(opt("--baseline-results"))
        except LvmError as exc:
            raise pytest.UsageError(f"--baseline-results: {exc}") from None


def pytest_configure(config) -> None:
    from lvm.gates.spec import MARKERS

    config.addinivalue_line("markers", "lvm_gate(id): an lvm gate test (applied by the plugin)")
    for line in MARKERS.values():
        config.addinivalue_line("markers", line)
    if config.getoption("--checkpoint", None) is None:  # options not registered (plugin loaded late)
        return
    _check_options(config)
    plugin = LvmGatesPlugin(config)
    config.stash[PLUGIN_KEY] = plugin
    config.pluginmanager.register(plugin, "lvm_gates_session")


def plugin_of(config) -> LvmGatesPlugin:
    return config.stash[PLUGIN_KEY]


# ----------------------------------------------------------------------------- parametrization


def model_specs(config) -> list[str]:
    """Every model to gate: checkpoints (any spec) then predictions folders (``predictions:DIR``)."""
    return list(config.getoption("--checkpoint")) + [f"predictions:{p}" for p in config.getoption("--predictions")]


def _label(spec: str) -> str:
    from lvm.models.adapters import model_label

    if spec.startswith("predictions:"):
        return Path(spec.removeprefix("predictions:")).name
    return model_label(spec)


def pytest_generate_tests(metafunc) -> None:
    opt = metafunc.config.getoption
    if "dataset_path" in metafunc.fixturenames:
        datasets = opt("--dataset") or [None]
        metafunc.parametrize(
            "dataset_path", datasets, ids=[Path(d).name if d else "no-dataset" for d in datasets], scope="session"
        )
    if "checkpoint_path" in metafunc.fixturenames:
        ckpts = model_specs(metafunc.config) or [None]
        metafunc.parametrize(
            "checkpoint_path", ckpts, ids=[_label(c) if c else "no-checkpoint" for c in ckpts], scope="session"
        )


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

        return self._once(
            ("profile", str(ds.path)), lambda: profile_for_dataset(ds.meta, self.config.getoption("--gate-profile"))
        )

    def index(self, ds):
        from lvm.data.index import load_or_build_index

        return self._once(("index", str(ds.path)), lambda: load_or_build_index(ds)[0])

    def ood_view(self, ds, ctx, min_ctx):
        """The OOD sequences: every sequence of a separate --ood-dataset (all its splits: it is out of
        distribution as a whole; --ood-split narrows it), else the dataset's own OOD split. The
        cosine gates record which dataset and split they scored."""
        from lvm.data.datasets import ALL_SPLITS

        other = self.config.getoption("--ood-dataset")
        if not other:
            return ds.sequences("ood", ctx, min_ctx)
        return self.dataset(other).sequences(self.config.getoption("--ood-split") or ALL_SPLITS, ctx, min_ctx)

    def model(self, spec: str):
        """``(LoadedModel or None, load error or None)`` for a checkpoint spec, loaded once."""
        from lvm.errors import LvmError
        from lvm.models.adapters import load_model
        from lvm.models.predictions import load_predictions

        def make():
            card = self.config.getoption("--model-card")
            try:
                if spec.startswith("predictions:"):
                    return load_predictions(spec.removeprefix("predictions:"), None), None
                return load_model(spec, card if (spec.startswith("py:") or spec.endswith(".pt2")) else None), None
            except LvmError as exc:
                return None, str(exc)

        return self._once(("model", spec), make)

    def integrity(self, spec: str, ds):
        """The checkpoint_integrity result of a model on a dataset (computed once)."""
        from lvm.gates import checkpoint_integrity

        def make():
            loaded, error = self.model(spec)
            return checkpoint_integrity(
                loaded.card if loaded else None, ds, self.profile(ds), _label(spec), load_error=error
            )

        return self._once(("integrity", spec, str(ds.path)), make)

    def model_eval(self, spec: str, ds, split: str):
        """The ``ModelEval`` of a model on one split (None when it has no such sequences)."""
        from lvm.evaluation import ModelEval
        from lvm.models.predictions import check_alignment

        def make():
            loaded, _ = self.model(spec)
            card = loaded.card
            view = self.view(ds, split, card.ctx, card.gated_min_ctx)
            if not len(view):
                return None
            ev = ModelEval(loaded.predictor, view, _label(spec), card=card)
            if not loaded.callable:
                if split not in loaded.predictions:
                    return None
                check_alignment(loaded, view, spec.removeprefix("predictions:"))
                ev.use_predictions(loaded.predictions[split])
            return ev

        return self._once(("eval", spec, str(ds.path), split), make)

    def data_contexts(self, ds) -> list[tuple[int, int]]:
        """The (ctx, min_ctx) pairs of the models being gated on ``ds`` (else the profile's)."""
        from lvm.gates.status import gate_params

        pairs = []
        for spec in model_specs(self.config):
            loaded, _ = self.model(spec)
            if loaded is not None and (loaded.card.ctx, loaded.card.gated_min_ctx) not in pairs:
                pairs.append((loaded.card.ctx, loaded.card.gated_min_ctx))
        declared = ds.meta.get("sequences") if isinstance(ds.meta.get("sequences"), dict) else None
        if not pairs and declared and isinstance(declared.get("ctx"), int) and isinstance(declared.get("min_ctx"), int):
            pairs.append((declared["ctx"], declared["min_ctx"]))  # imported full-context windows: their own ctx
        if not pairs:
            p = gate_params(self.profile(ds), "alignment")
            pairs.append((int(p["ctx"]), int(p["min_ctx"])))
        return pairs

    def baselines(self, ds, ctx, min_ctx):
        """The null baselines (copy-last, context mean, ridge fitted once per dataset and context)."""
        from lvm.gates.status import gate_params
        from lvm.models.baselines import null_baselines

        n_fit = gate_params(self.profile(ds), "beats_baselines")["ridge_fit_sample"]
        return self._once(("baselines", str(ds.path), ctx, min_ctx), lambda: null_baselines(ds, ctx, min_ctx, n_fit))

    def view(self, ds, split, ctx, min_ctx):
        """One SequenceView per (dataset, split, ctx, min_ctx): models on it share its target vectors."""
        make = (
            (lambda: self.ood_view(ds, ctx, min_ctx)) if split == "ood" else (lambda: ds.sequences(split, ctx, min_ctx))
        )
        return self._once(("view", str(ds.path), split, ctx, min_ctx), make)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def gate_session(request) -> GateSession:
    return plugin_of(request.config).gates


@pytest.fixture(scope="session")
def lvm_dataset(gate_session, dataset_path):
    from lvm.errors import LvmError

    if dataset_path is None:
        pytest.skip("no --dataset given")
    try:
        return gate_session.dataset(dataset_path)
    except LvmError as exc:  # a bad dataset makes every gate that needs it RED, with the one-line reason
        pytest.fail(f"dataset cannot be opened: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def gate_profile(gate_session, lvm_dataset):
    from lvm.errors import LvmError

    try:
        return gate_session.profile(lvm_dataset)
    except LvmError as exc:
        pytest.fail(f"no gate profile for this dataset: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def lvm_model(gate_session, lvm_dataset, gate_profile, checkpoint_path):
    """The checkpoint's ``LoadedModel`` (None when it did not load) and its integrity result."""
    if checkpoint_path is None:
        pytest.skip("no --checkpoint given")
    loaded, _ = gate_session.model(checkpoint_path)
    return loaded, gate_session.integrity(checkpoint_path, lvm_dataset)


def _model_eval(gate_session, lvm_dataset, checkpoint_path, lvm_model, split):
    from lvm.gates.status import RED

    loaded, integrity = lvm_model
    if loaded is None or integrity.status == RED:
        # a model that does not belong to this data cannot be judged: its other gates would name wrong causes
        pytest.skip(f"checkpoint_integrity is RED, so the model gates were not run: {integrity.message}")
    ev = gate_session.model_eval(checkpoint_path, lvm_dataset, split)
    if ev is None:
        pytest.skip(f"no {split} sequences (or predictions) for this model's context")
    return ev


@pytest.fixture(scope="session")
def val_eval(gate_session, lvm_dataset, checkpoint_path, lvm_model):
    return _model_eval(gate_session, lvm_dataset, checkpoint_path, lvm_model, "val")


@pytest.fixture(scope="session")
def ood_eval(gate_session, lvm_dataset, checkpoint_path, lvm_model):
    return _model_eval(gate_session, lvm_dataset, checkpoint_path, lvm_model, "ood")


@pytest.fixture
def gate_status(request):
    """Record a GateResult and turn it into the test outcome (GREEN/AMBER/RED/SKIP)."""
    from lvm.gates.status import AMBER, RED, SKIP

    started = time.perf_counter()

    def check(result, per_sequence=None, articles=None):
        plugin = plugin_of(request.config)
        if not result.seconds:
            result.seconds = round(time.perf_counter() - started, 4)
        data = plugin.describe(request, result.to_dict())
        if per_sequence is not None:
            data["per_sequence_file"] = plugin.save_per_sequence(request.node.nodeid, per_sequence, articles)
        # JSON, not a Python repr: CI systems read these from JUnit XML
        request.node.user_properties.append((RESULT_PROPERTY, json.dumps(_json_safe(data), allow_nan=False)))
        request.node.user_properties.append((STATUS_PROPERTY, result.status))
        if result.status == SKIP:
            pytest.skip(result.message)
        if result.status == RED:
            pytest.fail(result.message, pytrace=False)
        if result.status == AMBER:
            if request.config.getoption("--gates-strict"):
                pytest.fail(f"{result.message} (AMBER fails under --gates-strict)", pytrace=False)
            warnings.warn(GateWarning(result.message), stacklevel=2)
        return result

    return check


def _history_summary(path: str | None) -> dict | None:
    """What the leaderboard needs of a run's training_history.json (per-epoch scalars, status, loss)."""
    if not path or not Path(path).is_file():
        return None
    try:
        hist = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(hist, dict):
        return None
    epochs = [
        {k: v for k, v in e.items() if isinstance(v, (int, float, str, bool)) or v is None}
        for e in hist.get("epochs", [])
        if isinstance(e, dict)
    ]
    return {
        "epochs": epochs,
        "status": hist.get("status"),
        "loss_config": hist.get("loss_config"),
        "aborted": hist.get("aborted"),
    }


def _json_safe(obj):
    """JSON-safe: numpy scalars to Python, NaN/Inf to None (the results file's own rule)."""
    from lvm.report.results import json_safe

    return json_safe(obj)


# ----------------------------------------------------------------------------- the session object


def _gate_id(item) -> str:
    return getattr(item, "originalname", item.name).removeprefix("test_")


class LvmGatesPlugin:
    """Per-session state and hooks: results collected on the controller, table, results file."""

    def __init__(self, config):
        self.config = config
        self.gates = GateSession(config)
        self.results: list[dict] = []
        self.results_path: Path | None = None
        self.regressions: list = []
        self.finish_error: str | None = None
        self.deselected = 0
        self.verdict = None
        self.partial_note: str | None = None
        self._started = time.time()
        # per-sequence scores travel beside the reports (not in them: JUnit properties stay small)
        worker = getattr(config, "workerinput", None)
        self._parts = Path(worker["lvm_parts_dir"]) if worker and "lvm_parts_dir" in worker else None
        self._own_parts = self._parts is None  # the controller owns (and removes) the folder

    @property
    def parts(self) -> Path:
        """Where per-sequence scores travel beside the reports: made on first use, removed at the end."""
        if self._parts is None:
            import tempfile

            self._parts = Path(tempfile.mkdtemp(prefix="lvm-gates-"))
        return self._parts

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node) -> None:  # xdist: tell each worker where per-sequence files go
        node.workerinput["lvm_parts_dir"] = str(self.parts)

    def pytest_unconfigure(self, config) -> None:
        if self._own_parts and self._parts is not None:
            shutil.rmtree(self._parts, ignore_errors=True)

    def save_per_sequence(self, nodeid: str, values, articles=None) -> str | None:
        import hashlib

        import numpy as np

        if len(values) > PER_SEQUENCE_LIMIT:
            return None
        name = hashlib.sha1(nodeid.encode()).hexdigest()[:16] + ".npz"
        arts = np.asarray(articles if articles is not None else np.arange(len(values)), dtype=np.int64)
        np.savez(self.parts / name, values=np.asarray(values, dtype=np.float64), articles=arts)
        return name

    def _load_per_sequence(self, row: dict) -> dict:
        import numpy as np

        name = row.pop("per_sequence_file", None)
        if name and (self.parts / name).is_file():
            with np.load(self.parts / name) as f:
                row["per_sequence"] = [round(float(v), 5) for v in f["values"]]
                row["per_sequence_article"] = [int(a) for a in f["articles"]]
        return row

    def pytest_deselected(self, items) -> None:
        self.deselected += sum(1 for i in items if "gate_status" in getattr(i, "fixturenames", ()))

    # -- collection: markers from the gate table
    def pytest_collection_modifyitems(self, items) -> None:
        from lvm.gates.spec import spec

        for item in items:
            if "gate_status" not in getattr(item, "fixturenames", ()):
                continue
            gid = _gate_id(item)
            item.add_marker(pytest.mark.lvm_gate(gid))
            gs = spec(gid)
            if gs is not None:
                item.add_marker(getattr(pytest.mark, gs.marker))
                if gs.hardware_bound:
                    item.add_marker(pytest.mark.latency)

    def pytest_runtest_setup(self, item) -> None:
        """Where a gate test runs (checkpoint, dataset, split), for rows it cannot record itself."""
        if item.get_closest_marker("lvm_gate") is None or not hasattr(item, "callspec"):
            return
        params = item.callspec.params
        spec, ds = params.get("checkpoint_path"), params.get("dataset_path")
        item.user_properties.append(
            (
                WHERE_PROPERTY,
                {
                    "checkpoint": _label(spec) if spec else None,
                    "dataset": Path(ds).name if ds else None,
                    "split": params.get("split"),
                },
            )
        )

    # -- one result row, with where it came from
    def describe(self, request, data: dict) -> dict:
        """Attach the comparability key, the model card and the paths of the run to a result row."""
        from lvm.gates.spec import spec as gate_spec
        from lvm.report.results import comparability, hardware_class

        params = request.node.callspec.params if hasattr(request.node, "callspec") else {}
        ds_path, model = params.get("dataset_path"), params.get("checkpoint_path")
        fp = ident = None
        pname, pver = "unknown", 0
        if ds_path:
            ds = self.gates.dataset(ds_path)
            fp, ident = ds.encoder_fingerprint, ds.identity
            prof = self.gates.profile(ds)
            pname, pver = prof.name, prof.version
            data["dataset_hash"], data["vector_sketch"] = ds.content_hash, ds.vector_sketch  # provenance, not the key
        gs = gate_spec(data["gate"])
        hw = hardware_class() if gs is not None and gs.hardware_bound else None
        data["comparability"], data["comparability_key"] = comparability(fp, ident, pname, pver, hw)
        data["profile"] = pname
        data["nodeid"] = request.node.nodeid
        data["checkpoint_path"] = str(model) if model else None
        data["dataset_path"] = str(ds_path) if ds_path else None
        if model:
            loaded, _ = self.gates.model(model)
            if loaded is not None:
                data["model_card"] = loaded.card.to_dict()
                data["training_history"] = _history_summary(loaded.card.history_path)
        return data

    # -- results from every test report (also from xdist workers)
    def pytest_runtest_logreport(self, report) -> None:
        props = dict(report.user_properties) if report.user_properties else {}
        is_gate = "lvm_gate" in report.keywords and report.when in ("setup", "call")
        if RESULT_PROPERTY in props and report.when == "call":
            self.results.append(self._load_per_sequence(json.loads(props[RESULT_PROPERTY])))
        elif report.failed and RESULT_PROPERTY not in props and is_gate:
            # a gate that crashed is RED, never silently missing
            text = str(report.longrepr) if report.longrepr else ""
            lines = [line for line in text.splitlines() if line.strip()]
            last = lines[-1][:300] if lines else ""
            why = last if len(lines) == 1 else f"gate crashed: {last}"  # pytest.fail(pytrace=False) is already one line
            self.results.append(self._unrecorded(report, props, "RED", why))
        elif report.skipped and is_gate:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            self.results.append(self._unrecorded(report, props, "SKIP", reason.removeprefix("Skipped: ")))

    @staticmethod
    def _unrecorded(report, props: dict, status: str, message: str) -> dict:
        from lvm.gates.status import GateResult

        gate = report.nodeid.split("::")[-1].split("[")[0].removeprefix("test_")
        where = props.get(WHERE_PROPERTY) or {}
        result = GateResult(gate, status, message=message, seconds=round(report.duration, 4), **where)
        return {**result.to_dict(), "nodeid": report.nodeid}

    def _is_controller(self) -> bool:
        return not hasattr(self.config, "workerinput")

    # -- the end: regression check, results file
    def pytest_sessionfinish(self, session, exitstatus) -> None:
        if not self._is_controller() or not self.results:
            return
        from lvm.errors import LvmError
        from lvm.profiles import load_profile
        from lvm.report.results import build_document, write_results

        results = [dict(r) for r in self.results]
        profile_name = next(
            (r.get("profile") for r in results if r.get("profile") and r.get("profile") != "unknown"), None
        )
        explicit = self.config.getoption("--gate-profile")
        try:  # the profile the gates ran with: the explicit file, else the shipped one they recorded
            profile = load_profile(explicit) if explicit else (load_profile(profile_name) if profile_name else None)
        except LvmError:
            profile = None
        run = self._run_record(results)
        target = self._results_target(run["complete"])
        models = _portable(results, target.parent)
        doc = build_document(results, profile.name if profile else "unknown", profile.version if profile else 0)
        doc["run"], doc["models"] = run, models
        try:
            regressions = self._regressions(doc, profile)
            doc["results"] += regressions
        except LvmError as exc:  # the regression check could not run: say so, still write what ran
            self.finish_error = f"regression check failed: {exc}"
        if (self.verdict is not None and self.verdict.regressed) or self.finish_error:
            session.exitstatus = 1
        self.results_path = write_results(target, doc)

    def _run_record(self, results: list[dict]) -> dict:
        """What ran: the gates, whether the run was partial (-k, -m, --lf, a deselection, missing gates)."""
        from lvm.gates.spec import DATA_GATES, MODEL_GATES

        opt = self.config.getoption
        ran = sorted({r["gate"] for r in results if r.get("gate") != "regression"})
        expected = set(DATA_GATES) | (set(MODEL_GATES) - {"regression"} if model_specs(self.config) else set())
        selection = {
            "keyword": opt("keyword", "") or None,
            "markexpr": opt("markexpr", "") or None,
            "last_failed": bool(opt("lf", False)),
            "deselected": self.deselected,
        }
        missing = sorted(expected - set(ran))
        partial = bool(
            selection["keyword"] or selection["markexpr"] or selection["last_failed"] or self.deselected or missing
        )
        return {
            "argv": list(self.config.invocation_params.args),
            "seconds": round(time.time() - self._started, 3),
            "gates_ran": ran,
            "gates_missing": missing,
            "selection": selection,
            "complete": not partial,
        }

    def _results_target(self, complete: bool) -> Path:
        """The results file; a partial run never replaces a complete one: it is written beside it."""
        target = Path(self.config.getoption("--results") or DEFAULT_RESULTS)
        if complete or not target.is_file():
            return target
        try:
            existing = json.loads(target.read_text())
            existing_complete = (existing.get("run") or {}).get("complete", True)
        except (OSError, ValueError, AttributeError):
            existing_complete = False  # unreadable: nothing worth keeping
        if existing_complete:
            self.partial_note = f"partial run: written beside {target} (kept, it holds a complete run)"
            return target.with_name(target.stem + ".partial.json")
        return target

    def _regressions(self, doc: dict, profile) -> list[dict]:
        """The regression verdict against --baseline-results (``lvm.report.regression.check``)."""
        base_path = self.config.getoption("--baseline-results")
        if not base_path:
            return []
        from lvm.report.regression import check
        from lvm.report.results import read_results

        self.verdict = check(
            doc,
            read_results(base_path),
            (profile.data.get("regression") if profile else None),
            new_name="this run",
            base_name=Path(base_path).name,
            profile_name=profile.name if profile else None,
        )
        self.regressions = self.verdict.regressions
        rows = []
        for r in self.regressions:
            d = r.to_dict()
            d["comparability_key"] = None
            rows.append(d)
        return rows

    def pytest_terminal_summary(self, terminalreporter, exitstatus, config) -> None:
        if not self._is_controller() or not self.results:
            return
        write_stoplights(terminalreporter, self.results + [r.to_dict() for r in self.regressions])
        if self.results_path:
            terminalreporter.write_line(f"results: {self.results_path}")
        if self.partial_note:
            terminalreporter.write_line(self.partial_note, yellow=True)
        if self.verdict is not None:
            terminalreporter.write_line(f"regression check: {self.verdict.summary}")
        if self.finish_error:
            terminalreporter.write_line(f"ERROR: {self.finish_error}", red=True, bold=True)


def _portable(results: list[dict], results_dir: Path) -> dict:
    """Make the rows portable: paths relative to the results file's folder, model cards and
    training-history summaries moved from the rows into one ``models`` table (checkpoint -> both)."""
    import os

    models: dict = {}
    for r in results:
        card, hist = r.pop("model_card", None), r.pop("training_history", None)
        if r.get("checkpoint") and card is not None:
            entry = models.setdefault(r["checkpoint"], {"card": card, "history": None})
            entry["history"] = entry["history"] or hist
        for key in ("checkpoint_path", "dataset_path"):
            value = r.get(key)
            if value and not value.startswith(("py:", "predictions:")):
                r[key] = os.path.relpath(Path(value).resolve(), results_dir.resolve())
            elif value and value.startswith("predictions:"):
                r[key] = "predictions:" + os.path.relpath(
                    Path(value.removeprefix("predictions:")).resolve(), results_dir.resolve()
                )
    return models


def write_stoplights(tr, rows: list[dict]) -> None:
    """The one stoplight table: gate × checkpoint × dataset, status and headline."""
    from lvm.gates.spec import ORDER

    colour = {"GREEN": {"green": True}, "AMBER": {"yellow": True}, "RED": {"red": True, "bold": True}, "SKIP": {}}
    tr.section("lvm gates: stoplights")
    w_gate = max(len("gate"), *(len(r["gate"] + (f"/{r['split']}" if r.get("split") else "")) for r in rows))
    w_ck = max(len("checkpoint"), *(len(str(r.get("checkpoint") or "-")) for r in rows))
    w_ds = max(len("dataset"), *(len(str(r.get("dataset") or "-")) for r in rows))
    tr.write_line(f"{'gate':<{w_gate}}  {'checkpoint':<{w_ck}}  {'dataset':<{w_ds}}  status  headline")
    for r in sorted(
        rows,
        key=lambda r: (r.get("checkpoint") is not None, str(r.get("checkpoint")), ORDER.get(r["gate"], len(ORDER))),
    ):
        gate = r["gate"] + (f"/{r['split']}" if r.get("split") else "")
        tr.write(
            f"{gate:<{w_gate}}  {str(r.get('checkpoint') or '-'):<{w_ck}}  {str(r.get('dataset') or '-'):<{w_ds}}  "
        )
        tr.write(f"{r['status']:<6}", **colour.get(r["status"], {}))
        tr.write_line(f"  {headline(r)}")
    counts = {s: sum(r["status"] == s for r in rows) for s in ("GREEN", "AMBER", "RED", "SKIP")}
    tr.write_line(" ".join(f"{k} {v}" for k, v in counts.items()))


def headline(r: dict) -> str:
    """The one number a reader wants per gate."""
    from lvm.gates.spec import spec

    m = r.get("metrics") or {}
    if r["status"] in ("AMBER", "RED") and r.get("message"):
        return r["message"].split(": ", 1)[-1][:110]
    if r["gate"] in ("val_cosine", "ood_cosine"):
        v, lo, hi = (m.get(r["gate"] + s) for s in ("", "_ci_low", "_ci_high"))
        if all(isinstance(x, (int, float)) for x in (v, lo, hi)):
            return f"{v:.4f} [{lo:.4f}, {hi:.4f}]"
    gs = spec(r["gate"])
    k = gs.headline if gs else None
    if k and m.get(k) is not None:
        v = m[k]
        return f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={json.dumps(v) if isinstance(v, (list, dict)) else v}"
    if r["status"] == "SKIP":
        return (r.get("message") or "")[:100]
    return ""
