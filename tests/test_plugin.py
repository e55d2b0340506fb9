"""The pytest plugin's outcome mapping, crash handling and results file, on throw-away gate modules."""

import json
import subprocess
import sys
import textwrap

from conftest import ROOT

GATE_MODULE = textwrap.dedent("""
    import pytest
    from lvm.gates import GateResult

    @pytest.mark.parametrize("status", ["GREEN", "AMBER", "RED", "SKIP"])
    def test_fixed(status, gate_status):
        gate_status(
            GateResult("fixed_" + status.lower(), status, {"value": 1.0}, [], f"{status} because of value = 1.0")
        )

    def test_boom(gate_status):
        raise RuntimeError("the gate itself broke")
""")


def run_suite(tmp_path, *args, module: str = GATE_MODULE, results_name: str = "results.json"):
    """Run ``module`` as gates/test_fake.py through the plugin in a fresh process; (process, results or None)."""
    (tmp_path / "gates").mkdir(exist_ok=True)
    (tmp_path / "gates" / "test_fake.py").write_text(module)
    results = tmp_path / results_name
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "gates/test_fake.py",
            "-p",
            "no:cacheprovider",
            "-p",
            "lvm.pytest_plugin",
            f"--results={results}",
            "-q",
            "-W",
            "default",
            *args,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
    )
    return proc, (json.loads(results.read_text()) if results.exists() else None)


def test_statuses_map_to_outcomes_and_a_crash_is_red(tmp_path):
    proc, doc = run_suite(tmp_path)
    assert proc.returncode == 1  # RED fails the run
    out = proc.stdout
    assert "lvm gates: stoplights" in out and "GateWarning" in out and "AMBER because of value" in out
    by_gate = {r["gate"]: r for r in doc["results"]}
    assert by_gate["fixed_green"]["status"] == "GREEN" and by_gate["fixed_amber"]["status"] == "AMBER"
    assert by_gate["fixed_red"]["status"] == "RED" and by_gate["fixed_skip"]["status"] == "SKIP"
    assert by_gate["boom"]["status"] == "RED" and "crashed" in by_gate["boom"]["message"]
    assert doc["schema"] == "lvm-gate-results" and doc["schema_version"] == 2
    assert doc["summary"]["overall"] == "RED" and doc["summary"]["RED"] == 2
    prov = doc["provenance"]
    assert prov["torch"] and prov["faiss"] and prov["hardware"]["cores"] >= 1


def test_amber_fails_only_under_gates_strict(tmp_path):
    proc, _ = run_suite(tmp_path, "-k", "GREEN or AMBER")
    assert proc.returncode == 0, proc.stdout
    strict, _ = run_suite(tmp_path, "-k", "GREEN or AMBER", "--gates-strict")
    assert strict.returncode == 1 and "AMBER fails under --gates-strict" in strict.stdout


def test_junit_properties_are_json_and_markers_come_from_the_gate_table(tmp_path):
    """CI systems read JUnit XML: each result is one JSON property (no per-sequence arrays) plus its
    status; gate tests carry the gate table's markers, so -m data / -m model select them."""
    import xml.etree.ElementTree as ET

    extra = textwrap.dedent("""
        from lvm.gates import GateResult

        def test_normalization(gate_status):
            gate_status(GateResult("normalization", "AMBER", {"x": 1.0}, [], "AMBER: x"), per_sequence=[0.1, 0.2])

        def test_val_cosine(gate_status):
            gate_status(GateResult("val_cosine", "GREEN", {"val_cosine": 0.5}, []), per_sequence=[0.4, 0.6])
    """)
    junit = tmp_path / "junit.xml"
    proc, doc = run_suite(tmp_path, f"--junitxml={junit}", module=extra)
    assert proc.returncode == 0, proc.stdout[-2000:]
    props = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        for prop in case.iter("property"):
            props.setdefault(case.get("name"), {})[prop.get("name")] = prop.get("value")
    row = json.loads(props["test_normalization"]["lvm_gate_result"])  # JSON, not a Python repr
    assert row["gate"] == "normalization" and "per_sequence" not in row
    assert json.loads(props["test_normalization"]["lvm_gate_status"]) == "AMBER"  # visible to the CI system, as JSON
    for case_props in props.values():  # every property of every test case is JSON (issue 22 item 5)
        for value in case_props.values():
            json.loads(value)
    assert next(r for r in doc["results"] if r["gate"] == "val_cosine")["per_sequence"] == [
        0.4,
        0.6,
    ]  # kept in the file
    only_data, partial = run_suite(tmp_path, "-m", "data", module=extra, results_name="d.json")
    assert "1 passed, 1 deselected" in only_data.stdout, only_data.stdout[-1500:]
    assert partial["run"]["complete"] is False
