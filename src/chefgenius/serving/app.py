"""``chefgenius serve``: a page for cooks, a recipe API and OpenAI-compatible completions and chat.

FastAPI for the routes and request validation, uvicorn to serve them. Generation runs on one worker
(:mod:`serving.jobs`): requests are served one at a time in the order they came (a CPU or one GPU
gains nothing from running two at once), behind a bounded queue that answers 429 with an honest
``Retry-After``. Every request has one deadline; a client that goes away, a deadline that passes
and a shutdown cancel its job, which stops at its next token. Limits are checked before any work
(body size before parsing, prompt characters before tokenising). Every error is an HTTP status
with one sentence in the OpenAI error shape, 500 included. Models load lazily by name: ``final``
(or the model given) and each checkpoint of the run.

Imports of the torch side (generation, models, checkpoints) are inside the functions that use them,
here and in openai_api.py, jobs.py and streams.py: importing torch and transformers takes about 8 s
on the 2-core machine, and the server binds and answers ``/healthz`` before then.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import sys
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field

from chefgenius.serving.jobs import Cancelled, Job, QueueFull, WorkQueue, stopping_criteria
from chefgenius.serving.openai_api import (
    ApiError,
    ChatRequest,
    CompletionRequest,
    Decoded,
    chat_body,
    completion_body,
    decode,
    usage,
)
from chefgenius.serving.streams import error_body, event_stream, token_streamer

MAX_INGREDIENTS = 30
MAX_INGREDIENT_CHARS = 80
MAX_TITLE_CHARS = 120
MAX_BODY_BYTES = 1 << 20  # a recipe request is a few hundred bytes; a chat of 64 messages fits easily
CHARS_PER_TOKEN = 16  # a prompt longer than this many characters per model position cannot fit: refused untokenised
PAGE = Path(__file__).with_name("page.html")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
log = logging.getLogger("chefgenius.serve")

__all__ = ["ApiError", "CompletionRequest", "ChatRequest", "RecipeRequest", "Server", "Sources", "create_app"]


class RecipeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ingredients: list[str] = Field(min_length=1, max_length=MAX_INGREDIENTS)
    title: str | None = Field(None, max_length=MAX_TITLE_CHARS)
    preset: str = "greedy"
    seed: int = Field(0, ge=0, le=2**63 - 1)
    coverage: bool = False
    guard: bool = True
    max_new_tokens: int | None = Field(None, ge=1, le=1_000_000,
                                       description="Default: 256, or what the model's positions allow.")
    model: str | None = None
    stream: bool = False


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
    """The models, the work queue and the limits: everything the routes call."""

    def __init__(self, sources: Sources, *, max_queue: int = 8, timeout_s: float = 60.0, device: str = "cpu",
                 cached_models: int = 2, api_key: str | None = None, allowed_hosts: list[str] | None = None,
                 grace_s: float = 10.0, max_body_bytes: int = MAX_BODY_BYTES, docs: bool = False) -> None:
        self.sources, self.timeout_s, self.device = sources, timeout_s, device
        self.api_key, self.allowed_hosts, self.grace_s = api_key, allowed_hosts, grace_s
        self.max_body_bytes, self.docs = max_body_bytes, docs
        self.queue = WorkQueue(max_queue)
        self._loaded: OrderedDict[str, Any] = OrderedDict()
        self._cached = cached_models
        self._load_lock = threading.Lock()
        self._configs: dict[str, dict[str, Any]] = {}

    @property
    def max_queue(self) -> int:
        return self.queue.limit

    # ----- models ------------------------------------------------------------------------------

    def default_name(self) -> str:
        return next(iter(self.sources.names()))

    def known(self, name: str | None) -> str:
        """The model's name, or a 404 before any work is queued."""
        names = self.sources.names()
        name = name or self.default_name()
        if name not in names:
            raise ApiError(404, f"no model {name!r}; GET /v1/models lists them: {', '.join(names)}")
        return name

    def generator(self, name: str | None) -> tuple[str, Any]:
        from chefgenius.checkpoint import checkpoint_problem
        from chefgenius.generation.loading import load_generator

        name = self.known(name)
        with self._load_lock:
            if name not in self._loaded:
                path = self.sources.names()[name]
                problem = checkpoint_problem(path)
                if problem:
                    raise ApiError(409, f"model {name!r} does not verify ({problem}); choose another one")
                self._loaded[name] = g = load_generator(model=str(path), device=self.device)
                self.queue.watch(g.model)
                while len(self._loaded) > self._cached:
                    self._loaded.popitem(last=False)
            self._loaded.move_to_end(name)
            return name, self._loaded[name]

    def model_config(self, name: str) -> dict[str, Any]:
        """Model ``name``'s config.json, read without loading the model, so that what it bounds (prompt
        length, token ids) is refused in the request handler, before anything is queued or tokenised."""
        if name not in self._configs:
            from chefgenius.checkpoint.layout import model_dir

            path = self.sources.names()[name]  # a checkpoint keeps its model under model/, an export at its root
            found = next(p for p in (model_dir(path) / "config.json", path / "config.json") if p.exists())
            self._configs[name] = json.loads(found.read_text())
        return self._configs[name]

    def prompt_limit_chars(self, name: str) -> int:
        conf = self.model_config(name)
        return (conf.get("n_positions") or conf.get("max_position_embeddings") or 512) * CHARS_PER_TOKEN

    def check_prompt(self, name: str, texts: list[str]) -> None:
        limit = self.prompt_limit_chars(name)
        size = sum(len(t) for t in texts)
        if size > limit:
            raise ApiError(400, f"the prompt is {size} characters; this model reads at most "
                                f"{limit // CHARS_PER_TOKEN} tokens, so send at most {limit} characters")

    # ----- the queue ---------------------------------------------------------------------------

    def submit(self, fn: Callable[[Job], Any]) -> Job:
        """Queue ``fn(job)`` for the worker with this server's deadline, or refuse with a 429."""
        try:
            return self.queue.submit(Job(fn, time.monotonic() + self.timeout_s))
        except QueueFull as full:
            raise ApiError(429, str(full), {"Retry-After": str(full.retry_after_s)}) from None
        except Cancelled:
            raise ApiError(503, "the server is shutting down; retry on another instance") from None

    def failure(self, err: BaseException) -> tuple[int, str]:
        """HTTP status and sentence for a job that did not give an answer."""
        if isinstance(err, ApiError):
            return err.status, err.message
        if isinstance(err, (Cancelled, TimeoutError)):
            reason = getattr(err, "reason", "deadline")
            if reason == "shutdown":
                return 503, "the server is shutting down; the request was cancelled"
            if reason == "deadline":
                return 504, f"the request took longer than this server's limit of {self.timeout_s:g} s (--timeout)"
            return 499, "the client went away; the request was cancelled"
        log.error("generation failed: %r", err)
        return 500, f"generation failed on the server ({type(err).__name__}); the request can be retried"


