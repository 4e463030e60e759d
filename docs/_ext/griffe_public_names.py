"""A griffe extension for the API reference (used by mkdocs.yml only).

``unidist_api/__init__.py`` defines the functions ``pipeline`` and ``reduce``, but the
package also has submodules of those names, and griffe, reading the source, lets the
submodule win (at run time the function wins: it is defined after the import). So
``::: unidist_api.pipeline`` would render the module. This extension keeps the function
found in ``__init__`` and, once the package is loaded (its aliases resolved while the
submodules are still reachable), puts it back under its public name, as Python does.
"""

from __future__ import annotations

from typing import Any

import griffe

PACKAGE = "unidist_api"


class PublicFunctionsWin(griffe.Extension):
    def __init__(self) -> None:
        super().__init__()
        self._functions: dict[str, griffe.Function] = {}

    def on_function_instance(self, *, func: griffe.Function, **kwargs: Any) -> None:
        if func.parent is not None and func.parent.path == PACKAGE:
            self._functions[func.name] = func

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if pkg.name != PACKAGE:
            return
        shadowed = {
            name: func
            for name, func in self._functions.items()
            if name in pkg.members and pkg.members[name].is_module
        }
        if not shadowed:
            return
        loader.resolve_aliases(implicit=True, external=False)
        for name, func in shadowed.items():
            pkg.members[name] = func
