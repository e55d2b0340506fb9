"""Root conftest: registers the lvm gate options for any pytest invocation from the project root.

When the package is installed, its pytest11 entry point (named ``lvm.pytest_plugin``) has already
loaded the plugin and this line is a no-op; from a plain checkout it loads it.
"""

pytest_plugins = ["lvm.pytest_plugin"]
