"""The OpenAI-compatible routes: /v1/models, /v1/completions, /health, /metrics.

    app = create_app(model, "gpt2", max_batch=8)    # a loaded gpt2.GPT2Model
    uvicorn.run(app, host="127.0.0.1", port=8000)   # or `gpt2 serve`

Completions run on the scheduler (gpt2.serve.scheduler); a streamed one is sent
as server-sent events, a token at a time. A client that goes away, streamed or
not, has its requests cancelled at the next step. Every error is OpenAI's error
JSON: 400 for a bad request (wrong types, malformed JSON, a prompt or max_tokens
past the context, text the tokenizer refuses, more than 4 stop strings, more
choices than the queue holds, a logit_bias id past the vocabulary or a bias
outside [-100, 100]), 413 for a body over max_request_bytes, 429 with
Retry-After when the queue is full, 503 while shutting down, 500 for a fault
of ours; the server goes on. A server has one model: it answers whatever
`model` a client names (as llama-cpp-python's server does), so clients that
send their own model id (lm-evaluation-harness, say) work unchanged.

`echo` with `logprobs` gives every prompt token's log-probability (the first
null, as OpenAI's) and its alternatives, computed by the request's own prefill
step (its prompt rows ask the step for every position's logits); with
`max_tokens: 0` the answer is the prompt, its usage and those log-probabilities.
So lm-evaluation-harness's `local-completions` model scores loglikelihood
tasks against this server.

No client can hold the event loop: a body is refused while it is read (its
Content-Length at once, a chunked one at the byte past the limit), a text prompt
is tokenized in a worker thread and only when its length could fit the context,
and `serve` drains for at most `shutdown_grace` seconds whatever clients do.

finish_reason is OpenAI's: "stop" (a stop string or end-of-text) or "length"
(max_tokens or the context's end).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import signal
import threading
import time
import uuid
import weakref
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from gpt2.completion import TokenLogprob
from gpt2.params import GenerationParams
from gpt2.serve.metrics import histogram_lines
from gpt2.serve.scheduler import (
    DEFAULT_STEP_TOKENS,
    Event,
    QueueFullError,
    Scheduler,
    SchedulerClosedError,
)
from gpt2.serve.scheduler import Request as Job
from gpt2.serve.schemas import CompletionRequest
from gpt2.token_ids import check_token_ids

log = logging.getLogger("gpt2.serve")

GRAPH_KINDS = ("prefill", "decode")  # the engine's graph caches (/metrics)
OPENAI_FINISH = {"stop": "stop", "eos": "stop", "length": "length", "context": "length"}
RETRY_AFTER_S = "1"
MAX_REQUEST_BYTES = 8 << 20  # a request body, by default (8 MiB)
SHUTDOWN_GRACE_S = 5.0  # a drain's bound, by default
HARD_EXIT_AFTER_S = 5.0  # past the grace: the process exits whatever still runs
EXIT_FORCED = 1  # the drain overran grace + HARD_EXIT_AFTER_S


class APIError(Exception):
    """An error answered as OpenAI's error JSON."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type = status, message, type_
        self.param, self.code, self.headers = param, code, headers


class _AsciiJSONResponse(JSONResponse):
    """JSON with \\u escapes: a message quoting a client's lone surrogate still renders."""

    def render(self, content) -> bytes:
        return json.dumps(content, separators=(",", ":")).encode("ascii")


def error_json(status: int, message: str, type_: str, param=None, code=None, headers=None):
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return _AsciiJSONResponse(body, status_code=status, headers=headers)


class _BodyTooLarge(StarletteHTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"the request body is larger than {limit:,} bytes")


