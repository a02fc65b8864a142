"""A call that may never return, off the event loop: user code (an agent's plain function, an
evaluator plugin's) that Python cannot stop once it runs past its deadline."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any


def in_daemon_thread(fn: Callable[..., Any], *args: Any, name: str = "evalstream-call"
                     ) -> asyncio.Future:
    """fn(*args) in a daemon thread of its own; its result (or exception) on the running loop's
    future. A call past its caller's timeout runs on, ignored, and does not hold up the process's
    exit, as a pool's threads would (they are waited for). The caller bounds how many run."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():  # the caller gave up waiting
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def target() -> None:
        try:
            outcome = (fn(*args), None)
        except BaseException as e:  # noqa: BLE001 - handed to the caller, whatever it is
            outcome = (None, e)
        try:
            loop.call_soon_threadsafe(settle, *outcome)
        except RuntimeError:  # the loop is closed: nobody waits for this call any more
            pass

    threading.Thread(target=target, name=name, daemon=True).start()
    return future
