"""Numeric flags are refused at their declared bounds, before anything runs (issue 20: flags that reached
library internals gave sentence-transformers tracebacks and left `.partial-*` folders; nonsense settings
built a dataset and exited 0)."""

from __future__ import annotations

import argparse

import pytest

from lvm.bounds import Bound, check_number, number
from lvm.cli import build_parser, main
from lvm.errors import LvmError

REFUSED = [
    ["build-data", "--batch-size", "0"],
    ["build-data", "--batch-size", "-1"],
    ["build-data", "--max-length", "-1"],
    ["build-data", "--max-length", "0"],
    ["build-data", "--max-length", "1000000000"],
    ["build-data", "--min-chars", "-1"],
    ["build-data", "--target-chars", "0"],
    ["build-data", "--target-chars", "-5"],
    ["build-data", "--target-chars", "10", "--min-chars", "20"],
    ["build-data", "--ood-fraction", "nan"],
    ["build-data", "--val-fraction", "1.5"],
    ["build-data", "--seed", str(2**70)],
    ["build-data", "--nprobe", "0"],
    ["synth", "--dim", "1e3"],
    ["synth", "--coherence", "inf"],
    ["synth", "--duplicates", "1"],
    ["filter", "DS", "--ctx", "0"],
    ["filter", "DS", "--ctx", "3", "--min-ctx", "4"],
    ["coherence", "DS", "--segment-width", "-3"],
    ["calibrate", "DS", "--reference", "R", "--seeds", "1"],
]


@pytest.mark.parametrize("argv", REFUSED, ids=[" ".join(a) for a in REFUSED])
def test_out_of_bounds_flags_are_one_line_and_exit_2(argv, tmp_path, capsys):
    out = tmp_path / "out"
    tail = [] if argv[0] in ("filter", "coherence", "calibrate") and "--out" in argv else ["--out", str(out)]
    if argv[0] == "coherence":
        tail = []
    with pytest.raises(SystemExit) as exc:
        main([*argv, *tail])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lvm: error:") and len(err.splitlines()) == 1, err
    assert not out.exists() and list(tmp_path.iterdir()) == [], "nothing is written by a refused command"


def test_every_numeric_option_declares_its_bounds():
    """No bare int/float flag: each numeric option carries a Bound (train's come from TrainSettings)."""
    parser = build_parser(with_train_options=False)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    bare = [
        f"{name} {' '.join(a.option_strings)}"
        for name, p in sub.choices.items()
        for a in p._actions
        if a.type in (int, float)
    ]
    assert not bare, bare


def test_bound_rules():
    b = Bound(int, 1, 10)
    assert b.problem(1) is None and b.problem(10) is None
    assert "out of range" in b.problem(0) and "out of range" in b.problem(11)
    assert b.problem(1.5) and b.problem(True) and b.problem("3")
    assert "out of range" in Bound(int, 0, None).problem(-(10**400))
    assert Bound(float, 0.0, None, lo_open=True).problem(0.0)
    assert Bound(float).problem(float("nan")) and Bound(float).problem(10**400)
    with pytest.raises(LvmError, match=r"profile x: expected an integer in \[1, 10\], got 'a'"):
        check_number("a", b, "profile x")
    parse = number(float, 0.0, 1.0)
    assert parse("0.5") == 0.5
    for bad in ("1.01", "-0.1", "nan", "inf", "x", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(bad)
