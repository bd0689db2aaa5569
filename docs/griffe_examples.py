"""A griffe extension for the API reference: read `Example:` docstring sections as examples.

The code base writes `Example:` (singular) above doctests; griffe's Google-style parser only
knows `Examples:`, and would render the doctest lines as prose. Loaded by mkdocs.yml.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_SINGULAR = re.compile(r"^(\s*)Example:\s*$", flags=re.M)


class ExampleSections(griffe.Extension):
    """Rename `Example:` section titles to `Examples:` in every loaded docstring."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _SINGULAR.sub(r"\1Examples:", obj.docstring.value)
