"""The lvm pytest plugin: options, fixtures and thin hooks over the gate session and the recorder.

``pytest gates/ --checkpoint=SPEC --dataset=DIR`` (or ``pytest --pyargs lvm.gatesuite ...`` from an
installed wheel) runs every gate parameterized over checkpoints × datasets. A gate test is any test
that uses the ``gate_status`` fixture: it calls ``lvm.gates`` and hands the result to it. GREEN
passes, AMBER passes with a ``GateWarning`` (fails under ``--gates-strict``), RED fails with the
gate's message, SKIP skips with its reason; a gate that crashes is RED. Each gate test carries the
markers of its ``GateSpec`` (``lvm_gate``, ``data`` / ``model``, ``latency``), so ``-m data`` works.

The plugin is one object registered per session (``LvmGatesPlugin``, kept in ``config.stash``) with
thin hooks, in the pattern of pytest-benchmark: what the fixtures load lives in the gate session
(``lvm.gatesuite.session.GateSession``: datasets, models, views, baselines, checkpoint names); every
result row, the run record, the results file, the regression check against ``--baseline-results``
and the stoplight table are the recorder's (``lvm.report.recorder.Recorder``), which collects rows
also from xdist workers, through ``user_properties`` (every value JSON text: CI systems read them from
JUnit XML). ``--log-samples N`` adds the failure-mode samples (``lvm.report.samples``: the N worst and
N random val sequences per checkpoint, with texts) beside the results file. A checkpoint is named by its model card (or
``--checkpoint NAME=PATH``); two with one name, like any misused option, are a ``pytest.UsageError``.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import pytest

from lvm.gatesuite.session import GateSession, model_entries, model_specs  # noqa: F401 (gate tests import them)

RESULT_PROPERTY = "lvm_gate_result"
WHERE_PROPERTY = "lvm_gate_where"
STATUS_PROPERTY = "lvm_gate_status"
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
        metavar="[NAME=]SPEC",
        help="model to gate (repeatable): run folder, NAME.json/.safetensors, NAME.pt2 (torch.export), "
        "or py:file.py:factory / py:pkg.module:factory (imports and runs that code); named by its model "
        "card, or by NAME=",
    )
    group.addoption(
        "--model-card",
        default=None,
        metavar="FILE",
        help="JSON model card for py: / .pt2 checkpoints that do not carry their own",
    )
    group.addoption(
        "--model-args",
        nargs="+",
        default=None,
        metavar="K=V",
        help="keyword arguments for py: factories and classes (values read as JSON, else strings)",
    )
    group.addoption(
        "--predictions",
        action="append",
        default=[],
        metavar="[NAME=]DIR",
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
    group.addoption(
        "--log-samples",
        type=int,
        default=0,
        metavar="N",
        help="record the N worst and N random val sequences per checkpoint, with texts, nearest bank texts and "
        "a failure category, in <results stem>.samples.json (default 0: off)",
    )


def _check_options(config) -> None:
    """Misused options fail the session before any gate runs, in one line."""
    opt = config.getoption
    _check_paths_exist(opt)
    _check_results_path(opt)
    _check_files_load(opt)
    from lvm.bounds import Bound

    # bounds declared once, here: an IVF probe count and a thread count that fit their libraries' int32
    from lvm.report.samples import N_BOUND

    bounds = (
        ("--nprobe", Bound(int, 1, 65_536)),
        ("--latency-threads", Bound(int, 1, 4096)),
        ("--log-samples", N_BOUND),
    )
    for name, bound in bounds:
        why = bound.problem(opt(name)) if opt(name) is not None else None
        if why:
            raise pytest.UsageError(f"{name}: {why}")


def _check_paths_exist(opt) -> None:
    """Files and folders named by options exist."""
    for name in ("--baseline-results", "--model-card"):
        if opt(name) and not Path(opt(name)).is_file():
            raise pytest.UsageError(f"{name}: file {opt(name)} not found")
    for name in ("--ood-dataset", "--baseline-dataset"):
        if opt(name) and not Path(opt(name)).is_dir():
            raise pytest.UsageError(f"{name}: folder {opt(name)} not found")
    from lvm.report.recorder import split_name

    for d in opt("--dataset") + [split_name(p)[1] for p in opt("--predictions")]:
        if not Path(d).is_dir():
            raise pytest.UsageError(f"--dataset/--predictions: folder {d} not found")
    for d in [*opt("--dataset"), *(opt(n) for n in ("--ood-dataset", "--baseline-dataset") if opt(n))]:
        for name in ("index.faiss", "index.json"):  # the index cache: rebuilt when damaged, unless it cannot be
            p = Path(d) / name
            if (p.exists() or p.is_symlink()) and not p.is_file():
                what = "a folder" if p.is_dir() else "not a readable file"
                raise pytest.UsageError(f"--dataset: {p} is {what}; remove it (the gates rebuild the index there)")


def _check_results_path(opt) -> None:
    """``--results`` names a file that can be written: not a folder, not inside a file, not inside a
    dataset (or any lvm output) folder; checked before any gate runs (the default path only when
    something is gated: a session without gate options writes no results file)."""
    from lvm.errors import LvmError
    from lvm.report.results import check_results_path

    if not (opt("--results") or opt("--dataset") or opt("--checkpoint") or opt("--predictions")):
        return
    try:
        check_results_path(Path(opt("--results") or DEFAULT_RESULTS))
    except LvmError as exc:
        raise pytest.UsageError(f"--results: {exc}") from None


def _check_profile_fits(profile, datasets: list) -> None:
    """A profile calibrated for another encoder or dimension than a --dataset's is a misused option."""
    from lvm.errors import LvmError
    from lvm.profiles import check_fits
    from lvm.schemas import read_json

    for d in datasets:
        try:
            meta = read_json(Path(d) / "meta.json", "a dataset's meta.json")
        except LvmError:
            continue  # an unreadable dataset (not JSON, nested too deep) is its gates' RED, with the reason
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
    from lvm.report.recorder import NameClash

    try:
        plugin = LvmGatesPlugin(config)
    except NameClash as exc:
        raise pytest.UsageError(f"--checkpoint: {exc}") from None
    config.stash[PLUGIN_KEY] = plugin
    config.pluginmanager.register(plugin, "lvm_gates_session")


