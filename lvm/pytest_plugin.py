"""The lvm pytest plugin: one option group for the gate suite (``pytest gates/ --checkpoint=...``).

Registered through the package's ``pytest11`` entry point and the root ``conftest.py``. The gate
fixtures, stoplight summary and results writer build on these options.
"""

from __future__ import annotations


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
    group.addoption("--results", default=None, metavar="FILE", help="where to write the results JSON")
