"""``chefgenius serve``: a page, a recipe API and OpenAI-compatible completions over a trained run.

FastAPI for the routes and request validation (pydantic, which the config already uses), uvicorn
to serve them; generation runs on one worker thread, so requests are served one at a time in the
order they came (a CPU or one GPU gains nothing from running two at once), behind a bounded queue
that answers 429 with ``Retry-After`` when full. Every bad request gets a 4xx whose body is one
sentence, in the OpenAI error shape (``{"error": {"message", "type"}}``), so existing clients show it.
Models load lazily by name: ``final`` (or the model given) and each checkpoint of the run.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

MAX_INGREDIENTS = 30
MAX_INGREDIENT_CHARS = 80
MAX_TITLE_CHARS = 120
PAGE = Path(__file__).with_name("page.html")


class ApiError(Exception):
    """A request the server refuses: HTTP status and one sentence."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class RecipeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ingredients: list[str] = Field(min_length=1, max_length=MAX_INGREDIENTS)
    title: str | None = Field(None, max_length=MAX_TITLE_CHARS)
    preset: str = "greedy"
    seed: int = 0
    coverage: bool = False
    guard: bool = True
    max_new_tokens: int | None = Field(None, ge=1, description="Default: 256, or what the model's positions allow.")
    model: str | None = None
    stream: bool = False


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields (user, logprobs...) we do not use
    prompt: str | list[str]
    model: str | None = None
    max_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int = 0
    stream: bool = False
    n: int = Field(1, ge=1, le=1)


@dataclass
class Sources:
    """What can be served, by name: the default model and the run's checkpoints."""

    default: Path
    run: Path | None

    def names(self) -> dict[str, Path]:
        from chefgenius.checkpoint import list_checkpoints
        from chefgenius.checkpoint.run_directory import RunDirectory

        out = {"final" if self.run is not None and self.default == RunDirectory(self.run).final
               else self.default.name: self.default}
        if self.run is not None:
            for info in reversed(list_checkpoints(RunDirectory(self.run).checkpoints)):
                out[info.path.name] = info.path
        return out


