"""The gate suite: fixtures and options come from the lvm pytest plugin (lvm/pytest_plugin.py)."""