# ----- the work (on the worker thread) ---------------------------------------------------------------


def recipe(server: Server, req: RecipeRequest, job: Job, emit: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The recipe API's work: validate against the model, generate, parse."""
    from chefgenius.data.recipe_format import TITLE_LABEL, title_prefix
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
                                  coverage=8.0 if req.coverage else 0.0, guard=req.guard)
    # Coverage picks the best of several decodes and beam search keeps several candidates: neither
    # has one text growing token by token, so their recipe arrives whole.
    streams = emit is not None and not req.coverage and PRESETS[req.preset].get("num_beams", 1) == 1
    if streams:  # decoding starts after the label (or the fixed title): it leads the first piece
        emit = _LedBy(title_prefix(req.title) if req.title else TITLE_LABEL, emit)
    streamer = token_streamer(g.tokenizer, emit) if streams else None
    try:
        out = generate_texts(g.model, g.tokenizer, g.is_seq2seq, ingredients, settings, title=req.title,
                             max_prompt_tokens=g.max_prompt_tokens, streamer=streamer,
                             stopping_criteria=stopping_criteria(job), check=job.check)
    except GenerationError as err:
        raise ApiError(400, str(err)) from None
    job.check()
    text = out.texts[0]
    _flush(emit)
    if emit is not None and streamer is None:
        emit(text)
    return {"model": name, "text": text, **recipe_record(ingredients, text)}


class _LedBy:
    """``emit`` whose first piece starts with ``lead``: nothing is sent before the first token exists,
    so a client that reads one event and leaves has cost one decoding step, not the set-up.
    :meth:`flush` sends the lead alone if no text came."""

    def __init__(self, lead: str, emit: Callable[[str], None]) -> None:
        self.pending, self.emit = [lead], emit

    def __call__(self, text: str) -> None:
        self.emit(self.pending.pop() + text if self.pending else text)

    def flush(self) -> None:
        if self.pending:
            self.emit(self.pending.pop())


