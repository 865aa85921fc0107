"""Import optional heavy dependencies only when a feature needs them."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from types import ModuleType

from rank1_integrations.errors import MissingDependencyError


def require(module: str, *, extras: Sequence[str], purpose: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` naming the extras that provide it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        # Only a missing top-level package is a missing dependency; a broken
        # install (an ImportError from inside the package) must surface as is.
        missing = getattr(err, "name", None)
        if missing is not None and module.split(".")[0] != missing.split(".")[0]:
            raise
        raise MissingDependencyError(module, extras, purpose) from err
