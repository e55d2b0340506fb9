"""gate results -> reports. ``recorder`` turns each gate's result into one typed row (``schemas.ResultRow``)
and writes the run's results file (the pytest plugin's hooks delegate to it), ``results`` reads and writes the
versioned results file, ``regression`` holds the one regression verdict (used by ``lvm compare``, the recorder
and CI), ``rows`` turns results files into ranked leaderboard rows, ``render`` writes them as Markdown, CSV and
HTML, ``plots`` draws the figures, and ``leaderboard`` holds the ``lvm leaderboard`` / ``lvm compare`` entry
points.
"""