def _flush(emit: Any) -> None:
    if isinstance(emit, _LedBy):
        emit.flush()


def _budget(g: Any, prompt_ids: list[int], asked: int) -> int:
    from chefgenius.models.builders import max_positions

    if g.is_seq2seq:
        return asked
    limit = max_positions(g.model)
    if len(prompt_ids) >= limit:
        raise ApiError(400, f"the prompt is {len(prompt_ids)} tokens, the model accepts fewer than {limit}; shorten it")
    if asked > limit:
        raise ApiError(400, f"max_tokens {asked} is beyond the model's {limit} positions")
    return min(asked, limit - len(prompt_ids))


def completion(server: Server, req: CompletionRequest, job: Job, emit: Callable[[str], None] | None = None
               ) -> tuple[str, Decoded, str]:
    """OpenAI ``/v1/completions``: the prompt text continued by the model."""
    prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
    if len(prompts) != 1 or not prompts[0].strip():
        raise ApiError(400, "prompt must be one non-empty string")
    name, g = server.generator(req.model)
    ids = g.tokenizer.encode(prompts[0], add_special_tokens=g.is_seq2seq)
    if req.echo and emit is not None:
        emit = _LedBy(prompts[0], emit)
    d = decode(g, ids, req, max_tokens=_budget(g, ids, req.max_tokens), top_k=req.logprobs if req.logprobs is not None
               else -1, job=job, emit=emit, stopping=stopping_criteria(job))
    _flush(emit)
    return name, d, prompts[0]


def chat(server: Server, req: ChatRequest, job: Job, emit: Callable[[str], None] | None = None) -> tuple[str, Decoded]:
    """OpenAI ``/v1/chat/completions``: the conversation mapped to the training prompt by the chat
    template saved with the tokenizer (the recipe template where an older tokenizer has none); the
    answer starts with the title label, as every training target does."""
    from chefgenius.data.recipe_format import CHAT_TEMPLATE, TITLE_LABEL
    from chefgenius.data.tokenization import encode_example

    messages = [m.model_dump(exclude_none=True) for m in req.messages]
    if not any(m["role"] == "user" and m.get("content") for m in messages):
        raise ApiError(400, "messages needs a user message with the ingredients, e.g. \"chicken, rice, onion\"")
    name, g = server.generator(req.model)
    template = getattr(g.tokenizer, "chat_template", None) or CHAT_TEMPLATE
    prompt = g.tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                             add_generation_prompt=False)
    if not prompt.split(":", 1)[-1].strip():
        raise ApiError(400, "the last user message names no ingredients; send e.g. \"chicken, rice, onion\"")
    src, _ = encode_example(g.tokenizer, prompt, None, is_seq2seq=g.is_seq2seq, max_prompt_tokens=10**9,
                            max_target_tokens=1)
    label = g.tokenizer.encode(TITLE_LABEL, add_special_tokens=False)
    if emit is not None:
        emit = _LedBy(TITLE_LABEL, emit)
    if g.is_seq2seq:
        d = decode(g, src, req, max_tokens=req.budget(), top_k=_chat_top_k(req), job=job, emit=emit,
                   stopping=stopping_criteria(job), decoder_prefix=[g.model.config.decoder_start_token_id, *label])
    else:
        ids = src + label
        d = decode(g, ids, req, max_tokens=_budget(g, ids, req.budget()), top_k=_chat_top_k(req), job=job, emit=emit,
                   stopping=stopping_criteria(job))
    _flush(emit)
    d.text = TITLE_LABEL + d.text
    return name, d


def _chat_top_k(req: ChatRequest) -> int:
    return (req.top_logprobs or 0) if req.logprobs else -1


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
        return f"{where!r} is not supported by this server; leave it out"
    if kind == "value_error":
        return str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if where in ("n", "best_of"):
        return f"{where} must be 1: this server gives one choice per request"
    if where == "suffix":
        return "suffix is not supported by this server; leave it out"
    return f"{where or 'body'}: {first.get('msg', 'invalid value')}"


