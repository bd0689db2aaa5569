"""The examples in the data package's docstrings run as written (those needing real files are marked +SKIP)."""

import doctest
import importlib
import pkgutil

import pytest

import mlora_peft.data

MODULES = sorted(name for _, name, _ in pkgutil.iter_modules(mlora_peft.data.__path__))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(f"mlora_peft.data.{name}")
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
