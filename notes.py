"""Warnings as per-file notes, captured per thread.

A run decodes one file in one thread while a model works on another in a second, so a
warning must be credited to the file of the thread that issued it. `warnings.catch_warnings`
cannot do that: it swaps the process-wide `showwarning` and filter list on entry and back on
exit, so two threads inside it at once record each other's warnings (and restore each
other's state). Here one hook is installed once per process and left in place: it sends a
warning to the innermost `capture()` of the thread that issued it, and to the previous hook
for threads that capture nothing.

    with notes.capture() as got:   # got: list[str], the warnings this thread issued inside
        features = model.extract(audio)

Every warning reaches its capture, not only the first one from a line (the hook's filter is
"always"); deprecation warnings are dropped from notes (they are about our code, not the
file). In a thread that captures nothing, warnings show as Python shows them by default
(once per place) and the default-ignored categories stay quiet.
"""

from __future__ import annotations

import threading
import warnings
from contextlib import contextmanager
from typing import Iterator

_QUIET = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)
_ALWAYS = ("always", None, Warning, None, 0)

_local = threading.local()
_lock = threading.Lock()
_previous = None  # the hook that was in place before ours (for threads that capture nothing)
_shown: set = set()  # (text, category, filename, lineno) already shown outside captures


def _stack() -> list[list[str]]:
    if not hasattr(_local, "stack"):
        _local.stack = []
    return _local.stack


def _hook(message, category, filename, lineno, file=None, line=None) -> None:
    stack = _stack()
    if stack:
        if not issubclass(category, DeprecationWarning):
            text = str(message)
            if text not in stack[-1]:
                stack[-1].append(text)
        return
    if issubclass(category, _QUIET):
        return
    key = (str(message), category, filename, lineno)
    if key in _shown:  # Python's default: once per place
        return
    _shown.add(key)
    (_previous or warnings._showwarning_orig)(message, category, filename, lineno, file, line)


def _install() -> None:
    """Put the hook and its filter in place (again, where something reset them, e.g. a test harness)."""
    global _previous
    with _lock:
        if warnings.showwarning is not _hook:
            _previous = warnings.showwarning
            warnings.showwarning = _hook
        if not warnings.filters or warnings.filters[0] != _ALWAYS:
            warnings.simplefilter("always")  # inserts _ALWAYS first (and drops a duplicate of it)


@contextmanager
def capture() -> Iterator[list[str]]:
    """The warnings this thread issues inside the block, each text once, in order."""
    _install()
    got: list[str] = []
    stack = _stack()
    stack.append(got)
    try:
        yield got
    finally:
        stack.pop()
