"""The registry of training methods: the one place that knows every method by name.

Everything else asks a method object for what it needs (its module format, its training defaults, its capability
flags: see :mod:`scoreplex.methods.base`), never compares method names. A new method is a subclass of
:class:`~scoreplex.methods.base.Method` added here; the contract test (``tests/test_method_contract.py``) then covers
it without edits.
"""

from __future__ import annotations

from scoreplex.crossitem.method import CrossItemMethod
from scoreplex.errors import unknown_name
from scoreplex.moe.method import MoEStudentMethod

from .base import Capabilities, Method, MethodSettings, ParsedModule, TaskModel, load_strict, split_state
from .per_task import FullFineTune, HeadOnly, LoRA

METHODS: dict[str, Method] = {
    m.name: m for m in (FullFineTune(), LoRA(), HeadOnly(), MoEStudentMethod(), CrossItemMethod())
}
"""Every registered method by name."""

PER_TASK_METHODS = tuple(name for name, m in METHODS.items() if m.capabilities.trains_per_task)
"""Methods that train one task at a time (``scoreplex train``)."""


def get_method(name: str) -> Method:
    """The registered method called ``name``; UnknownNameError listing the valid names otherwise."""
    if name not in METHODS:
        raise unknown_name("training method", name, list(METHODS))
    return METHODS[name]


def methods_with(capability: str) -> list[str]:
    """Names of the methods whose :class:`Capabilities` flag ``capability`` is set (for help texts and errors)."""
    return [name for name, m in METHODS.items() if getattr(m.capabilities, capability)]


__all__ = [
    "METHODS",
    "PER_TASK_METHODS",
    "Capabilities",
    "Method",
    "MethodSettings",
    "ParsedModule",
    "TaskModel",
    "get_method",
    "load_strict",
    "methods_with",
    "split_state",
]
