"""The tests' one waiting helper: what counts as "not yet", and what a timeout says."""

from __future__ import annotations

import time

import pytest

from tests.support.wait import wait_for


def test_returns_the_first_truthy_value_past_errors_and_reasons() -> None:
    answers = iter([ConnectionError("refused"), "replicas 1/2", 0, {"plan": 1}])

    def check() -> object:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert wait_for("a plan", check, timeout=5, every=0, retry_on=(ConnectionError,), not_yet=(str,)) == {"plan": 1}


def test_an_error_not_named_propagates() -> None:
    with pytest.raises(KeyError):
        wait_for("a key", lambda: {}["missing"], timeout=5, every=0)


def test_an_error_not_named_fails_at_once_without_waiting_out_the_timeout() -> None:
    calls = []

    def exited() -> bool:  # as OperatorProcess.wait_up's check does when the process is gone
        calls.append(time.monotonic())
        if len(calls) == 2:
            raise RuntimeError("operator exited with status 1; see operator.log")
        return False

    started = time.monotonic()
    with pytest.raises(RuntimeError, match="exited with status 1"):
        wait_for("the operator", exited, timeout=60, every=0.01)
    assert len(calls) == 2 and time.monotonic() - started < 5


def test_a_timeout_names_what_and_the_last_value() -> None:
    with pytest.raises(AssertionError, match=r"waiting for convergence; last: 'svc: no Deployment'"):
        wait_for("convergence", lambda: "svc: no Deployment", timeout=0.05, every=0.01, not_yet=(str,))
    with pytest.raises(AssertionError, match=r"last: 'ConnectionError: refused'"):
        wait_for("the exporter", lambda: (_ for _ in ()).throw(ConnectionError("refused")), timeout=0.05, every=0.01,
                 retry_on=(ConnectionError,))
