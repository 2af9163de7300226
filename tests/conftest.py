"""Shared pytest set-up: warnings are errors (pyproject) and no test may leak asyncio tasks.

`--kubeconfig` is declared here, at the tests' root, so that pytest knows it whatever paths it
is given; tests/e2e/conftest.py is what uses it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

KUBECONFIG_ENV = "E2E_KUBECONFIG"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--kubeconfig",
        type=Path,
        default=os.environ.get(KUBECONFIG_ENV) or None,
        help=(
            "run the e2e suite against the existing cluster of this admin kubeconfig (kind in "
            "hosted CI) instead of starting a local kube-apiserver; tests marked owns_apiserver "
            f"are deselected. Default: ${KUBECONFIG_ENV}, else a local sandbox."
        ),
    )


@pytest.fixture(autouse=True)
async def no_leaked_tasks() -> AsyncIterator[None]:
    """Fail a test that leaves asyncio tasks running: they would outlive it silently."""
    before = asyncio.all_tasks()
    yield
    leaked = [
        t for t in asyncio.all_tasks() - before if not t.done() and t is not asyncio.current_task()
    ]
    if leaked:
        for task in leaked:
            task.cancel()
        pytest.fail(f"test left {len(leaked)} asyncio task(s) running: {leaked}")
