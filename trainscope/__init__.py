"""trainscope: training metrics from where they already are, into PostgreSQL, Workload status and Prometheus."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("trainscope")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"
