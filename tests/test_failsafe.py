"""A failing fix is logged once, the generation goes on, and the report says it was not applied."""
import pytest

from lib_sdfix import failsafe
from lib_sdfix.failsafe import FixReport, log_once


def test_failure_falls_back_logs_once_and_is_reported(monkeypatch):
    report = FixReport()
    logged = []
    monkeypatch.setattr(failsafe.logger, "error", lambda msg, exc_info=None: logged.append((msg, exc_info)))

    def broken(x):
        raise RuntimeError("boom")

    results = [report.run("guard-test-unique", broken, lambda x: x * 2, 21) for _ in range(3)]
    assert results == [42, 42, 42]
    assert len(logged) == 1 and "guard-test-unique failed" in logged[0][0]
    assert isinstance(logged[0][1], RuntimeError)
    assert report.failed == {"guard-test-unique": "RuntimeError: boom"}
    assert "not applied: guard-test-unique (RuntimeError: boom)" in report.summary()


def test_success_is_counted():
    report = FixReport()
    assert report.run("resize", lambda: "fixed", lambda: "plain") == "fixed"
    assert report.applied == {"resize": 1} and report.summary() == ""


def test_interrupt_propagates():
    report = FixReport()

    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        report.run("guard", interrupted, lambda: None)


def test_notes_are_deduplicated():
    report = FixReport()
    report.note("a")
    report.note("a")
    report.note("")
    assert report.summary() == "a"


def test_log_once_key():
    assert log_once("unique-key-xyz", "first") is True
    assert log_once("unique-key-xyz", "second") is False
