"""User-facing errors: one clear line, no traceback at the entry points."""


class UserError(Exception):
    """Bad input from the user (file, config value, prompt...). The message is one line."""
