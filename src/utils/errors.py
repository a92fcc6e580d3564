"""User-facing errors: one clear line, no traceback at the entry points."""


class UserError(Exception):
    """Bad input from the user (file, config value, prompt...). The message is one line."""


def first_line(e: BaseException) -> str:
    """The first non-empty line of an exception's message (or its type's name)."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__
