"""Each layer documents its errors as one tree in its errors module's docstring (as httpx does):
every error class defined there must appear in it."""

from __future__ import annotations

import inspect
from types import ModuleType

import pytest

from reconciler import errors
from reconciler.csi import errors as csi_errors
from reconciler.k8s import errors as k8s_errors
from reconciler.sandbox import errors as sandbox_errors


@pytest.mark.parametrize("module", [errors, csi_errors, k8s_errors, sandbox_errors])
def test_every_error_class_is_in_its_modules_tree(module: ModuleType) -> None:
    defined = [
        name
        for name, value in vars(module).items()
        if inspect.isclass(value)
        and issubclass(value, BaseException)
        and value.__module__ == module.__name__
    ]
    assert defined
    tree = module.__doc__ or ""
    missing = [name for name in defined if name not in tree]
    assert not missing, f"{module.__name__}: not in its docstring tree: {missing}"
