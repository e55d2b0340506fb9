"""The data gates of the suite shipped in `lvm.gatesuite` (same tests, run from the repository)."""

from lvm.gatesuite.test_data_gates import *  # noqa: F401,F403
