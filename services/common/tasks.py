"""Background loops: cancellation a library swallowed, and errors reported once."""

from __future__ import annotations

import asyncio
import logging


def honour_cancellation() -> None:
    """Raise CancelledError if this task was asked to stop and is still running.

    redis-py 8.1 sometimes finishes a pipeline instead of raising the CancelledError that
    landed in the middle of it (measured: 2 of 80 cancels at random points), leaving the
    task running with the request pending. A background loop calls this on every turn so
    such a request still stops it at once instead of leaving a shutdown hanging.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class ErrorOnce:
    """How a background loop reports trouble: once per distinct error, not once per turn.

    An unexpected error is logged with its traceback; an expected one (a dependency down)
    as one warning line. Then nothing more until the error changes or the loop recovers,
    so a loop retrying every few milliseconds never floods the log, and never hides a bug.
    """

    def __init__(self, logger: logging.Logger, what: str) -> None:
        self.logger = logger
        self.what = what
        self.last: str | None = None

    def note(self, exc: BaseException, *, expected: bool = False) -> None:
        key = f"{type(exc).__qualname__}: {exc}"[:300]
        if key == self.last:
            return
        self.last = key
        if expected:
            self.logger.warning("%s waiting: %r", self.what, exc)
        else:
            self.logger.error("%s failed unexpectedly; retrying", self.what, exc_info=exc)

    def clear(self) -> None:
        if self.last is not None:
            self.logger.info("%s resumed", self.what)
        self.last = None
