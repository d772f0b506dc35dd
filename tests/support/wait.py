"""The one way tests wait for the cluster, the operator or a process to get somewhere."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60.0, every: float = 0.5, *,
             retry_on: tuple[type[BaseException], ...] = (), not_yet: tuple[type, ...] = ()) -> Any:
    """Call `check` every `every` seconds until it returns something truthy and return that; fail naming `what` and
    the last value after `timeout` seconds.

    `retry_on`: exceptions that mean "not yet" (a restarting apiserver, a target not up yet); the last one is reported.
    `not_yet`: types of truthy values that mean "not yet" too, such as a string saying what is still missing."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except retry_on as error:
            last = _describe(error)
        else:
            if last and not isinstance(last, not_yet):
                return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")


def _describe(error: BaseException) -> str:
    status = getattr(error, "status", None)  # kubernetes.client.ApiException prints its whole response otherwise
    return f"{type(error).__name__} {status}" if status is not None else f"{type(error).__name__}: {error}"