class Server:
    """The models, the worker thread and the queue; everything the routes call."""

    def __init__(self, sources: Sources, *, max_queue: int = 8, timeout_s: float = 60.0, device: str = "cpu",
                 cached_models: int = 2) -> None:
        self.sources, self.max_queue, self.timeout_s, self.device = sources, max_queue, timeout_s, device
        self._loaded: OrderedDict[str, Any] = OrderedDict()
        self._cached = cached_models
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chefgenius-generate")
        self._lock = threading.Lock()
        self._waiting = 0
        self._seconds = 2.0  # running estimate of one request's time, for Retry-After

    # ----- models ------------------------------------------------------------------------------

    def default_name(self) -> str:
        return next(iter(self.sources.names()))

    def generator(self, name: str | None) -> tuple[str, Any]:
        from chefgenius.generation.loading import load_generator

        names = self.sources.names()
        name = name or self.default_name()
        if name not in names:
            raise ApiError(404, f"no model {name!r}; GET /v1/models lists them: {', '.join(names)}")
        if name not in self._loaded:
            from chefgenius.checkpoint import checkpoint_problem

            problem = checkpoint_problem(names[name])
            if problem:
                raise ApiError(409, f"model {name!r} does not verify ({problem}); choose another one")
            self._loaded[name] = load_generator(model=str(names[name]), device=self.device)
            while len(self._loaded) > self._cached:
                self._loaded.popitem(last=False)
        self._loaded.move_to_end(name)
        return name, self._loaded[name]

    # ----- the queue ---------------------------------------------------------------------------

    def admit(self) -> None:
        with self._lock:
            if self._waiting >= self.max_queue:
                wait = max(1, round(self._seconds * self._waiting))
                raise ApiError(429, f"{self._waiting} requests are queued, the limit is {self.max_queue}; retry in "
                                    f"about {wait} s", {"Retry-After": str(wait)})
            self._waiting += 1

    def release(self, seconds: float | None) -> None:
        with self._lock:
            self._waiting -= 1
            if seconds is not None:
                self._seconds = 0.8 * self._seconds + 0.2 * seconds

    def run(self, fn: Any) -> Any:
        """Run ``fn`` on the worker thread (admitted first); its ApiError passes through."""
        self.admit()
        t0 = time.perf_counter()
        done = None
        try:
            result = self._worker.submit(fn).result()
            done = time.perf_counter() - t0
            return result
        finally:
            self.release(done)

    def stream(self, fn: Any) -> Iterator[Any]:
        """Run ``fn(emit)`` on the worker thread, yielding what it emits as it goes, then its result.

        Admitted now, before the response starts, so that a full queue is a 429, not an event; the
        slot is given back when the stream ends, or when it is dropped unread (a client gone early)."""
        self.admit()
        released = threading.Event()

        def release_once(seconds: float | None) -> None:
            if not released.is_set():
                released.set()
                self.release(seconds)

        stream = self._streamed(fn, release_once)
        weakref.finalize(stream, release_once, None)
        return stream

    def _streamed(self, fn: Any, release: Any) -> Iterator[Any]:
        events: queue.Queue = queue.Queue()
        t0 = time.perf_counter()

        def job() -> None:
            try:
                events.put(("done", fn(lambda text: events.put(("text", text)))))
            except BaseException as err:  # noqa: BLE001 - handed to the streaming side
                events.put(("error", err))

        self._worker.submit(job)
        finished = False
        try:
            while True:
                kind, value = events.get(timeout=self.timeout_s + 30)
                if kind == "text":
                    yield value
                elif kind == "error":
                    raise value
                else:
                    finished = True
                    yield ("result", value)
                    return
        finally:
            release(time.perf_counter() - t0 if finished else None)


# ----- generation -------------------------------------------------------------------------------------


