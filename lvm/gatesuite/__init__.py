"""The gate suite, shipped in the package: ``pytest --pyargs lvm.gatesuite --checkpoint=... --dataset=...``
runs it from an installed wheel; ``pytest gates/`` in the repository runs the same tests. One test
module per concern; no thresholds here: each test wires session fixtures (``lvm.pytest_plugin``) to
an ``lvm.gates`` function and hands its result to ``gate_status``.
"""
