"""`aigc serve`: an OpenAI-compatible HTTP API and a web page over the generation contract (DESIGN.md 'Serving').

The app knows no family: a served run is a recipe with an output kind (`recipe.output`) and the request fields it
accepts (`recipe.accepts()`); each run gets a worker thread with a bounded queue (aigc/serve/workers.py). Text
models decode with continuous batching; every other kind runs one request at a time with progress events. A client
that goes away cancels its generation: a streamed response is cancelled by Starlette when the connection drops,
and a plain one polls for the disconnect while it waits; the worker stops within one token or one sampler step.

Errors are OpenAI's JSON shape `{"error": {"message", "type", "param", "code"}}`: 400 for a request the model
cannot honour, 401 without the API key, 404 for an unknown model or route, 413 for a body over the limit, 422 for a
body that does not match the schema, 429 when the model's queue is full, 504 past the request timeout."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from starlette.exceptions import HTTPException

from aigc.errors import AigcError, Cancelled
from aigc.generation import Request as GenRequest
from aigc.generation import check_request
from aigc.serve import schemas as S
from aigc.serve.workers import Job, QueueFull, Worker, make_worker

# how the API spells each generation field, for error messages
API_NAMES = {"num": "n", "seed": "seed", "prompt": "prompt", "label": "label", "image": "image", "steps": "steps",
             "guidance": "guidance", "sampler": "sampler", "frames": "frames", "what": "what",
             "temperature": "temperature", "top_k": "top_k", "top_p": "top_p", "max_new_tokens": "max_tokens",
             "stop": "stop", "messages": "messages", "beam": "beam", "voice": "voice"}
ROUTES = {"text": "/v1/completions", "images": "/v1/images/generations", "video": "/v1/videos/generations",
          "audio": "/v1/audio/speech", "captions": "/v1/captions"}
PAGE = Path(__file__).with_name("page.html")


@dataclass
class Limits:
    """What one request may ask for (a client over a limit gets a 400 that names it)."""
    max_tokens: int = 2048            # new tokens per choice
    default_tokens: int = 256
    max_prompt_chars: int = 20_000
    max_stop: int = 4                 # stop strings, each at most 64 characters
    max_images: int = 64              # images per request
    max_videos: int = 16              # clips per request
    max_body_bytes: int = 1_000_000
    timeout_s: float = 300.0          # per request, from submission to the last byte


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code


class ClientGone(Exception):
    pass


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes (also one sent without a length) is a 413."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise HTTPException(413, f"the body is over {self.limit} bytes")
            return message

        await self.app(scope, limited, send)


def error_response(status: int, message: str, type_: str = "invalid_request_error", param=None, code=None):
    return JSONResponse({"error": {"message": message, "type": type_, "param": param, "code": code}}, status)


ERRORS = {code: {"model": S.ErrorResponse} for code in (400, 401, 404, 413, 422, 429, 504)}
SSE = {200: {"content": {"text/event-stream": {"schema": {     # one server-sent event: `data:` is a JSON object
    "type": "object", "properties": {"data": {"type": "string"}, "event": {"type": "string"},
                                     "id": {"type": "string"}, "retry": {"type": "integer"}}}}}}}


@dataclass
class Served:
    name: str
    recipe: object
    worker: Worker
    card: S.ModelCard


class Metrics:
    """Prometheus text for /metrics: request counts by route and status, latency, tokens, queue, cancellations."""

    def __init__(self):
        self.requests: dict[tuple[str, int], int] = {}
        self.latency_sum: dict[str, float] = {}
        self.latency_count: dict[str, int] = {}
        self.disconnects = 0

    def observe(self, route: str, status: int, seconds: float) -> None:
        self.requests[(route, status)] = self.requests.get((route, status), 0) + 1
        self.latency_sum[route] = self.latency_sum.get(route, 0.0) + seconds
        self.latency_count[route] = self.latency_count.get(route, 0) + 1

    def render(self, models: dict[str, Served]) -> str:
        out = ["# HELP aigc_requests_total HTTP requests by route and status",
               "# TYPE aigc_requests_total counter"]
        out += [f'aigc_requests_total{{route="{r}",status="{s}"}} {n}' for (r, s), n in sorted(self.requests.items())]
        out += ["# HELP aigc_errors_total HTTP responses with status >= 400", "# TYPE aigc_errors_total counter",
                f"aigc_errors_total {sum(n for (_, s), n in self.requests.items() if s >= 400)}",
                "# HELP aigc_request_seconds time from request to the response's start (streams: first byte)",
                "# TYPE aigc_request_seconds summary"]
        for r in sorted(self.latency_sum):
            out += [f'aigc_request_seconds_sum{{route="{r}"}} {self.latency_sum[r]:.6f}',
                    f'aigc_request_seconds_count{{route="{r}"}} {self.latency_count[r]}']
        out += ["# HELP aigc_client_disconnects_total clients that went away before their answer",
                "# TYPE aigc_client_disconnects_total counter", f"aigc_client_disconnects_total {self.disconnects}"]
        gauges = {"aigc_queue_depth": ("requests waiting for the model", "gauge", lambda w: w.depth),
                  "aigc_running": ("streams or requests being generated", "gauge", lambda w: w.running),
                  "aigc_tokens_generated_total": ("tokens decoded", "counter", lambda w: w.stats.generated_tokens),
                  "aigc_cancellations_total": ("generations stopped because their client went away", "counter",
                                               lambda w: w.stats.cancelled),
                  "aigc_generations_total": ("generations completed", "counter", lambda w: w.stats.completed),
                  "aigc_generation_failures_total": ("generations that failed", "counter", lambda w: w.stats.failed),
                  "aigc_busy_seconds_total": ("seconds the model's worker spent generating", "counter",
                                              lambda w: round(w.stats.busy_s, 6))}
        for metric, (help_, kind, get) in gauges.items():
            out += [f"# HELP {metric} {help_}", f"# TYPE {metric} {kind}"]
            out += [f'{metric}{{model="{name}"}} {get(m.worker)}' for name, m in models.items()]
        return "\n".join(out) + "\n"


def load_models(runs: list[Path], device, slots: int, max_queue: int, threads=None) -> dict[str, Served]:
    from aigc.io import rundir
    from aigc.recipes import open_run

    models: dict[str, Served] = {}
    for run in runs:
        run_dir = rundir.check_run_dir(run)
        name = run_dir.resolve().name
        if name in models:
            raise AigcError(f"two runs are named '{name}'; serve runs whose folder names differ")
        cfg, recipe = open_run(run_dir, device)
        chat = "messages" in recipe.accepts()
        card = S.ModelCard(id=name, created=int(run_dir.stat().st_mtime), family=cfg.family, output=recipe.output,
                           accepts=sorted(API_NAMES[f] for f in recipe.accepts() if f in API_NAMES), chat=chat,
                           description=recipe.describe_model())
        models[name] = Served(name, recipe, make_worker(name, recipe, max_queue, slots, threads), card)
    return models


def create_app(models: dict[str, Served], api_key: str | None = None, limits: Limits = Limits(),
               history=None) -> FastAPI:
    app = FastAPI(title="aigc", version="1", summary="OpenAI-compatible API over aigc runs",
                  description="Text (completions, chat), images and video from runs trained with aigc.")
    metrics, known_paths = Metrics(), set()
    app.state.models, app.state.metrics = models, metrics

    # ------------------------------------------------------------------ errors in OpenAI's shape
    @app.exception_handler(ApiError)
    async def _api_error(request, e: ApiError):
        return error_response(e.status, e.message, e.type, e.param, e.code)

    @app.exception_handler(AigcError)
    async def _aigc_error(request, e: AigcError):
        return error_response(400, str(e))

    @app.exception_handler(RequestValidationError)
    async def _validation(request, e: RequestValidationError):
        errs = e.errors()
        first = errs[0] if errs else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        if first.get("type") == "json_invalid":
            message, where = "the body is not valid JSON", ""
        else:
            message = f"{where or 'body'}: {first.get('msg', 'invalid')}" + (
                f" (and {len(errs) - 1} more)" if len(errs) > 1 else "")
        return error_response(422, message, param=where or None)

    @app.exception_handler(HTTPException)
    async def _http(request, e: HTTPException):
        type_ = {404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error"}.get(
            e.status_code, "invalid_request_error")
        message = e.detail if isinstance(e.detail, str) else "error"
        if e.status_code == 404 and message == "Not Found":
            message = f"no route {request.method} {request.url.path}"
        return error_response(e.status_code, message, type_)

    @app.exception_handler(Exception)
    async def _bug(request, e: Exception):             # a bug in aigc, never the client's fault
        return error_response(500, f"internal error: {type(e).__name__}: {e}", "server_error")

    # ------------------------------------------------------------------ body limit, metrics
    app.add_middleware(BodyLimit, limit=limits.max_body_bytes)

    @app.middleware("http")
    async def _count(request: Request, call_next):
        t0 = time.perf_counter()
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limits.max_body_bytes):
            response = error_response(413, f"the body is over {limits.max_body_bytes} bytes")
        else:
            response = await call_next(request)
        route = request.url.path if request.url.path in known_paths else "other"
        metrics.observe(route, response.status_code, time.perf_counter() - t0)
        return response

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
            raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer KEY'", "authentication_error")

    v1 = [Depends(authorize)]

    def model_for(name: str, kind: str, route: str) -> Served:
        """The served model `name`, if `route` is one for what it makes (a captioner's route is /v1/captions)."""
        served = models.get(name)
        if served is None:
            raise ApiError(404, f"no model '{name}'; served: {', '.join(models)}", "not_found_error", "model",
                           "model_not_found")
        captioner = "image" in served.recipe.accepts()
        if captioner != (route == ROUTES["captions"]) or served.recipe.output != kind:
            right = ROUTES["captions"] if captioner else ROUTES.get(served.recipe.output, "another route")
            does = "captions images" if captioner else f"makes {served.recipe.output}"
            raise ApiError(400, f"model '{name}' {does}, not what {route} serves; use {right}", param="model")
        return served

    # ------------------------------------------------------------------ plain routes
    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus() -> str:
        return metrics.render(models)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    @app.get("/v1/models", response_model=S.ModelList, dependencies=v1, responses=ERRORS)
    async def list_models():
        return S.ModelList(data=[m.card for m in models.values()])

    @app.get("/v1/history", response_model=S.HistoryList, dependencies=v1, responses=ERRORS)
    async def list_history(limit: int = 50):
        if not 1 <= limit <= 1000:
            raise ApiError(400, f"limit must be in 1..1000, got {limit}", param="limit")
        return S.HistoryList(data=history.recent(limit) if history else [])

    @app.get("/v1/history/files/{name}", dependencies=v1, responses=ERRORS, response_class=FileResponse)
    async def history_file(name: str):
        path = history.file(name) if history else None
        if path is None:
            raise ApiError(404, f"no recorded file '{name}'", "not_found_error")
        return FileResponse(path)

    # ------------------------------------------------------------------ waiting for a worker
    async def next_event(q: asyncio.Queue, job: Job, deadline: float, request: Request | None):
        """The worker's next event; polls for a disconnect (plain responses) and the timeout meanwhile."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                job.cancel()
                raise ApiError(504, f"the request took over {limits.timeout_s:g} s and was stopped",
                               "timeout_error")
            if not q.empty():
                return q.get_nowait()
            try:
                return await asyncio.wait_for(q.get(), timeout=min(0.25, remaining))
            except asyncio.TimeoutError:
                if request is not None and await request.is_disconnected():
                    job.cancel()
                    metrics.disconnects += 1
                    raise ClientGone() from None

    def submit(served: Served, gen: GenRequest):
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        job = Job(gen, loop=loop, queue=q)
        try:
            served.worker.submit(job)
        except QueueFull as e:
            raise ApiError(429, str(e), "rate_limit_error", code="queue_full") from None
        return job, q, time.monotonic() + limits.timeout_s

    def raise_for(event) -> None:
        if event[0] == "error":
            e = event[1]
            if isinstance(e, Cancelled):
                raise ClientGone()
            if isinstance(e, AigcError):
                raise ApiError(400, str(e))
            raise e

    async def wait_result(job, q, deadline, request):
        try:
            while True:
                ev = await next_event(q, job, deadline, request)
                if ev[0] in ("done", "error"):
                    raise_for(ev)
                    return ev[1]
        except ClientGone:
            return None

    def sse(obj) -> str:
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

    # ------------------------------------------------------------------ text
    def text_request(served: Served, body: S.Sampling, prompt: str | None,
                     messages: tuple = ()) -> tuple[GenRequest, int]:
        if body.n > served.worker.max_n:                 # before anything is made for each choice
            raise ApiError(400, f"n must be at most {served.worker.max_n} for this server (its batch size), "
                                f"got {body.n}", param="n")
        chars = len(prompt) if prompt is not None else sum(len(c) for _, c in messages)
        if chars > limits.max_prompt_chars:
            raise ApiError(400, f"the prompt has {chars} characters; this server takes at most "
                                f"{limits.max_prompt_chars}", param="messages" if messages else "prompt")
        if body.max_tokens is not None and body.max_tokens > limits.max_tokens:
            raise ApiError(400, f"max_tokens must be at most {limits.max_tokens}, got {body.max_tokens}",
                           param="max_tokens")
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stop) > limits.max_stop or any(not 1 <= len(s) <= 64 for s in stop):
            raise ApiError(400, f"stop takes at most {limits.max_stop} strings of 1 to 64 characters", param="stop")
        seed = body.seed if body.seed is not None else secrets.randbelow(2 ** 31)
        gen = GenRequest(num=body.n, seed=seed, prompt=prompt, messages=messages, temperature=body.temperature,
                         top_k=body.top_k, top_p=body.top_p, max_new_tokens=body.max_tokens or limits.default_tokens,
                         stop=tuple(stop))
        check_request(served.recipe, gen, API_NAMES)
        return gen, seed

    async def text_route(request: Request, served: Served, body: S.Sampling, prompt: str | None, chat: bool,
                         record_prompt: str, messages: tuple = ()):
        gen, seed = text_request(served, body, prompt, messages)
        job, q, deadline = submit(served, gen)
        rid, created = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}", int(time.time())
        params = {k: v for k, v in body.model_dump().items() if k not in ("model", "prompt", "messages", "stream",
                                                                           "seed", "user", "stream_options")}

        def record(streams) -> None:
            if history is not None:
                history.add(served.name, "chat" if chat else "completions", record_prompt, params, seed,
                            text="\n\n".join(s.text for s in streams))

        def usage(streams) -> S.Usage:
            p, c = len(streams[0].prompt) * len(streams), sum(len(s.tokens) for s in streams)
            return S.Usage(prompt_tokens=p, completion_tokens=c, total_tokens=p + c)

        def chunk(index: int, piece: str | None, finish: str | None) -> dict:
            if chat:
                delta = {} if piece is None else {"content": piece}
                return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": served.name,
                        "seed": seed, "choices": [{"index": index, "delta": delta, "finish_reason": finish}]}
            return {"id": rid, "object": "text_completion", "created": created, "model": served.name, "seed": seed,
                    "choices": [{"text": piece or "", "index": index, "logprobs": None, "finish_reason": finish}]}

        def piece_template(index: int) -> tuple[str, str]:
            """The SSE text of a chunk carrying a piece, split around the piece (formatted once per choice)."""
            marker = "\u2063\u2063"
            text = sse(chunk(index, marker, None))
            head, tail = text.split(marker)
            return head, tail

        if body.stream:
            async def events():
                ended = False
                try:
                    if chat:
                        for i in range(gen.num):
                            first = chunk(i, None, None)
                            first["choices"][0]["delta"] = {"role": "assistant", "content": ""}
                            yield sse(first)
                    templates = [piece_template(i) for i in range(gen.num)]
                    while True:
                        events = [await next_event(q, job, deadline, None)]
                        while not q.empty():                # what else has arrived: sent in one write
                            events.append(q.get_nowait())
                        out = []
                        for ev in events:
                            if ev[0] == "text":
                                head, tail = templates[ev[1]]
                                out.append(head + json.dumps(ev[2], ensure_ascii=False)[1:-1] + tail)
                            elif ev[0] == "done":
                                ended = True
                                out += [sse(chunk(i, None, s.finish)) for i, s in enumerate(ev[1])]
                                record(ev[1])
                                out.append("data: [DONE]\n\n")
                            else:
                                ended, e = True, ev[1]
                                out.append(sse({"error": {"message": str(e), "type": "invalid_request_error" if
                                                          isinstance(e, AigcError) else "server_error",
                                                          "param": None, "code": None}}))
                                out.append("data: [DONE]\n\n")
                        yield "".join(out)
                        if ended:
                            return
                except ApiError as e:
                    ended = True
                    yield sse({"error": {"message": e.message, "type": e.type, "param": e.param, "code": e.code}})
                    yield "data: [DONE]\n\n"
                finally:
                    if not ended:                     # the client went away: its streams stop at the next step
                        metrics.disconnects += 1
                    job.cancel()

            return StreamingResponse(events(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

        streams = await wait_result(job, q, deadline, request)
        if streams is None:
            return error_response(499, "the client went away")
        record(streams)
        if chat:
            return S.ChatResponse(id=rid, created=created, model=served.name, seed=seed, usage=usage(streams),
                                  choices=[S.ChatChoice(index=i, message=S.ChatMessageOut(content=s.text),
                                                        finish_reason=s.finish) for i, s in enumerate(streams)])
        return S.CompletionResponse(id=rid, created=created, model=served.name, seed=seed, usage=usage(streams),
                                    choices=[S.CompletionChoice(text=s.text, index=i, finish_reason=s.finish)
                                             for i, s in enumerate(streams)])

    @app.post("/v1/completions", response_model=S.CompletionResponse, dependencies=v1,
              responses={**ERRORS, **SSE})
    async def completions(body: S.CompletionRequest, request: Request):
        served = model_for(body.model, "text", "/v1/completions")
        prompt = body.prompt
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise ApiError(400, "prompt: give one string (a list of several prompts is not supported; send "
                                    "one request each)", param="prompt")
            prompt = prompt[0]
        return await text_route(request, served, body, prompt, False, prompt)

    @app.post("/v1/chat/completions", response_model=S.ChatResponse, dependencies=v1,
              responses={**ERRORS, **SSE})
    async def chat_completions(body: S.ChatRequest, request: Request):
        served = model_for(body.model, "text", "/v1/chat/completions")
        messages = tuple((m.role, m.content) for m in body.messages)
        served.recipe.chat_prompt(list(messages))         # a clear 400 for a model that does not chat, or a bad chat
        return await text_route(request, served, body, None, True, body.messages[-1].content, messages)

    # ------------------------------------------------------------------ images and video
    def media_request(served: Served, body: S.MediaRequest, limit: int, frames=None) -> tuple[GenRequest, int]:
        if body.n > limit:
            raise ApiError(400, f"n must be at most {limit} for this route, got {body.n}", param="n")
        if body.prompt is not None and len(body.prompt) > limits.max_prompt_chars:
            raise ApiError(400, f"the prompt has {len(body.prompt)} characters; this server takes at most "
                                f"{limits.max_prompt_chars}", param="prompt")
        seed = body.seed if body.seed is not None else secrets.randbelow(2 ** 31)
        gen = GenRequest(num=body.n, seed=seed, prompt=body.prompt or None, label=body.label, steps=body.steps,
                         guidance=body.guidance, sampler=body.sampler, frames=frames)
        check_request(served.recipe, gen, API_NAMES)
        return gen, seed

    async def media_route(request: Request, served: Served, body: S.MediaRequest, gen: GenRequest, seed: int,
                          route: str, build):
        job, q, deadline = submit(served, gen)
        params = {k: v for k, v in body.model_dump().items()
                  if k not in ("model", "prompt", "stream", "seed", "user") and v is not None}

        def finish(result):
            response, files = build(result, seed)
            if history is not None:
                history.add(served.name, route, body.prompt, params, seed, data=files[0], suffix=files[1])
            return response

        if body.stream:
            async def events():
                ended = False
                try:
                    while True:
                        ev = await next_event(q, job, deadline, None)
                        if ev[0] == "progress":
                            yield sse({"type": "progress", "done": ev[1], "total": ev[2]})
                        elif ev[0] == "done":
                            ended = True
                            yield sse({"type": "result", **finish(ev[1]).model_dump()})
                            yield "data: [DONE]\n\n"
                            return
                        else:
                            ended = True
                            raise_for(ev)
                except ApiError as e:
                    ended = True
                    yield sse({"error": {"message": e.message, "type": e.type, "param": e.param, "code": e.code}})
                    yield "data: [DONE]\n\n"
                except ClientGone:
                    return
                finally:
                    if not ended:
                        metrics.disconnects += 1
                    job.cancel()

            return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        result = await wait_result(job, q, deadline, request)
        if result is None:
            return error_response(499, "the client went away")
        return finish(result)

    @app.post("/v1/images/generations", response_model=S.ImageResponse, dependencies=v1,
              responses={**ERRORS, **SSE})
    async def images(body: S.ImageRequest, request: Request):
        from aigc.io.images import grid, png_bytes

        served = model_for(body.model, "images", "/v1/images/generations")
        gen, seed = media_request(served, body, limits.max_images)
        own = served.recipe.output_size()
        if body.size is not None and body.size != own:
            raise ApiError(400, f"size {body.size!r}: this model makes {own} images; leave size out or give "
                                f"{own}", param="size")

        def build(result, seed):
            imgs = result.images
            labels = result.labels.tolist() if result.labels is not None else [None] * len(imgs)
            prompts = result.prompts or [None] * len(imgs)
            data = [S.ImageData(b64_json=base64.b64encode(png_bytes(im)).decode(), revised_prompt=p, label=lb)
                    for im, p, lb in zip(imgs, prompts, labels)]
            return (S.ImageResponse(created=int(time.time()), data=data, seed=seed),
                    (png_bytes(grid(imgs), scale=2), ".png"))

        return await media_route(request, served, body, gen, seed, "images", build)

    @app.post("/v1/videos/generations", response_model=S.VideoResponse, dependencies=v1,
              responses={**ERRORS, **SSE})
    async def videos(body: S.VideoRequest, request: Request):
        from aigc.io.images import gif_bytes

        served = model_for(body.model, "video", "/v1/videos/generations")
        gen, seed = media_request(served, body, limits.max_videos, body.frames)

        def build(result, seed):
            clips = result.videos
            prompts = result.prompts or [None] * len(clips)
            data = [S.VideoData(b64_gif=base64.b64encode(gif_bytes(c[None])).decode(), prompt=p)
                    for c, p in zip(clips, prompts)]
            return S.VideoResponse(created=int(time.time()), data=data, seed=seed), (gif_bytes(clips), ".gif")

        return await media_route(request, served, body, gen, seed, "videos", build)

    # ------------------------------------------------------------------ speech
    @app.post("/v1/audio/speech", dependencies=v1, response_class=Response,
              responses={**ERRORS, 200: {"content": {"audio/wav": {}}, "description": "a WAV file"}})
    async def speech(body: S.SpeechRequest, request: Request):
        """Text to speech (OpenAI's route): the WAV file of `input` spoken by a text-to-speech model."""
        from aigc.io.audio import wav_bytes

        served = model_for(body.model, "audio", ROUTES["audio"])
        seed = body.seed if body.seed is not None else secrets.randbelow(2 ** 31)
        gen = GenRequest(num=1, seed=seed, prompt=body.input, voice=body.voice)
        check_request(served.recipe, gen, {**API_NAMES, "prompt": "input"})
        job, q, deadline = submit(served, gen)
        result = await wait_result(job, q, deadline, request)
        if result is None:
            return error_response(499, "the client went away")
        wav = wav_bytes(result.audio[0], result.sample_rate)
        if history is not None:
            history.add(served.name, "speech", body.input, {"voice": body.voice}, seed, data=wav, suffix=".wav")
        return Response(wav, media_type="audio/wav", headers={"X-Seed": str(seed)})

    # ------------------------------------------------------------------ captions
    @app.post("/v1/captions", response_model=S.CaptionResponse, dependencies=v1, responses=ERRORS)
    async def captions(body: S.CaptionRequest, request: Request):
        """Captions of base64 images (or GIF clips) by a captioner model: one per image, or n each with top_p."""
        served = model_for(body.model, "text", ROUTES["captions"])
        files = []
        for i, b64 in enumerate(body.images):
            try:
                files.append(base64.b64decode(b64, validate=True))
            except (ValueError, TypeError):
                raise ApiError(400, f"images[{i}] is not valid base64", param="images") from None
        seed = body.seed if body.seed is not None else secrets.randbelow(2 ** 31)
        gen = GenRequest(num=body.n, seed=seed, image=tuple(files), beam=body.beam, top_p=body.top_p)
        check_request(served.recipe, gen, API_NAMES)
        job, q, deadline = submit(served, gen)
        result = await wait_result(job, q, deadline, request)
        if result is None:
            return error_response(499, "the client went away")
        data = [S.CaptionData(index=i // body.n, text=t) for i, t in enumerate(result.texts)]
        if history is not None:
            history.add(served.name, "captions", None, {"images": len(files), "n": body.n, "beam": body.beam,
                                                        "top_p": body.top_p}, seed, text="\n".join(result.texts))
        return S.CaptionResponse(created=int(time.time()), model=served.name, data=data, seed=seed)

    known_paths.update(r.path for r in app.routes)

    def openapi() -> dict:
        """The schema, with the served models' names as the `model` field's choices."""
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            schema = get_openapi(title=app.title, version=app.version, summary=app.summary,
                                 description=app.description, routes=app.routes)
            for name, body in schema.get("components", {}).get("schemas", {}).items():
                field = body.get("properties", {}).get("model")
                if field is not None and name.endswith("Request"):
                    field["enum"] = list(models)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    return app
