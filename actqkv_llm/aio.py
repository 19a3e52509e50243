"""Async adapters for the blocking engine, shared by the integrations: run a call, or drive a
token iterator, in a worker thread without blocking the event loop."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from typing import Any, AsyncIterator, Callable, Iterator


def run_in_thread_async(fn: Callable[[], Any]) -> "asyncio.Future[Any]":
    """Run ``fn`` in the event loop's default executor (keeps context variables, e.g. callbacks)."""
    ctx = contextvars.copy_context()
    return asyncio.get_running_loop().run_in_executor(None, ctx.run, fn)


async def iterate_in_thread(make_iter: Callable[[], Iterator[Any]]) -> AsyncIterator[Any]:
    """Drive a blocking iterator in its own thread, handing items to the event loop through a queue.

    If the consumer stops early, the producer notices at its next item and stops generating.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    cancelled = threading.Event()
    done = object()

    def put(item: Any) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            cancelled.set()

    def produce() -> None:
        try:
            for item in make_iter():
                if cancelled.is_set():
                    break
                put((False, item))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
            put((True, exc))
        finally:
            put(done)

    ctx = contextvars.copy_context()
    threading.Thread(target=ctx.run, args=(produce,), name="actqkv-astream", daemon=True).start()
    try:
        while True:
            item = await queue.get()
            if item is done:
                return
            failed, value = item
            if failed:
                raise value
            yield value
    finally:
        cancelled.set()
