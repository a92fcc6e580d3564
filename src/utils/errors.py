"""User-facing errors: one clear line, no traceback at the entry points."""
import sys
from typing import Any, Callable


class UserError(Exception):
    """Bad input from the user (file, config value, prompt...). The message is one line."""


def first_line(e: BaseException) -> str:
    """The first non-empty line of an exception's message (or its type's name)."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


def exit_code(run: Callable[[], Any]) -> int:
    """A command-line tool's exit status: 0 after ``run()``, or 2 with its UserError as one
    ``error:`` line on stderr."""
    try:
        run()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
