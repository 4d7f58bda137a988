"""Text out of the worker as it is generated: a transformers streamer, and server-sent events that
cancel their job when the client goes away."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any


def token_streamer(tokenizer: Any, on_text: Callable[[str], None]) -> Any:
    """A streamer that hands each finalised piece of new text to ``on_text`` (the prompt skipped)."""
    from transformers import TextStreamer

    class Streamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text:
                on_text(text)

    return Streamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


def sse(data: Any) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


def error_body(status: int, message: str, kind: str | None = None) -> dict[str, Any]:
    """The OpenAI error shape, for every status."""
    kind = kind or {401: "authentication_error", 404: "not_found_error", 408: "timeout", 413: "invalid_request_error",
                    429: "rate_limit_error", 503: "server_unavailable", 504: "timeout"}.get(
        status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": status}}


async def event_stream(job: Any, texts: asyncio.Queue, chunk: Callable[[str], Any],
                       final: Callable[[Any], Iterable[Any]], failure: Callable[[BaseException], tuple[int, str]],
                       on_end: Callable[[bool], None]) -> AsyncIterator[str]:
    """Events for one streamed job: each text piece as ``chunk(text)``, then ``final(result)`` or one
    error event, then ``[DONE]``. Closed early (client gone, server stopping), it cancels the job, so
    the worker stops at its next token; ``on_end(cancelled)`` runs either way."""
    ended = False
    try:
        while True:
            try:
                kind, value = await asyncio.wait_for(texts.get(), timeout=job.remaining_s() + 1.0)
            except TimeoutError:  # still queued at its deadline: nobody would read the answer
                if job.future.done() and job.future.exception() is None:
                    continue  # it finished just now: its events are already queued
                job.cancel("deadline")
                status, message = failure(job.future.exception() if job.future.done() else TimeoutError())
                yield sse(error_body(status, message))
                break
            if kind == "text":
                yield sse(chunk(value))
                continue
            err = job.future.exception()
            if err is not None:
                status, message = failure(err)
                yield sse(error_body(status, message))
            else:
                for item in final(job.future.result()):
                    yield sse(item)
            break
        ended = True
        yield sse("[DONE]")
    finally:
        if not ended or not job.future.done():
            job.cancel("disconnected")
        on_end(job.cancelled)
