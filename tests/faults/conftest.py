"""The fault suite's table in pytest's terminal summary, so a plain `make test` shows it."""

from __future__ import annotations

import pytest

from .checker import Result, details, table

RESULTS = pytest.StashKey[list[Result]]()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    results = terminalreporter.config.stash.get(RESULTS, None)
    if not results:
        return
    terminalreporter.section("fault suite (short form)")
    terminalreporter.write_line(table(results, "faults x backend, counts per run"))
    if text := details(results):
        terminalreporter.write_line(text)