def _streamer(tokenizer: Any, emit: Any, timeout_s: float) -> Any:
    from transformers import TextIteratorStreamer

    class Emitting(TextIteratorStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text:
                emit(text)

    return Emitting(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=timeout_s)


def recipe(server: Server, req: RecipeRequest, emit: Any | None = None) -> dict[str, Any]:
    """The recipe API's work (on the worker thread): validate against the model, generate, parse."""
    from chefgenius.generation.decode import (
        PRESETS,
        GenerationError,
        GenerationSettings,
        fit_prompt,
        generate_texts,
        recipe_record,
    )
    from chefgenius.models.builders import max_positions

    ingredients = [" ".join(x.split()) for x in req.ingredients]
    if any(not x for x in ingredients):
        raise ApiError(400, "every ingredient must be a non-empty string")
    long = next((x for x in ingredients if len(x) > MAX_INGREDIENT_CHARS), None)
    if long is not None:
        raise ApiError(400, f"ingredient {long[:30]!r}... is longer than {MAX_INGREDIENT_CHARS} characters")
    if req.preset not in PRESETS:
        raise ApiError(400, f"unknown preset {req.preset!r}; choose one of {', '.join(PRESETS)}")
    name, g = server.generator(req.model)
    limit = None if g.is_seq2seq else max_positions(g.model)
    if limit is not None and req.max_new_tokens is not None and req.max_new_tokens >= limit:
        raise ApiError(400, f"max_new_tokens {req.max_new_tokens} is beyond the model's {limit} positions; ask for "
                            f"at most {limit - g.max_prompt_tokens - 16}")
    _, dropped = fit_prompt(g.tokenizer, ingredients, is_seq2seq=g.is_seq2seq, max_prompt_tokens=g.max_prompt_tokens)
    if dropped:
        raise ApiError(400, f"the ingredient list is longer than the {g.max_prompt_tokens} prompt tokens the model "
                            f"was trained on; send at most {len(ingredients) - len(dropped)} of these ingredients")
    settings = GenerationSettings(preset=req.preset, max_new_tokens=req.max_new_tokens or 256, seed=req.seed,
                                  coverage=8.0 if req.coverage else 0.0, guard=req.guard, max_time=server.timeout_s)
    streamer = _streamer(g.tokenizer, emit, server.timeout_s) if emit is not None and not req.coverage else None
    if streamer is not None:
        from chefgenius.data.recipe_format import TITLE_LABEL, title_prefix

        emit(title_prefix(req.title) if req.title else TITLE_LABEL)  # decoding starts after it
    try:
        out = generate_texts(g.model, g.tokenizer, g.is_seq2seq, ingredients, settings, title=req.title,
                             max_prompt_tokens=g.max_prompt_tokens, streamer=streamer)
    except GenerationError as err:
        raise ApiError(400, str(err)) from None
    text = out.texts[0]
    if emit is not None and streamer is None:
        emit(text)  # coverage picks the best of several decodes: it arrives whole
    return {"model": name, "text": text, **recipe_record(ingredients, text)}


def completion(server: Server, req: CompletionRequest, emit: Any | None = None) -> dict[str, Any]:
    """OpenAI ``/v1/completions`` (on the worker thread): the prompt text continued by the model."""
    import torch

    from chefgenius.models.builders import max_positions
    from chefgenius.runtime.devices import forked_rng

    prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
    if len(prompts) != 1 or not prompts[0].strip():
        raise ApiError(400, "prompt must be one non-empty string")
    name, g = server.generator(req.model)
    ids = g.tokenizer.encode(prompts[0], add_special_tokens=g.is_seq2seq)
    limit = max_positions(g.model) if not g.is_seq2seq else getattr(g.model.config, "n_positions", 512)
    if len(ids) >= limit:
        raise ApiError(400, f"the prompt is {len(ids)} tokens, the model accepts fewer than {limit}; shorten it")
    max_tokens = min(req.max_tokens, limit - len(ids)) if not g.is_seq2seq else req.max_tokens
    if req.max_tokens > limit:
        raise ApiError(400, f"max_tokens {req.max_tokens} is beyond the model's {limit} positions")
    device = next(g.model.parameters()).device
    kwargs: dict[str, Any] = {"max_new_tokens": max_tokens, "max_time": server.timeout_s,
                              "eos_token_id": g.tokenizer.eos_token_id, "pad_token_id": g.tokenizer.pad_token_id}
    if req.temperature > 0:
        kwargs.update(do_sample=True, temperature=req.temperature, top_p=req.top_p, top_k=0)
    else:
        kwargs.update(do_sample=False)
    if emit is not None:
        kwargs["streamer"] = _streamer(g.tokenizer, emit, server.timeout_s)
    g.model.eval()
    x = torch.tensor([ids], device=device)
    with torch.no_grad(), forked_rng(device):
        torch.manual_seed(req.seed)
        out = g.model.generate(input_ids=x, attention_mask=torch.ones_like(x), **kwargs)
    new = out[0] if g.is_seq2seq else out[0, len(ids):]
    text = g.tokenizer.decode(new, skip_special_tokens=True)
    finished = bool(len(new) and int(new[-1]) == g.tokenizer.eos_token_id)
    return {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
            "model": name, "choices": [{"text": text, "index": 0, "logprobs": None,
                                        "finish_reason": "stop" if finished else "length"}],
            "usage": {"prompt_tokens": len(ids), "completion_tokens": int(len(new)),
                      "total_tokens": len(ids) + int(len(new))}}


# ----- the app ----------------------------------------------------------------------------------------


def _one_sentence(errors: list[dict[str, Any]]) -> str:
    first = errors[0]
    where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
    kind = first.get("type", "")
    if kind == "json_invalid":
        return f"the request body is not valid JSON ({first.get('ctx', {}).get('error', 'malformed')})"
    if kind in ("list_type", "string_type") and where == "ingredients":
        return "ingredients must be a list of strings, e.g. [\"chicken\", \"rice\"]"
    if kind == "too_short" and where == "ingredients":
        return "ingredients is empty; send at least one"
    if kind == "too_long" and where == "ingredients":
        return f"too many ingredients; send at most {MAX_INGREDIENTS}"
    if kind == "missing":
        return f"{where} is required"
    if kind == "extra_forbidden":
        return f"unknown field {where!r}"
    return f"{where or 'body'}: {first.get('msg', 'invalid value')}"


def _sse(events: Iterator[Any], final: Any) -> Any:
    """Server-sent events: each item as ``data: JSON``, the result through ``final``, then ``[DONE]``; an
    error after the stream began is its last event."""
    from fastapi.responses import StreamingResponse

    def body() -> Iterator[str]:
        try:
            for item in events:
                if isinstance(item, tuple) and item[0] == "result":
                    last = final(item[1])
                    if last is not None:
                        yield f"data: {json.dumps(last)}\n\n"
                else:
                    yield f"data: {json.dumps(item)}\n\n"
        except ApiError as err:
            yield f"data: {json.dumps({'error': {'message': err.message, 'type': 'invalid_request_error'}})}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream")