def plugin_of(config) -> LvmGatesPlugin:
    return config.stash[PLUGIN_KEY]


# ----------------------------------------------------------------------------- parametrization


def pytest_generate_tests(metafunc) -> None:
    opt = metafunc.config.getoption
    if "dataset_path" in metafunc.fixturenames:
        datasets = opt("--dataset") or [None]
        metafunc.parametrize(
            "dataset_path", datasets, ids=[Path(d).name if d else "no-dataset" for d in datasets], scope="session"
        )
    if "checkpoint_path" in metafunc.fixturenames:
        ckpts = model_specs(metafunc.config) or [None]
        gates = plugin_of(metafunc.config).gates
        metafunc.parametrize(
            "checkpoint_path", ckpts, ids=[gates.label(c) if c else "no-checkpoint" for c in ckpts], scope="session"
        )


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


@pytest.fixture
def checkpoint_name(gate_session, lvm_model, checkpoint_path) -> str:
    """The checkpoint's name (NAME=, else its model card's): the label of its rows."""
    return gate_session.name(checkpoint_path)


def _model_eval(gate_session, lvm_dataset, checkpoint_path, lvm_model, split):
    from lvm.gates.status import RED

    loaded, integrity = lvm_model
    if loaded is None or integrity.status == RED:
        # a model that does not belong to this data cannot be judged: its other gates would name wrong causes
        pytest.skip(f"checkpoint_integrity is RED, so the model gates were not run: {integrity.message}")
    broken = gate_session.space_broken(lvm_dataset)
    if broken:  # nor can any model on vectors that are not its encoder's space
        pytest.skip(broken)
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
    """Record a GateResult (one ``ResultRow``) and turn it into the test outcome (GREEN/AMBER/RED/SKIP)."""
    from lvm.gates.status import AMBER, RED, SKIP

    started = time.perf_counter()

    def check(result, per_sequence=None, articles=None):
        plugin = plugin_of(request.config)
        if not result.seconds:
            result.seconds = round(time.perf_counter() - started, 4)
        row = plugin.row(request, result)
        if per_sequence is not None:
            row.per_sequence_file = plugin.recorder.save_per_sequence(request.node.nodeid, per_sequence, articles)
        # every property value is JSON text, never a Python repr: CI systems read these from JUnit XML
        request.node.user_properties.append((RESULT_PROPERTY, plugin.recorder.to_json(row)))
        request.node.user_properties.append((STATUS_PROPERTY, json.dumps(result.status)))
        plugin.log_samples(request, result)
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


# ----------------------------------------------------------------------------- the session object


def _gate_id(item) -> str:
    return getattr(item, "originalname", item.name).removeprefix("test_")


