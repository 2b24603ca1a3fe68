"""The one exception type for bad user input.

The CLI turns a `UserError` into a single line on stderr and exit code 2; anything else is a bug
and keeps its traceback.
"""


class UserError(Exception):
    """Malformed config, missing file, bad field: the user can fix it from the message alone."""
