"""OpenAI ``/v1/completions`` and ``/v1/chat/completions``: every parameter honoured or refused.

Honoured: ``max_tokens``, ``temperature``, ``top_p``, ``seed`` (a fresh one when none is given),
``stop``, ``logprobs`` (top-k per token), ``echo``, ``presence_penalty``, ``frequency_penalty``,
``logit_bias``, ``stream`` with ``stream_options.include_usage``, ``user`` (logged). Refused with a
400 naming the field: ``n`` or ``best_of`` above 1, ``suffix``, ``echo`` with ``logprobs``, tools,
and anything unknown, so that no client believes a parameter worked when it was ignored.
A chat maps to the training prompt through the chat template saved with the tokenizer.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_STOP = 4
MAX_SEED = 2**63 - 1
_FLOAT = {"allow_inf_nan": False}


class ApiError(Exception):
    """A request the server refuses: HTTP status and one sentence."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.headers, self.kind = status, message, headers or {}, kind


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class _Sampling(BaseModel):
    """What completions and chat share."""

    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    temperature: float = Field(1.0, ge=0.0, le=2.0, **_FLOAT)
    top_p: float = Field(1.0, gt=0.0, le=1.0, **_FLOAT)
    n: int = Field(1, ge=1, le=1, description="One choice per request.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0, **_FLOAT)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0, **_FLOAT)
    logit_bias: dict[str, float] | None = None
    user: str | None = Field(None, max_length=256)

    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > MAX_STOP or any(not s for s in stops):
            raise ApiError(400, f"stop takes up to {MAX_STOP} non-empty strings")
        return stops

    def bias(self, vocab_size: int) -> dict[int, float]:
        out = {}
        for key, value in (self.logit_bias or {}).items():
            if not key.isdigit() or int(key) >= vocab_size:
                raise ApiError(400, f"logit_bias key {key!r} is not a token id of this model (0-{vocab_size - 1})")
            if not -100 <= value <= 100:
                raise ApiError(400, f"logit_bias for token {key} is {value}; biases lie in -100..100")
            out[int(key)] = value
        return out


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    max_tokens: int = Field(256, ge=1, le=1_000_000)
    temperature: float = Field(0.0, ge=0.0, le=2.0, **_FLOAT)  # greedy unless asked: recipes, not surprises
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False
    best_of: int | None = Field(None, ge=1, le=1)
    suffix: None = Field(None, description="Not supported: refused when given.")

    @model_validator(mode="after")
    def _supported(self) -> CompletionRequest:
        if self.echo and self.logprobs is not None:
            raise ValueError("echo with logprobs is not supported (prompt log-probabilities are not computed)")
        return self


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1, max_length=64)
    max_tokens: int | None = Field(None, ge=1, le=1_000_000)
    max_completion_tokens: int | None = Field(None, ge=1, le=1_000_000)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=5)

    @model_validator(mode="after")
    def _supported(self) -> ChatRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self

    def budget(self) -> int:
        return self.max_completion_tokens or self.max_tokens or 256


@dataclass
class Decoded:
    """One decode's answer: the text (after ``stop``), its tokens and, if asked, log-probabilities."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    tokens: list[str] = field(default_factory=list)
    token_logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[dict[str, float]] = field(default_factory=list)


class StopText:
    """Text as it streams, cut at the first stop string; holds back what could still become one."""

    def __init__(self, stops: list[str], emit: Callable[[str], None] | None) -> None:
        self.stops, self.emit = stops, emit
        self.text, self.sent, self.stopped = "", 0, False
        self.hold = max((len(s) for s in stops), default=1) - 1

    def add(self, piece: str) -> None:
        if self.stopped:
            return
        self.text += piece
        cut = min((i for i in (self.text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.text, self.stopped = self.text[:cut], True
            self._send(len(self.text))
        else:
            self._send(len(self.text) - self.hold)

    def close(self) -> None:
        self._send(len(self.text))

    def _send(self, upto: int) -> None:
        if self.emit is not None and upto > self.sent:
            self.emit(self.text[self.sent:upto])
            self.sent = upto


def _penalties(presence: float, frequency: float, bias: dict[int, float], start: int) -> Any:
    """OpenAI's penalties (on tokens generated so far) and logit_bias as one logits processor, or None."""
    import torch
    from transformers import LogitsProcessor

    if not presence and not frequency and not bias:
        return None

    class Penalties(LogitsProcessor):
        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
            scores = scores.clone()
            generated = input_ids[:, start:]
            if generated.shape[1] and (presence or frequency):
                ones = torch.ones_like(generated, dtype=scores.dtype)
                counts = torch.zeros_like(scores).scatter_add_(1, generated, ones)
                scores -= frequency * counts + presence * (counts > 0).to(scores.dtype)
            for token, value in bias.items():
                scores[:, token] += value
            return scores

    return Penalties()


