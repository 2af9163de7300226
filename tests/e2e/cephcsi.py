"""Moved to `reconciler.sandbox.cephcsi` (the demo needs it too); kept while callers move over."""

from reconciler.sandbox.cephcsi import *  # noqa: F403
