"""The symmetry plan, under its public name: everything of :mod:`symconv.core.symmetry`."""

from symconv.core import symmetry as _core
from symconv.core.symmetry import *  # noqa: F403 - this module is that one's public name

__all__ = list(_core.__all__)
