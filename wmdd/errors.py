"""The one exception type for bad user input.

Every stage's command line catches :class:`UserError`, prints its message (which
names the offending file or value and the fix) and exits with status 2, writing
no manifest.
"""


class UserError(Exception):
    """Bad input from the user: a path, a value or a file that cannot be used.

    The message must name the offending path or value and say how to fix it.
    """
