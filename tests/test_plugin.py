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


def run_suite(tmp_path, *args):
    (tmp_path / "gates").mkdir(exist_ok=True)
    (tmp_path / "gates" / "test_fake.py").write_text(GATE_MODULE)
    results = tmp_path / "results.json"
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
