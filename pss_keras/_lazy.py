"""Package attributes imported on first use.

A sub-package names its public API in a table ``{name: submodule}``; the
submodule is imported when the name is first read, so that importing a
package (or reading one of its TensorFlow-free names) does not pay for
TensorFlow, and no package imports its siblings' code at import time.
"""

from __future__ import annotations

import importlib


def exports(package: str, table: dict[str, str]):
    """The ``__getattr__`` and ``__dir__`` of a package with lazy names.

    Args:
        package: the package's ``__name__``.
        table: ``{public name: submodule}`` (relative to ``package``).

    Returns:
        ``(__getattr__, __dir__)`` to assign at the package's top level.
    """

    def __getattr__(name: str):
        if name in table:
            return getattr(importlib.import_module(f"{package}.{table[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(table) | set(importlib.import_module(package).__dict__))

    return __getattr__, __dir__
