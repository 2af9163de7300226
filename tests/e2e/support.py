"""Reporting measured figures from end-to-end tests to the terminal."""

from __future__ import annotations

import pytest


def report(config: pytest.Config, line: str) -> None:
    """Print a measured figure on the terminal even while pytest captures output."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        return
    # Fixtures run with fd 1 redirected; the figure must reach the real terminal (and CI's log).
    with capture.global_and_fixture_disabled():
        reporter.write_line(line)
