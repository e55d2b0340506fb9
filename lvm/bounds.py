"""Numbers a user types, checked once where they are declared.

``number(kind, lo, hi)`` is an argparse ``type``: a command-line option declares its bounds next to
itself (``type=number(int, 1, 65_536)``), and a value that is not a finite number of that kind, or
lies outside them, is refused by the parser with one line and exit 2 before anything runs — no
library traceback, no half-written output. ``check_number`` applies the same rule to a value read
from a file (a profile, a config). ``Bound`` describes the range in messages and ``--help``.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Bound:
    """A closed or half-open range of ``kind`` (int or float) values; None = unbounded on that side."""

    kind: type
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False  # lo itself is excluded (e.g. a learning rate > 0)

    def _fmt(self, v: float) -> str:
        return str(int(v)) if self.kind is int else f"{v:g}"

    def describe(self) -> str:
        noun = "an integer" if self.kind is int else "a number"
        if self.lo is not None and self.hi is not None:
            return f"{noun} in {'(' if self.lo_open else '['}{self._fmt(self.lo)}, {self._fmt(self.hi)}]"
        if self.lo is not None:
            return f"{noun} {'>' if self.lo_open else '>='} {self._fmt(self.lo)}"
        if self.hi is not None:
            return f"{noun} <= {self._fmt(self.hi)}"
        return f"a finite {'integer' if self.kind is int else 'number'}"

    def problem(self, value) -> str | None:
        """Why ``value`` is not acceptable, or None."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"expected {self.describe()}, got {value!r}"
        if self.kind is int and isinstance(value, float):
            return f"expected {self.describe()}, got {value!r}"
        try:
            f = float(value)
        except OverflowError:
            return f"{value} is out of range: expected {self.describe()}"
        if not math.isfinite(f):
            return f"expected {self.describe()}, got {value!r}"
        below = self.lo is not None and (f <= self.lo if self.lo_open else f < self.lo)
        above = self.hi is not None and f > self.hi
        if below or above:
            return f"{value!r} is out of range: expected {self.describe()}"
        return None


def number(kind: type, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False):
    """An argparse ``type`` parsing ``kind`` within [lo, hi] (``lo_open``: lo excluded)."""
    bound = Bound(kind, lo, hi, lo_open)

    def parse(text: str):
        try:
            value = kind(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"expected {bound.describe()}, got {text!r}") from None
        why = bound.problem(value)
        if why:
            raise argparse.ArgumentTypeError(why)
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its own messages
    parse.bound = bound  # type: ignore[attr-defined]
    return parse


def check_number(value, bound: Bound, where: str) -> None:
    """Raise ``LvmError`` (one line, naming ``where``) when ``value`` breaks ``bound``."""
    from lvm.errors import LvmError

    why = bound.problem(value)
    if why:
        raise LvmError(f"{where}: {why}")


# Shared ranges (the same quantity gets the same bound wherever it is typed)
SEED = number(int, 0, 2**32 - 1)
CTX = number(int, 1, 4096)
COUNT = number(int, 1, 2**31 - 1)
DIM = number(int, 1, 65_536)
