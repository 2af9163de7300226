"""Structured JSON logs (python-json-logger) with the reconcile context in every line.

The controller sets `controller`, `reconcile_id` and `key` in context variables for the length
of one reconcile, so every line logged by the reconciler and anything it calls (on the same
task) carries them without passing a logger around.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import uuid
from collections.abc import Iterator
from contextvars import ContextVar
from typing import IO

from pythonjsonlogger.json import JsonFormatter

controller_var: ContextVar[str | None] = ContextVar("controller", default=None)
reconcile_id_var: ContextVar[str | None] = ContextVar("reconcile_id", default=None)
key_var: ContextVar[str | None] = ContextVar("key", default=None)

_CONTEXT_VARS = (controller_var, reconcile_id_var, key_var)


class ReconcileContextFilter(logging.Filter):
    """Copies the reconcile context variables that are set onto each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        for var in _CONTEXT_VARS:
            value = var.get()
            if value is not None:
                setattr(record, var.name, value)
        return True


@contextlib.contextmanager
def reconcile_context(controller: str, key: str) -> Iterator[str]:
    """Tag log lines with a fresh reconcile ID (yielded) for one reconcile of `key`."""
    reconcile_id = str(uuid.uuid4())
    tokens = [
        controller_var.set(controller),
        reconcile_id_var.set(reconcile_id),
        key_var.set(key),
    ]
    try:
        yield reconcile_id
    finally:
        for var, token in zip(_CONTEXT_VARS, tokens, strict=True):
            var.reset(token)


def configure_logging(
    level: int | str = logging.INFO,
    stream: IO[str] | None = None,
    logger: logging.Logger | None = None,
) -> logging.Handler:
    """Send `logger` (the root logger by default) to `stream` as one JSON object per line."""
    target = logger if logger is not None else logging.getLogger()
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(
        JsonFormatter(
            ["levelname", "name", "message"],
            rename_fields={"levelname": "level", "name": "logger"},
            timestamp=True,
        )
    )
    handler.addFilter(ReconcileContextFilter())
    for old in list(target.handlers):
        target.removeHandler(old)
    target.addHandler(handler)
    target.setLevel(level)
    return handler
