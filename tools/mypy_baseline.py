"""Type-check lvm/ against the committed baseline: old errors pass, new ones fail.

    python tools/mypy_baseline.py check   # `make lint`: exit 1 on an error not in mypy-baseline.txt
    python tools/mypy_baseline.py sync    # `make mypy-baseline`: rewrite mypy-baseline.txt from the tree

mypy reads ``[tool.mypy]`` and mypy-baseline reads ``[tool.mypy_baseline]`` in pyproject.toml. The
baseline holds one line per error with the line number set to 0, sorted, so an edit elsewhere in a
file does not churn it; an error fixed in the tree passes ``check`` (the baseline only shrinks at
the next ``sync``). mypy itself crashing or failing on its configuration (exit 2) fails ``check``:
a silent empty output must never pass as "no new errors".
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_mypy() -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-error-summary", "--no-pretty", "--no-color-output"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if proc.returncode not in (0, 1):  # 0: clean, 1: type errors; anything else is mypy failing
        sys.stderr.write(proc.stdout + proc.stderr)
        sys.stderr.write(f"mypy exited {proc.returncode}\n")
        raise SystemExit(2)
    return proc.stdout


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in ("check", "sync"):
        sys.stderr.write(__doc__ or "")
        return 2
    command = "filter" if argv[0] == "check" else "sync"
    output = run_mypy()
    proc = subprocess.run(
        [sys.executable, "-m", "mypy_baseline", command, "--no-colors"], cwd=ROOT, input=output, text=True
    )
    if command == "sync" and proc.returncode == 0:
        n = sum(1 for line in (ROOT / "mypy-baseline.txt").read_text().splitlines() if line.strip())
        print(f"mypy-baseline.txt: {n} entries")
    return 1 if proc.returncode else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
