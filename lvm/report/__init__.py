"""gate results -> reports. ``results`` reads and writes the versioned results file, ``regression``
holds the one regression verdict (used by ``lvm compare``, the pytest plugin and CI), ``rows`` turns
results files into ranked leaderboard rows, ``render`` writes them as Markdown, CSV and HTML,
``plots`` draws the figures, and ``leaderboard`` holds the ``lvm leaderboard`` / ``lvm compare``
entry points.
"""