def decode(g: Any, prompt_ids: list[int], req: CompletionRequest | ChatRequest, *, max_tokens: int,
           top_k: int, job: Any, emit: Callable[[str], None] | None, stopping: Any,
           decoder_prefix: list[int] | None = None) -> Decoded:
    """Generate from ``prompt_ids`` with the request's parameters; ``emit`` receives the text as it
    comes (already cut at ``stop``). Runs on the worker; ``stopping`` ends it when ``job`` is cancelled."""
    import torch
    from transformers import LogitsProcessorList

    from chefgenius.runtime.devices import forked_rng
    from chefgenius.serving.streams import token_streamer

    tok = g.tokenizer
    device = next(g.model.parameters()).device
    stops = req.stops()
    cut = StopText(stops, emit)
    x = torch.tensor([prompt_ids], device=device)
    start = 0 if g.is_seq2seq else len(prompt_ids)
    kwargs: dict[str, Any] = {"max_new_tokens": max_tokens, "eos_token_id": tok.eos_token_id,
                              "pad_token_id": tok.pad_token_id, "stopping_criteria": stopping,
                              "return_dict_in_generate": True, "output_logits": top_k >= 0}
    if req.temperature > 0:
        kwargs.update(do_sample=True, temperature=req.temperature, top_p=req.top_p, top_k=0)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    if decoder_prefix:
        kwargs["decoder_input_ids"] = torch.tensor([decoder_prefix], device=device)
        start = len(decoder_prefix)
    processor = _penalties(req.presence_penalty, req.frequency_penalty, req.bias(len(tok)), start)
    if processor is not None:
        kwargs["logits_processor"] = LogitsProcessorList([processor])
    if stops:
        kwargs.update(stop_strings=stops, tokenizer=tok)
    kwargs["streamer"] = token_streamer(tok, cut.add)
    seed = req.seed if req.seed is not None else secrets.randbelow(MAX_SEED)
    g.model.eval()
    with torch.no_grad(), forked_rng(device):
        torch.manual_seed(seed)
        out = g.model.generate(input_ids=x, attention_mask=torch.ones_like(x), **kwargs)
    job.check()
    new = out.sequences[0, start:] if g.is_seq2seq or decoder_prefix else out.sequences[0, len(prompt_ids):]
    new = [int(t) for t in new]
    cut.close()
    ended = bool(new) and new[-1] == tok.eos_token_id
    result = Decoded(cut.text, "stop" if ended or cut.stopped else "length", len(prompt_ids), len(new))
    if top_k >= 0:
        for step, token in enumerate(new):
            logp = torch.log_softmax(out.logits[step][0].float(), dim=-1)
            result.tokens.append(tok.decode([token]))
            result.token_logprobs.append(float(logp[token]))
            if top_k:
                values, ids = logp.topk(top_k)
                result.top_logprobs.append({tok.decode([int(i)]): float(v) for v, i in zip(values, ids)})
    return result


def completion_body(name: str, d: Decoded, req: CompletionRequest, prompt: str) -> dict[str, Any]:
    logprobs = None
    if req.logprobs is not None:
        offsets, at = [], len(prompt) if req.echo else 0
        for t in d.tokens:
            offsets.append(at)
            at += len(t)
        logprobs = {"tokens": d.tokens, "token_logprobs": d.token_logprobs,
                    "top_logprobs": d.top_logprobs if req.logprobs else None, "text_offset": offsets}
    return {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
            "model": name, "choices": [{"text": (prompt if req.echo else "") + d.text, "index": 0,
                                        "logprobs": logprobs, "finish_reason": d.finish_reason}],
            "usage": usage(d)}


def chat_body(name: str, d: Decoded, req: ChatRequest) -> dict[str, Any]:
    logprobs = None
    if req.logprobs:
        logprobs = {"content": [
            {"token": t, "logprob": lp, "bytes": list(t.encode()),
             "top_logprobs": [{"token": k, "logprob": v, "bytes": list(k.encode())}
                              for k, v in (d.top_logprobs[i].items() if req.top_logprobs else [])]}
            for i, (t, lp) in enumerate(zip(d.tokens, d.token_logprobs))]}
    return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
            "model": name, "choices": [{"index": 0, "message": {"role": "assistant", "content": d.text},
                                        "logprobs": logprobs, "finish_reason": d.finish_reason}],
            "usage": usage(d)}


def usage(d: Decoded) -> dict[str, int]:
    return {"prompt_tokens": d.prompt_tokens, "completion_tokens": d.completion_tokens,
            "total_tokens": d.prompt_tokens + d.completion_tokens}