class LvmGatesPlugin:
    """Per-session state and thin hooks: the gate session (loads) and the recorder
    (``lvm.report.recorder.Recorder``: rows, results file, regression check, stoplights)."""

    def __init__(self, config):
        from lvm.report.recorder import Recorder
        from lvm.report.samples import SampleLog

        self.config = config
        self.gates = GateSession(config)
        worker = getattr(config, "workerinput", None)  # xdist: per-sequence files go to the controller's folder
        self.recorder = Recorder(worker.get("lvm_parts_dir") if worker else None)
        n = config.getoption("--log-samples")
        self.samples = SampleLog(n) if n else None  # --log-samples N: collected on the controller

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node) -> None:  # xdist: tell each worker where per-sequence files go
        node.workerinput["lvm_parts_dir"] = str(self.recorder.parts)

    def pytest_unconfigure(self, config) -> None:
        self.recorder.close()

    def pytest_deselected(self, items) -> None:
        self.recorder.deselected += sum(1 for i in items if "gate_status" in getattr(i, "fixturenames", ()))

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
        where = {
            "checkpoint": self.gates.name(spec) if spec else None,
            "dataset": Path(ds).name if ds else None,
            "split": params.get("split"),
        }
        item.user_properties.append((WHERE_PROPERTY, json.dumps(where)))

    def row(self, request, result):
        """A gate test's result as its ``ResultRow``: the recorder's, with the test's dataset, profile and card."""
        params = request.node.callspec.params if hasattr(request.node, "callspec") else {}
        ds_path, spec = params.get("dataset_path"), params.get("checkpoint_path")
        ds = self.gates.dataset(ds_path) if ds_path else None
        loaded = self.gates.model(spec)[0] if spec else None
        profile = self.gates.profile(ds) if ds is not None else None
        card = loaded.card if loaded is not None else None
        return self.recorder.row(result, request.node.nodeid, ds, profile, spec, ds_path, card)

    def log_samples(self, request, result) -> None:
        """``--log-samples N``: where the ``val_cosine`` gate of a checkpoint ran on the first --dataset,
        its N worst and N random val sequences (``lvm.report.samples``) go into the parts folder, from
        the predictions that gate scored; the part's name travels as a JSON property (xdist too)."""
        from lvm.report import samples

        n = self.config.getoption("--log-samples")
        params = request.node.callspec.params if hasattr(request.node, "callspec") else {}
        spec, ds_path = params.get("checkpoint_path"), params.get("dataset_path")
        main = (self.config.getoption("--dataset") or [None])[0]
        if not n or result.gate != "val_cosine" or spec is None or ds_path is None or ds_path != main:
            return
        name = self.gates.name(spec)
        try:
            ds = self.gates.dataset(ds_path)
            entry = self.gates.samples(spec, ds, n)
            if entry is None:
                return
            prop = {"checkpoint": name, "file": samples.write_part(self.recorder.parts, name, ds, n, entry)}
        except Exception as exc:  # noqa: BLE001 - the samples are a report: their failure never changes a gate
            prop = {"checkpoint": name, "error": f"{type(exc).__name__}: {str(exc)[:200]}"}
        request.node.user_properties.append((samples.PROPERTY, json.dumps(prop)))

    # -- results from every test report (also from xdist workers)
    def pytest_runtest_logreport(self, report) -> None:
        from lvm.report.samples import PROPERTY as SAMPLES_PROPERTY

        props = dict(report.user_properties) if report.user_properties else {}
        if SAMPLES_PROPERTY in props and report.when == "call" and self.samples is not None:
            self.samples.add(props[SAMPLES_PROPERTY])
        if RESULT_PROPERTY in props:
            if report.when == "call":
                self.recorder.add_json(props[RESULT_PROPERTY])
        elif "lvm_gate" in report.keywords and report.when in ("setup", "call") and (report.failed or report.skipped):
            # a gate that crashed is RED, never silently missing; one skipped before it ran is SKIP
            long = report.longrepr
            text = long[2] if report.skipped and isinstance(long, tuple) else str(long) if long else ""
            where = props.get(WHERE_PROPERTY)
            self.recorder.add_outcome(
                report.nodeid, report.outcome, text, report.duration, json.loads(where) if where else None
            )

    def _is_controller(self) -> bool:
        return not hasattr(self.config, "workerinput")

    # -- the end: regression check, results file, stoplights
    def pytest_sessionfinish(self, session, exitstatus) -> None:
        if not self._is_controller() or not self.recorder.rows:
            return
        from lvm.report.recorder import Finish

        opt = self.config.getoption
        selection = {
            "keyword": opt("keyword", "") or None,
            "markexpr": opt("markexpr", "") or None,
            "last_failed": bool(opt("lf", False)),
        }
        self.recorder.finish(
            Finish(
                target=Path(opt("--results") or DEFAULT_RESULTS),
                argv=list(self.config.invocation_params.args),
                selection=selection,
                models_gated=bool(model_specs(self.config)),
                explicit_profile=opt("--gate-profile"),
                baseline=opt("--baseline-results"),
            )
        )
        if self.samples is not None:
            self.samples.write(
                self.recorder.results_path or Path(opt("--results") or DEFAULT_RESULTS),
                self.recorder.parts,
                (opt("--dataset") or [None])[0],
            )
        if self.recorder.failed:
            session.exitstatus = 1

    def pytest_terminal_summary(self, terminalreporter, exitstatus, config) -> None:
        if self._is_controller() and self.recorder.rows:
            self.recorder.write_summary(terminalreporter)
            line = self.samples.summary() if self.samples is not None else None
            if line:
                terminalreporter.write_line(line, red=line.startswith("ERROR"))
