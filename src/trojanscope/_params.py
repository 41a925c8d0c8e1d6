"""The estimator convention shared by detectors and mitigations (scikit-learn's ``get_params``).

Constructor parameters are stored under their own names; learned state ends in ``_``.
"""

from __future__ import annotations

from typing import Any


class Configurable:
    """``get_params()`` (the constructor parameters, recorded in every report) and ``name``.

    ``name`` is the registry name, or the class name for an unregistered subclass.
    """

    def get_params(self) -> dict[str, Any]:
        """The constructor parameters by name (learned state, ending in ``_``, left out)."""
        return {k: v for k, v in vars(self).items() if not k.endswith("_") and not k.startswith("_")}

    @property
    def name(self) -> str:
        return getattr(type(self), "registry_name", type(self).__name__)

    def __repr__(self) -> str:
        ps = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items()
                       if not hasattr(v, "state_dict"))  # a reference model would print pages
        return f"{type(self).__name__}({ps})"