def create_app(server: Server) -> Any:
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse

    app = FastAPI(title="chefgenius", version="1")

    def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        kind = "rate_limit_error" if status == 429 else "invalid_request_error"
        return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, err: ApiError) -> JSONResponse:  # noqa: ARG001
        return error(err.status, err.message, err.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:  # noqa: ARG001
        return error(400, _one_sentence(list(err.errors())))

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE.read_text()

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "default_model": server.default_name(), "queued": server._waiting}

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": n, "object": "model", "owned_by": "chefgenius", "path": str(p)}
                                           for n, p in server.sources.names().items()]}

    @app.post("/v1/recipes")
    def recipes(req: RecipeRequest) -> Any:
        if not req.stream:
            return server.run(lambda: recipe(server, req))
        first = server.stream(lambda emit: recipe(server, req, emit))
        return _sse(({"text": t} if isinstance(t, str) else t for t in first), lambda r: {"recipe": r})

    @app.post("/v1/completions")
    def completions(req: CompletionRequest) -> Any:
        if not req.stream:
            return server.run(lambda: completion(server, req))
        cid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())

        def chunk(text: str, finish: str | None = None, model: str = "") -> dict[str, Any]:
            return {"id": cid, "object": "text_completion", "created": created, "model": model or req.model or "",
                    "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]}

        events = server.stream(lambda emit: completion(server, req, emit))
        return _sse((chunk(t) if isinstance(t, str) else t for t in events),
                   lambda r: chunk("", r["choices"][0]["finish_reason"], r["model"]))

    return app


def start_in_thread(server: Server, host: str = "127.0.0.1", port: int = 0) -> tuple[Any, int]:
    """Serve the app from a background thread (tests, the load benchmark); returns the uvicorn server
    (set ``should_exit`` to stop it) and the port it listens on (``port=0``: a free one)."""
    import socket

    import uvicorn

    if port == 0:
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
    web = uvicorn.Server(uvicorn.Config(create_app(server), host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=web.run, daemon=True)
    thread.start()
    while not web.started:
        thread.join(0.05)
        if not thread.is_alive():
            raise RuntimeError(f"the server did not start on {host}:{port}")
    return web, port


def serve(sources: Sources, *, host: str, port: int, device: str, max_queue: int, timeout_s: float) -> None:
    import uvicorn

    server = Server(sources, max_queue=max_queue, timeout_s=timeout_s, device=device)
    server.generator(None)  # load the default model before accepting requests: a broken one fails here
    uvicorn.run(create_app(server), host=host, port=port, log_level="info")
