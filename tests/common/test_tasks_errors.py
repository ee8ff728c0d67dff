"""ErrorOnce: a loop's trouble is logged once per distinct error, a bug with its traceback."""

from __future__ import annotations

import logging

import pytest

from services.common.tasks import ErrorOnce


def test_an_error_is_logged_once_until_it_changes_or_clears(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = logging.getLogger("tests.loop")
    errors = ErrorOnce(log, "the loop")
    with caplog.at_level(logging.INFO, logger="tests.loop"):
        for _ in range(50):
            errors.note(KeyError("boom"))
        assert len(caplog.records) == 1
        [record] = caplog.records
        assert record.levelno == logging.ERROR and record.exc_info  # a bug: with traceback
        errors.note(ConnectionError("down"), expected=True)  # a different error
        assert caplog.records[-1].levelno == logging.WARNING
        assert caplog.records[-1].exc_info is None  # expected: one line, no traceback
        errors.note(ConnectionError("down"), expected=True)
        assert len(caplog.records) == 2
        errors.clear()
        assert caplog.records[-1].getMessage() == "the loop resumed"
        errors.clear()  # nothing to say twice
        errors.note(KeyError("boom"))  # the same bug again after a recovery: said again
        assert len(caplog.records) == 4
