"""The one exception type for the user's mistakes."""


class UserError(Exception):
    """A mistake the user can fix: the CLI prints its one-line message, no traceback."""
