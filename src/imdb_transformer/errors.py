"""The project's own errors: one base class, so the console script prints them as one line and
lets anything else (a real bug) keep its traceback."""

from __future__ import annotations


class ImdbError(Exception):
    """Base of every error this package raises on purpose: its message names the problem and the fix."""


class InputError(ImdbError, ValueError):
    """An argument, a text or a file that cannot be used as given."""


class TrainingDiverged(ImdbError, FloatingPointError):
    """The training loss became NaN or infinite."""
