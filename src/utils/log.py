"""Our messages to the user that are not errors: one logger, ``lgfa``. The command lines show a
warning as one line ``warning: ...`` on stderr (``show_warnings``); a library user sees them through
Python's logging as usual."""
from __future__ import annotations

import logging
import sys

logger = logging.getLogger("lgfa")


def warn(message: str) -> None:
    logger.warning(message)


class _StderrNow(logging.StreamHandler):
    """A handler on whatever sys.stderr is when a record comes (test captures swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr  # not setStream: it would flush the previous stream, maybe closed by now
        super().emit(record)


def show_warnings() -> None:
    """Print our warnings to stderr as ``warning: <message>`` (idempotent)."""
    if not any(isinstance(h, _StderrNow) for h in logger.handlers):
        handler = _StderrNow(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logging.addLevelName(logging.WARNING, "warning")