class BodyLimit:
    """ASGI middleware: a request body of more than `limit` bytes is answered 413
    (OpenAI's error JSON). A Content-Length over it is refused before the app
    runs; a chunked body stops being read at the chunk that passes it (the
    route's read raises _BodyTooLarge, which the app's handler answers)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.strip().isdigit() and int(length) > self.limit:
            message = str(_BodyTooLarge(self.limit).detail)
            response = error_json(413, message, "invalid_request_error")
            response.headers["connection"] = "close"  # the body is never read
            return await response(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _BodyTooLarge(self.limit)
            return message

        return await self.app(scope, limited, send)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    e = errors[0]
    loc = [str(x) for x in e.get("loc", ()) if x != "body"]
    where = ".".join(loc)
    if e.get("type") == "json_invalid":
        return f"the body is not valid JSON: {e.get('msg')}", None
    return (f"{where}: {e.get('msg')}" if where else str(e.get("msg"))), (loc[0] if loc else None)


def _logprobs_json(entries: list[TokenLogprob | None], texts: list[str], offset: int) -> dict:
    """OpenAI's legacy completions logprobs: tokens, token_logprobs, top_logprobs,
    text_offset (None entries: the first prompt token, which has no logprob)."""
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for e, text in zip(entries, texts, strict=True):
        out["tokens"].append(text)
        out["token_logprobs"].append(None if e is None else e.logprob)
        out["top_logprobs"].append(None if e is None else _top_json(e.top))
        out["text_offset"].append(offset)
        offset += len(text)
    return out


def _top_json(top: tuple[tuple[int, str, float], ...]) -> dict[str, float]:
    """OpenAI's {text: logprob} of the alternatives; where ids share a text (bytes
    of one character, say), the likelier one's (they come most likely first)."""
    out: dict[str, float] = {}
    for _, text, lp in top:
        out.setdefault(text, lp)
    return out


class _Post:
    """Hands the scheduler thread's events to one event loop: the events that arrive
    before the loop has taken the last ones go over together, one wake-up
    (call_soon_threadsafe, a write to the loop's self-pipe) for a step's tokens of
    every request, not one a token."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self._items: collections.deque = collections.deque()  # (queue, item)
        self._lock = threading.Lock()
        self._scheduled = False

    def put(self, queue: asyncio.Queue, item) -> None:
        """queue.put_nowait(item) on the loop, soon (from any thread)."""
        with self._lock:
            self._items.append((queue, item))
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self.loop.call_soon_threadsafe(self._drain)
        except BaseException:  # the loop is closed: the caller hears of it
            with self._lock:
                self._scheduled = False
            raise

    def _drain(self) -> None:
        with self._lock:
            items = list(self._items)
            self._items.clear()
            self._scheduled = False
        for queue, item in items:
            queue.put_nowait(item)


class _Choice:
    """One choice's request and what the response needs of it."""

    def __init__(self, index: int, prompt_ids: list[int], prompt_text: str, job: Job):
        self.index, self.prompt_ids, self.prompt_text, self.job = (
            index,
            prompt_ids,
            prompt_text,
            job,
        )
        self.offset = 0  # text offset of the next token (logprobs)


