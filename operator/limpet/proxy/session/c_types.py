"""Types from C extension modules that a build may lack.

``tools/native/build.py`` compiles each ``native_*.c`` of this package (the list is
``limpet.proxy.process.native.C_EXTENSIONS``), and CPython may be built without its own
``_sha256``. Where a module is missing, each caller falls back to a twin that answers
the same.
"""

from __future__ import annotations

import importlib


def c_type(module: str, name: str) -> object | None:
    """Attribute ``name`` of the extension module ``module``, or ``None`` where that
    module was not built."""
    try:
        found = importlib.import_module(module)
    except ImportError:
        return None
    got: object = getattr(found, name)
    return got
