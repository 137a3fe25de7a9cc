"""Errors a user can cause and fix: shown as one message, never a stack trace."""


class UserError(Exception):
    """A mistake in the user's input (config, path, model, device).

    The message names the thing that is wrong and how to fix it; the CLI prints
    it alone and exits non-zero.
    """
