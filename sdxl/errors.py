"""Errors that reach users: each message names the input and says how to fix it."""


class InputError(ValueError):
    """A request that cannot run as given. The message names the input and the fix."""