def create_app(
    model,
    model_name: str = "gpt2",
    max_batch: int | None = None,
    max_queue: int = 64,
    max_request_bytes: int = MAX_REQUEST_BYTES,
    max_step_tokens: int = DEFAULT_STEP_TOKENS,
) -> FastAPI:
    """The app over a loaded model (n_slots >= max_batch); its lifespan starts
    and stops the scheduler."""
    if max_request_bytes < 1:
        raise ValueError(f"max_request_bytes must be >= 1, got {max_request_bytes}")
    scheduler = Scheduler(model, max_batch, max_queue, max_step_tokens=max_step_tokens)
    n_ctx = model.engine.max_positions
    tok = model.tokenizer
    posts: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # loop -> its _Post

    def _post(loop: asyncio.AbstractEventLoop) -> _Post:
        post = posts.get(loop)
        if post is None:
            post = posts[loop] = _Post(loop)
        return post

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        scheduler.start()
        try:
            yield
        finally:
            scheduler.stop()

    app = FastAPI(title="tinynn-gpt2", lifespan=lifespan)
    app.add_middleware(BodyLimit, limit=max_request_bytes)
    app.state.scheduler = scheduler

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return error_json(exc.status, exc.message, exc.type, exc.param, exc.code, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        message, param = _validation_message(exc)
        return error_json(400, message, "invalid_request_error", param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return error_json(exc.status_code, str(exc.detail), kind, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _fault(request: Request, exc: Exception):
        log.exception("internal error")
        return error_json(500, f"internal error: {exc}", "server_error")

    @app.get("/health")
    async def health():
        if not scheduler.alive:
            return JSONResponse({"status": "stopped"}, status_code=503)
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        card = {"id": model_name, "object": "model", "created": 0, "owned_by": "tinynn-gpt2"}
        return {"object": "list", "data": [card]}

    @app.get("/metrics")
    async def metrics():
        s = scheduler.stats
        lines = [
            "# HELP gpt2_requests_total Completions ended, by outcome.",
            "# TYPE gpt2_requests_total counter",
            *(f'gpt2_requests_total{{outcome="{k}"}} {v}' for k, v in sorted(s.requests.items())),
        ]
        for name, kind, value, what in (
            ("gpt2_prompt_tokens_total", "counter", s.prompt_tokens, "Prompt tokens prefilled."),
            ("gpt2_completion_tokens_total", "counter", s.completion_tokens, "Tokens generated."),
            ("gpt2_steps_total", "counter", s.steps, "Batched decode steps run."),
            ("gpt2_rejected_total", "counter", s.rejected, "Requests refused: queue full."),
            ("gpt2_queue_depth", "gauge", s.queued, "Requests waiting for a batch member."),
            ("gpt2_batch_size", "gauge", s.active, "Sequences in the running batch."),
            ("gpt2_batch_capacity", "gauge", scheduler.max_batch, "Members of the batch."),
            (
                "gpt2_prefill_tokens_total",
                "counter",
                s.prefill_tokens,
                "Prompt tokens prefilled, counted at each request's first token.",
            ),
            (
                "gpt2_decode_tokens_total",
                "counter",
                s.decode_tokens,
                "Tokens run as decode rows (each request's tokens after its first).",
            ),
        ):
            lines += [f"# HELP {name} {what}", f"# TYPE {name} {kind}", f"{name} {value}"]
        builds = {k: getattr(model.engine, f"{k}_graph_builds", None) for k in GRAPH_KINDS}
        if any(v is not None for v in builds.values()):  # the fast engine counts them
            lines += [
                "# HELP gpt2_graph_builds_total Compute graphs the engine built, by kind "
                "(a build costs milliseconds on the CPU; the step that needs it waits).",
                "# TYPE gpt2_graph_builds_total counter",
                *(
                    f'gpt2_graph_builds_total{{kind="{k}"}} {v}'
                    for k, v in builds.items()
                    if v is not None
                ),
            ]
        for name, hist, what in (
            (
                "gpt2_time_to_first_token_seconds",
                s.ttft,
                "From a request's arrival in the queue to its first token.",
            ),
            (
                "gpt2_inter_token_latency_seconds",
                s.itl,
                "Between consecutive tokens of one request.",
            ),
            (
                "gpt2_batch_occupancy",
                s.occupancy,
                "Sequences in the batch at each step (decoding or being prefilled).",
            ),
        ):
            lines += histogram_lines(name, what, hist)
        return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    def _encode(text: str) -> list[int]:
        """The text's ids, bounded by the context (runs in a worker thread): a text
        longer than the context could hold is refused from its length alone."""
        try:
            return tok.encode(text, max_tokens=n_ctx)
        except ValueError as e:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as u:  # a lone surrogate ("\\ud800" in the JSON)
                raise APIError(
                    400,
                    f"the prompt is not valid text: {u.reason} at character {u.start}",
                    param="prompt",
                ) from None
            if str(e).startswith("the prompt has"):
                raise APIError(
                    400,
                    f"prompt longer than the context: {e}",
                    param="prompt",
                    code="context_length_exceeded",
                ) from None
            raise APIError(400, f"the tokenizer refused the prompt: {e}", param="prompt") from None

    async def _prompt_ids(prompt: str | list[int]) -> tuple[list[int], str]:
        if isinstance(prompt, str):
            if tok is None:
                raise APIError(400, "this model has no tokenizer: give token ids", param="prompt")
            if not prompt:
                return [tok.eos_id], prompt  # "": from end-of-text
            return await asyncio.to_thread(_encode, prompt), prompt
        try:
            ids = check_token_ids(prompt, model.config.vocab_size).tolist()
        except ValueError as e:
            raise APIError(400, f"prompt: {e}", param="prompt") from None
        return ids, tok.decode(ids) if tok is not None else ""

    async def _plan(body: CompletionRequest, post: _Post, queue: asyncio.Queue) -> list[_Choice]:
        bad = body.unsupported()
        if bad:
            raise APIError(400, f"{bad} is not supported by this server", param=bad)
        if body.stop_list() and tok is None:
            raise APIError(400, "stop strings need a tokenizer", param="stop")
        bias = body.bias_pairs()
        for token, _ in bias:
            if token >= model.config.vocab_size:
                raise APIError(
                    400,
                    f"logit_bias: token {token} is past the vocabulary "
                    f"({model.config.vocab_size} tokens)",
                    param="logit_bias",
                )
        echo = body.logprobs if body.echo else None  # the prompt's logprobs: n alternatives
        prompts = body.prompts()
        if len(prompts) * body.n > scheduler.max_queue:  # would get 429 forever
            raise APIError(
                400,
                f"{len(prompts)} prompt(s) times n={body.n} make {len(prompts) * body.n} "
                f"choices; this server queues at most {scheduler.max_queue}",
                param="n",
            )
        choices: list[_Choice] = []
        for p_index, prompt in enumerate(prompts):
            ids, text = await _prompt_ids(prompt)
            if len(ids) > n_ctx:
                raise APIError(
                    400,
                    f"the prompt has {len(ids)} tokens, the context holds {n_ctx}",
                    param="prompt",
                    code="context_length_exceeded",
                )
            if body.max_tokens is not None and len(ids) + body.max_tokens > n_ctx:
                raise APIError(
                    400,
                    f"the prompt ({len(ids)} tokens) and max_tokens "
                    f"({body.max_tokens}) exceed the context of {n_ctx}",
                    param="max_tokens",
                    code="context_length_exceeded",
                )
            for j in range(body.n):
                kw = {
                    "max_new_tokens": body.max_tokens,
                    "temperature": body.temperature,
                    "top_k": body.top_k,
                    "top_p": body.top_p,
                    "seed": None if body.seed is None else body.seed + j,
                    "stop": body.stop_list(),
                    "logprobs": body.logprobs,
                    "frequency_penalty": body.frequency_penalty,
                    "presence_penalty": body.presence_penalty,
                    "repetition_penalty": body.repetition_penalty,
                    "logit_bias": bias,
                }
                try:
                    params = GenerationParams(**{k: v for k, v in kw.items() if v is not None})
                except ValueError as e:
                    param = "logit_bias" if str(e).startswith("logit_bias") else None
                    raise APIError(400, str(e), param=param) from None
                index = p_index * body.n + j

                def sink(ev: Event, index=index) -> None:
                    post.put(queue, (index, ev))

                try:
                    job = Job(model, ids, params, sink, echo)
                except ValueError as e:
                    raise APIError(400, str(e), param="prompt") from None
                choices.append(_Choice(index, ids, text, job))
        return choices

    def _submit(choices: list[_Choice]) -> None:
        try:
            scheduler.submit([c.job for c in choices])
        except QueueFullError as e:
            raise APIError(
                429,
                f"{e}: retry later",
                "rate_limit_error",
                code="queue_full",
                headers={"Retry-After": RETRY_AFTER_S},
            ) from None
        except SchedulerClosedError as e:
            raise APIError(
                503,
                str(e),
                "server_error",
                code="unavailable",
                headers={"Retry-After": RETRY_AFTER_S},
            ) from None

    def _echo_logprobs(c: _Choice, entries: list[TokenLogprob | None]) -> dict:
        """The prompt tokens' log-probabilities (from its prefill: the first
        event's prompt_logprobs) as OpenAI's logprobs; the generated tokens'
        offsets go on from the prompt's end."""
        first = tok.decode(c.prompt_ids[:1]) if tok is not None else ""
        texts = [first] + [e.token for e in entries[1:]]
        lp = _logprobs_json(entries, texts, 0)
        c.offset = sum(len(t) for t in texts)
        return lp

    def _token_logprobs(c: _Choice, ev: Event) -> dict:
        texts = [e.token for e in ev.logprobs]
        out = _logprobs_json(list(ev.logprobs), texts, c.offset)
        c.offset += sum(len(t) for t in texts)
        return out

    async def _cancel_on_disconnect(request: Request, choices: list[_Choice], queue) -> None:
        """Cancels the choices once the client disconnects (the body is read by now,
        so the next ASGI message is http.disconnect), and wakes the waiting route."""
        while (await request.receive())["type"] != "http.disconnect":
            pass
        for c in choices:
            c.job.cancel()
        queue.put_nowait((None, None))

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        queue: asyncio.Queue = asyncio.Queue()
        choices = await _plan(body, _post(asyncio.get_running_loop()), queue)
        by_index = {c.index: c for c in choices}
        cid = f"cmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        n_top = body.logprobs
        head = {"id": cid, "object": "text_completion", "created": created, "model": model_name}

        if not body.stream:
            texts = {c.index: c.prompt_text if body.echo else "" for c in choices}
            lps: dict[int, dict | None] = {c.index: None for c in choices}
            _submit(choices)
            finish: dict[int, str] = {}
            usage = [0, 0]
            watch = asyncio.create_task(_cancel_on_disconnect(request, choices, queue))
            try:
                while len(finish) < len(choices):
                    index, ev = await queue.get()
                    if ev is None:  # the client went away; its members are freed
                        return Response(status_code=499)
                    if ev.error is not None:
                        raise APIError(500, ev.error, "server_error")
                    c = by_index[index]
                    texts[index] += ev.text
                    if ev.prompt_logprobs is not None:  # echo: from its prefill, first
                        lps[index] = _echo_logprobs(c, ev.prompt_logprobs)
                    if n_top is not None:
                        part = _token_logprobs(c, ev)
                        if lps[index] is None:
                            lps[index] = part
                        else:
                            for k in part:
                                lps[index][k] += part[k]
                    if ev.done is not None:
                        finish[index] = OPENAI_FINISH[ev.done.finish_reason]
                        usage[1] += ev.done.usage.completion_tokens
            finally:
                watch.cancel()
                for c in choices:
                    c.job.cancel()
            usage[0] = sum(len(c.prompt_ids) for c in choices[:: body.n])
            return {
                **head,
                "choices": [
                    {"text": texts[i], "index": i, "logprobs": lps[i], "finish_reason": finish[i]}
                    for i in sorted(texts)
                ],
                "usage": {
                    "prompt_tokens": usage[0],
                    "completion_tokens": usage[1],
                    "total_tokens": usage[0] + usage[1],
                },
            }

        include_usage = bool((body.stream_options or {}).get("include_usage"))
        _submit(choices)

        pre = _chunk_prefix(head)

        def chunk(index: int, text: str, lp, finish_reason) -> str:
            return _sse_chunk(pre, index, text, lp, finish_reason)

        async def events():
            done = 0
            n_completion = 0
            try:
                if body.echo and n_top is None:  # the prompt's text at once
                    for c in choices:
                        yield chunk(c.index, c.prompt_text, None, None)
                failed = False
                while done < len(choices) and not failed:
                    # what has come since the last send goes out in one
                    got = [await queue.get()]
                    while not queue.empty():
                        got.append(queue.get_nowait())
                    out = []
                    for index, ev in got:
                        if ev.error is not None:
                            err = {
                                "message": ev.error,
                                "type": "server_error",
                                "param": None,
                                "code": None,
                            }
                            out.append(f"data: {_dumps({'error': err})}\n\n")
                            failed = True
                            break
                        c = by_index[index]
                        if ev.prompt_logprobs is not None:  # echo with logprobs: after prefill
                            lps = _echo_logprobs(c, ev.prompt_logprobs)
                            out.append(chunk(index, c.prompt_text, lps, None))
                        lp = _token_logprobs(c, ev) if n_top is not None else None
                        reason = None
                        if ev.done is not None:
                            reason = OPENAI_FINISH[ev.done.finish_reason]
                            n_completion += ev.done.usage.completion_tokens
                            done += 1
                        if ev.text or reason or (lp and lp["tokens"]):
                            out.append(chunk(index, ev.text, lp, reason))
                    if out:
                        yield "".join(out)
                if include_usage and done == len(choices):
                    n_prompt = sum(len(c.prompt_ids) for c in choices[:: body.n])
                    usage = {
                        "prompt_tokens": n_prompt,
                        "completion_tokens": n_completion,
                        "total_tokens": n_prompt + n_completion,
                    }
                    yield f"data: {_dumps({**head, 'choices': [], 'usage': usage})}\n\n"
                yield "data: [DONE]\n\n"
            finally:  # also when the client went away: free the members
                for c in choices:
                    c.job.cancel()

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def _dumps(obj) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _chunk_prefix(head: dict) -> str:
    """The part of every streamed chunk of a response before its text (_sse_chunk)."""
    return f'data: {_dumps(head)[:-1]},"choices":[{{"text":'


def _sse_chunk(prefix: str, index: int, text: str, lp: dict | None, finish_reason) -> str:
    """One server-sent event: `data: ` and _dumps of {**head, "choices": [{"text",
    "index", "logprobs", "finish_reason"}]}, written from its parts (the head's
    JSON once a response, not a dict and a dumps of it a token)."""
    lp_json = "null" if lp is None else _dumps(lp)
    reason = "null" if finish_reason is None else _dumps(finish_reason)
    return (
        f'{prefix}{_dumps(text)},"index":{index},"logprobs":{lp_json},'
        f'"finish_reason":{reason}}}]}}\n\n'
    )


def serve(
    model,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    model_name: str = "gpt2",
    max_batch: int | None = None,
    max_queue: int = 64,
    max_request_bytes: int = MAX_REQUEST_BYTES,
    max_step_tokens: int = DEFAULT_STEP_TOKENS,
    shutdown_grace: float = SHUTDOWN_GRACE_S,
    log_level: str = "info",
) -> int:
    """Runs the server until SIGTERM or SIGINT, then drains: requests still running
    after `shutdown_grace` seconds (a half-sent body, an unread stream) are
    cancelled. Returns the exit status: 0 after SIGTERM, 130 after SIGINT (the
    CLI's Ctrl-C). Should the drain itself hang, the process exits EXIT_FORCED
    HARD_EXIT_AFTER_S seconds past the grace."""
    if shutdown_grace < 0:
        raise ValueError(f"shutdown_grace must be >= 0, got {shutdown_grace}")
    app = create_app(model, model_name, max_batch, max_queue, max_request_bytes, max_step_tokens)
    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=shutdown_grace
    )
    server = _Server(config, shutdown_grace)
    in_main = threading.current_thread() is threading.main_thread()
    # uvicorn re-raises the signals it caught once it has stopped: these handlers
    # take them, so that the exit status is ours (SIGTERM would kill us otherwise)
    previous = (
        {s: signal.signal(s, lambda *_: None) for s in (signal.SIGINT, signal.SIGTERM)}
        if in_main
        else {}
    )
    try:
        server.run()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        app.state.scheduler.stop(timeout=HARD_EXIT_AFTER_S)  # also after a forced exit
    return 130 if signal.SIGINT in server.signals else 0


class _Server(uvicorn.Server):
    """uvicorn's server, which records the signals it got and, at the first, arms a
    timer that ends the process should the drain outlast its bound."""

    def __init__(self, config: uvicorn.Config, grace: float):
        super().__init__(config)
        self.grace = grace
        self.signals: list[int] = []

    def handle_exit(self, sig: int, frame) -> None:
        if not self.signals:
            timer = threading.Timer(self.grace + HARD_EXIT_AFTER_S, _hard_exit)
            timer.daemon = True
            timer.start()
        self.signals.append(sig)
        super().handle_exit(sig, frame)


def _hard_exit() -> None:
    log.error("the drain outlasted its bound: exiting now")
    logging.shutdown()
    os._exit(EXIT_FORCED)
