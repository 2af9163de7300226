"""rbd-mirror-reconciler: makes ceph-csi RBD volumes usable again after an rbd-mirror failover."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("rbd-mirror-reconciler")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
