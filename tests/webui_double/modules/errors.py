"""modules/errors.py: the real one prints the traceback and carries on; the double records it."""
import traceback

DOUBLE_ONLY = {"reported"}  # what report() printed, for tests to require none

reported: list[str] = []


def report(message, *, exc_info=False):
    reported.append(message + ("\n" + traceback.format_exc() if exc_info else ""))
