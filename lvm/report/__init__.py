"""gate results -> reports. ``results`` reads and writes the versioned results file, ``regression``
holds the one regression verdict (used by ``lvm compare``, the pytest plugin and CI), and
``leaderboard`` turns results files into Markdown, CSV and HTML pages with plots.
"""