async def _watch_disconnect(receive: Callable[[], Any], job: Job) -> None:
    """Cancel ``job`` when the client goes away (the ASGI server says ``http.disconnect``)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            job.cancel("disconnected")
            return


class Limits:
    """ASGI middleware in front of everything: the body bounded before it is read (413), the API key
    on every ``/v1`` route (401), the Host header when serving loopback only, and one structured log
    line per request (route, status, latency, model, tokens, cancelled)."""

    def __init__(self, app: Any, server: Server) -> None:
        self.app, self.server = app, server

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, rid = time.perf_counter(), uuid.uuid4().hex[:12]
        record: dict[str, Any] = {"id": rid, "method": scope["method"], "route": scope["path"], "status": None}
        scope.setdefault("state", {})["record"] = record
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}

        async def send_logged(message: dict) -> None:
            if message["type"] == "http.response.start":
                record["status"] = message["status"]
                message.setdefault("headers", []).append((b"x-request-id", rid.encode()))
            await send(message)

        try:
            refused = self._refusal(scope, headers)
            if refused is not None:
                return await _send_error(send_logged, *refused)
            seen = 0

            async def bounded_receive() -> dict:
                nonlocal seen
                message = await receive()
                if message["type"] == "http.request":
                    seen += len(message.get("body", b""))
                    if seen > self.server.max_body_bytes:
                        raise BodyTooLarge(413, self._too_large())
                return message

            await self.app(scope, bounded_receive, send_logged)
        finally:
            record["ms"] = round((time.perf_counter() - t0) * 1000, 1)
            log.info(json.dumps({k: v for k, v in record.items() if v is not None}))

    def _too_large(self) -> str:
        return f"the request body is larger than {self.server.max_body_bytes} bytes; send a shorter one"

    def _refusal(self, scope: dict, headers: dict[str, str]) -> tuple[int, str] | None:
        hosts = self.server.allowed_hosts
        if hosts is not None:
            host = headers.get("host", "").rsplit(":", 1)[0].strip("[]") if headers.get("host") else ""
            if host not in hosts:
                return 400, (f"Host {headers.get('host', '')!r} is not served here (this server listens on loopback "
                             "only); use http://127.0.0.1 or start it with --host")
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.server.max_body_bytes:
            return 413, self._too_large()
        if self.server.api_key and scope["path"].startswith("/v1"):
            given = headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {self.server.api_key}".encode()):
                return 401, ("missing or wrong API key: send the header 'Authorization: Bearer KEY' (the key "
                             "given to --api-key or CHEFGENIUS_API_KEY)")
        return None


def _body_too_large() -> type[Exception]:
    from starlette.exceptions import HTTPException

    class BodyTooLarge(HTTPException):
        """Raised while the body is read: FastAPI passes HTTP exceptions through its body parsing."""

    return BodyTooLarge


BodyTooLarge = _body_too_large()


async def _send_error(send: Callable, status: int, message: str) -> None:
    body = json.dumps(error_body(status, message)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def create_app(server: Server) -> Any:
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @asynccontextmanager
    async def lifespan(app: Any) -> Any:  # noqa: ARG001
        yield
        # uvicorn has stopped taking requests and waited its graceful time: cancel what is left.
        await asyncio.to_thread(server.queue.close, 0.0)

    docs = {} if server.docs else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title="chefgenius", version="1", lifespan=lifespan, **docs)

    def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(error_body(status, message), status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, err: ApiError) -> JSONResponse:  # noqa: ARG001
        return error(err.status, err.message, err.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:  # noqa: ARG001
        return error(400, _one_sentence(list(err.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException) -> JSONResponse:
        if err.status_code == 404:
            return error(404, f"no route {request.url.path}; the API is /v1/models, /v1/recipes, /v1/completions "
                              "and /v1/chat/completions")
        if err.status_code == 405:
            return error(405, f"{request.method} is not allowed on {request.url.path}")
        return error(err.status_code, str(err.detail))

    @app.exception_handler(Exception)
    async def _crash(request: Request, err: Exception) -> JSONResponse:  # noqa: ARG001
        log.exception("unhandled error")
        return error(500, f"the server failed on this request ({type(err).__name__}); it can be retried")

    async def answer(request: Request, fn: Callable[[Job], Any], record: Callable[[Any], None]) -> Any:
        job = server.submit(fn)
        watch = asyncio.create_task(_watch_disconnect(request.receive, job))
        try:
            result = await asyncio.wrap_future(job.future)
        except BaseException as err:  # noqa: BLE001 - every failure becomes a status
            if isinstance(err, asyncio.CancelledError):
                job.cancel("shutdown")
                raise
            request.scope["state"]["record"]["cancelled"] = job.cancelled
            raise ApiError(*server.failure(err)) from None
        finally:
            watch.cancel()
        record(result)
        return result

    def stream(request: Request, fn: Callable[[Job, Callable[[str], None]], Any], chunk: Callable[[str], Any],
               final: Callable[[Any], list[Any]]) -> StreamingResponse:
        loop = asyncio.get_running_loop()
        texts: asyncio.Queue = asyncio.Queue()

        def emit(text: str) -> None:
            loop.call_soon_threadsafe(texts.put_nowait, ("text", text))

        job = server.submit(lambda j: fn(j, emit))  # a full queue is a 429 here, not an event
        job.future.add_done_callback(lambda _: loop.call_soon_threadsafe(texts.put_nowait, ("done", None)))
        watch = asyncio.create_task(_watch_disconnect(request.receive, job))
        entry = request.scope["state"]["record"]

        def ended(cancelled: bool) -> None:
            watch.cancel()
            entry["cancelled"] = cancelled
            if job.future.done() and not job.future.exception():
                _account(entry, job.future.result())

        return StreamingResponse(event_stream(job, texts, chunk, final, server.failure, ended),
                                 media_type="text/event-stream")

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE.read_text()

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "default_model": server.default_name(), **server.queue.counts(),
                "limit": server.max_queue, "since_start": server.queue.stats()}

    def model_card(name: str, path: Path) -> dict[str, Any]:
        created = int(path.stat().st_mtime) if path.exists() else 0
        return {"id": name, "object": "model", "created": created, "owned_by": "chefgenius"}

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card(n, p) for n, p in server.sources.names().items()]}

    @app.get("/v1/models/{name}")
    def model(name: str) -> dict[str, Any]:
        names = server.sources.names()
        if name not in names:
            raise ApiError(404, f"no model {name!r}; GET /v1/models lists them: {', '.join(names)}")
        return model_card(name, names[name])

    @app.post("/v1/recipes")
    async def recipes(req: RecipeRequest, request: Request) -> Any:
        _check_recipe(req)
        request.scope["state"]["record"]["model"] = server.known(req.model)
        if not req.stream:
            return await answer(request, lambda job: recipe(server, req, job), lambda r: None)
        return stream(request, lambda job, emit: recipe(server, req, job, emit), lambda t: {"text": t},
                      lambda r: [{"recipe": r}])

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request) -> Any:
        name = server.known(req.model)
        server.check_prompt(name, [req.prompt] if isinstance(req.prompt, str) else req.prompt)
        req.stops()  # refused now, not as a stream's event
        req.bias(server.model_config(name)["vocab_size"])
        entry = request.scope["state"]["record"]
        entry.update(model=name, user=req.user)
        if not req.stream:
            out = await answer(request, lambda job: completion(server, req, job), lambda r: _account(entry, r))
            return completion_body(out[0], out[1], req, out[2])
        cid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())

        def chunk(text: str, finish: str | None = None) -> dict[str, Any]:
            return {"id": cid, "object": "text_completion", "created": created, "model": name,
                    "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]}

        def final(out: tuple[str, Decoded, str]) -> list[Any]:
            last = [chunk("", out[1].finish_reason)]
            if req.stream_options and req.stream_options.include_usage:
                last.append({**chunk(""), "choices": [], "usage": usage(out[1])})
            return last

        return stream(request, lambda job, emit: completion(server, req, job, emit), chunk, final)

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatRequest, request: Request) -> Any:
        name = server.known(req.model)
        server.check_prompt(name, [m.content if isinstance(m.content, str) else json.dumps(m.content)
                                   for m in req.messages])
        req.stops()  # refused now, not as a stream's event
        req.bias(server.model_config(name)["vocab_size"])
        entry = request.scope["state"]["record"]
        entry.update(model=name, user=req.user)
        if not req.stream:
            out = await answer(request, lambda job: chat(server, req, job), lambda r: _account(entry, r))
            return chat_body(out[0], out[1], req)
        cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        first = [True]

        def chunk(text: str | None, finish: str | None = None) -> dict[str, Any]:
            delta: dict[str, Any] = {}
            if first[0]:
                delta["role"], first[0] = "assistant", False
            if text is not None:
                delta["content"] = text
            return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": name,
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

        def final(out: tuple[str, Decoded]) -> list[Any]:
            last = [chunk(None, out[1].finish_reason)]
            if req.stream_options and req.stream_options.include_usage:
                last.append({**chunk(None), "choices": [], "usage": usage(out[1])})
            return last

        return stream(request, lambda job, emit: chat(server, req, job, emit), chunk, final)

    return _with_limits(app, server)


def _with_limits(app: Any, server: Server) -> Any:
    """The FastAPI app behind :class:`Limits`; ``.app`` reaches the FastAPI object (routes, state)."""
    wrapped = Limits(app, server)
    wrapped.routes = app.routes  # type: ignore[attr-defined]
    return wrapped


def _account(entry: dict[str, Any], result: Any) -> None:
    decoded = next((x for x in result if isinstance(x, Decoded)), None) if isinstance(result, tuple) else None
    if decoded is not None:
        entry.update(prompt_tokens=decoded.prompt_tokens, completion_tokens=decoded.completion_tokens)


def _check_recipe(req: RecipeRequest) -> None:
    """What can be refused before any model is touched."""
    from chefgenius.generation.decode import PRESETS

    ingredients = [" ".join(x.split()) for x in req.ingredients]
    if any(not x for x in ingredients):
        raise ApiError(400, "every ingredient must be a non-empty string")
    long = next((x for x in ingredients if len(x) > MAX_INGREDIENT_CHARS), None)
    if long is not None:
        raise ApiError(400, f"ingredient {long[:30]!r}... is longer than {MAX_INGREDIENT_CHARS} characters")
    if req.preset not in PRESETS:
        raise ApiError(400, f"unknown preset {req.preset!r}; choose one of {', '.join(PRESETS)}")


def start_in_thread(server: Server, host: str = "127.0.0.1", port: int = 0) -> tuple[Any, int]:
    """Serve the app from a background thread (tests, the load benchmark); returns the uvicorn server
    (set ``should_exit`` to stop it) and the port it listens on (``port=0``: a free one)."""
    import socket

    import uvicorn

    if port == 0:
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
    web = uvicorn.Server(uvicorn.Config(create_app(server), host=host, port=port, log_level="warning",
                                        access_log=False, timeout_graceful_shutdown=server.grace_s))
    thread = threading.Thread(target=web.run, daemon=True)
    thread.start()
    while not web.started:
        thread.join(0.05)
        if not thread.is_alive():
            raise RuntimeError(f"the server did not start on {host}:{port}")
    return web, port


def exposure_warning(host: str, port: int, api_key: str | None) -> str | None:
    """The loud line for a server reachable from other machines without a key, else None."""
    if host in LOOPBACK or api_key:
        return None
    return (f"WARNING: serving on {host}, reachable from other machines, with no API key: anyone who can reach "
            f"port {port} can generate on this machine. Pass --api-key KEY (or set CHEFGENIUS_API_KEY), or "
            "--host 127.0.0.1.")


def generation_threads(asked: int | None) -> int:
    """CPU threads for generation: as asked, else every core this process may use but one.

    The core left over is the HTTP side's (event loop, validation, tokenising the next request). With
    every core in generation, on the 2-core machine, each burst of HTTP work preempted a member of
    the intra-op team and the whole step waited for it: a step that takes 3 ms alone took up to 200 ms,
    an abandoned request ran on for 28-61 ms after its cancel and the worker served 1.46-1.57 requests/s;
    with one thread, 3.9 ms after a cancel (a step: 4.7 ms) and 1.82 requests/s (bench/serve_load.py).
    """
    return asked if asked is not None else max(1, len(os.sched_getaffinity(0)) - 1)


def serve(sources: Sources, *, host: str, port: int, device: str, max_queue: int, timeout_s: float,
          api_key: str | None = None, grace_s: float = 10.0, docs: bool = False, threads: int | None = None) -> None:
    import torch
    import uvicorn

    api_key = api_key or os.environ.get("CHEFGENIUS_API_KEY") or None
    loopback = host in LOOPBACK
    warning = exposure_warning(host, port, api_key)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    server = Server(sources, max_queue=max_queue, timeout_s=timeout_s, device=device, api_key=api_key,
                    allowed_hosts=list(LOOPBACK) if loopback else None, grace_s=grace_s, docs=docs)
    threads = generation_threads(threads)
    torch.set_num_threads(threads)
    print(f"generation uses {threads} CPU thread{'s' if threads > 1 else ''} of {len(os.sched_getaffinity(0))} "
          "(--threads)", file=sys.stderr, flush=True)
    server.generator(None)  # load the default model before accepting requests: a broken one fails here
    uvicorn.run(create_app(server), host=host, port=port, log_level="warning", access_log=False,
                timeout_graceful_shutdown=grace_s)
