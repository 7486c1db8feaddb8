"""The base of every error whose message is written for the user.

Raise a subclass with one line the user can act on (what went wrong, what to do); the tab,
the HTTP API and the CLI show that line as it is (`trt_core/jobs.py: user_message`,
`trt_core/cli/errors.py`). Any other exception is reported by its type, with the traceback
in the log. It lives at the package root, importing nothing, so every layer (models/ too)
can derive from it.
"""


class UserError(Exception):
    """A failure whose message is the line the user sees."""
