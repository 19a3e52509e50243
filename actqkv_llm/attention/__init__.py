"""Attention over sinks + retrieved blocks + local window, with one softmax."""

from .reference import attend
from .rope import rotate

__all__ = ["attend", "rotate"]
