"""The HTTP API: a FastAPI app over one ``ServedModel`` and its token-budget batcher.

Routes: ``POST /v1/qa``, ``/v1/embed``, ``/v1/classify``; ``GET /health`` (alive), ``/ready`` (loaded
and warm), ``/v1/info``, ``/metrics`` (Prometheus), ``/openapi.json`` and the page at ``/``.

Every response carries an ``X-Request-ID`` (the client's, when it sends a sane one); every error
is ``{"error": {"code", "message"}, "request_id"}`` with its status: 413 for bodies, texts or
requests past the limits, 422 for malformed or empty fields, 400 for a kind of work the model has
no head for, 503 with ``Retry-After`` while the queue is full or the model is not ready, 504 past
the timeout, 500 when the model fails (the server goes on serving).

Example:
    >>> app = create_app(ServedModel.load(), ServeSettings(max_batch_tokens=8192))
    >>> uvicorn.run(app, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from importlib import resources

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException

from bertrt.serve.metrics import Metrics
from bertrt.serve.model import MissingHead, ServedModel
from bertrt.serve.model_process import RemoteBatcher, RemoteModel
from bertrt.serve.schemas import (Classification, Classifications, ClassifyRequest, EmbedRequest, Embeddings,
                                  ErrorBody, Health, Info, QAAnswer, QARequest, QAResults)
from bertrt.serve.worker import ModelBatcher, ModelFailure, Overloaded, TimedOut, freeze_heap, run_windows, thaw_heap
from bertrt.tokenizer import EncodingCache

log = logging.getLogger("bertrt.serve")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


@dataclasses.dataclass(frozen=True)
class ServeSettings:
    """Limits and batching of one server.

    Args:
        max_batch_tokens: real tokens per packed batch at most.
        max_delay_ms: how long the oldest queued window may wait for a fuller batch.
        max_queue_tokens: tokens queued at most; past it requests get 503 (memory stays bounded).
        timeout_s: a request still unanswered after this gets 504 and its queued work is dropped.
        max_body_bytes: request bodies past this get 413.
        max_text_chars: a context or text past this gets 413.
        max_question_chars: a question past this gets 413.
        max_inputs: items of one request's ``inputs`` at most (413 past it).
    """

    max_batch_tokens: int = 16384
    max_delay_ms: float = 2.0
    max_queue_tokens: int = 131072
    timeout_s: float = 30.0
    max_body_bytes: int = 1 << 20
    max_text_chars: int = 50_000
    max_question_chars: int = 2_000
    max_inputs: int = 32

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "max_delay_ms" and value < 0:
                raise ValueError(f"{f.name} must not be negative, got {value:g}")
            if value <= 0 and f.name != "max_delay_ms":
                raise ValueError(f"{f.name} must be positive, got {value:g}")


class ApiError(Exception):
    """An error answered to the client as ``ErrorBody`` with ``status``."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


# Requests with at most this many characters of distinct text tokenise on the event loop (~3 ms
# at most, at the ~5 characters/us of BERT's tokenizer on one EPYC core), longer ones on a thread.
# In one serve_overhead.py run each on two EPYC cores, eight-question requests cost 3.5 ms of server
# CPU tokenised inline, 3.6 ms on a thread of their own and 6.5 ms on the 40-thread pool.
INLINE_TOKENIZE_CHARS = 16384


def _json(content) -> Response:
    return Response(json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode(),
                    media_type="application/json")


def _error(request_id: str, status: int, code: str, message: str, headers=None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}, "request_id": request_id},
                        status_code=status, headers=headers)


ERRORS = {status: {"model": ErrorBody, "description": what} for status, what in (
    (400, "the loaded model has no head for this kind of work"),
    (413, "the body, a text or the request's windows are past the server's limits"),
    (422, "malformed JSON, missing, wrongly typed or empty fields"),
    (500, "the model failed on this request (quote the request id)"),
    (503, "the queue is full or the model is not ready: retry after Retry-After seconds"),
    (504, "the request took longer than the server's timeout"))}


class _Edge:
    """Outermost layer (pure ASGI): request id, body limit, request counts and latency."""

    def __init__(self, app, *, metrics: Metrics, max_body_bytes: int, routes: frozenset[str]):
        self.app, self.metrics, self.max_body_bytes, self.routes = app, metrics, max_body_bytes, routes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        arrived = time.perf_counter()
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"], state["arrived"] = request_id, arrived
        route = scope["path"] if scope["path"] in self.routes else "other"  # bounded label values
        status = 500

        async def send_with_id(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)["x-request-id"] = request_id
            await send(message)

        try:
            if scope["method"] in _BODY_METHODS:
                body = await self._read_body(scope, receive)
                if body is None:  # past the limit, or the client left
                    too_large = _error(request_id, 413, "body_too_large",
                                       f"the request body is larger than {self.max_body_bytes} bytes")
                    return await too_large(scope, receive, send_with_id)
                receive = _replay(body, receive)
            await self.app(scope, receive, send_with_id)
        finally:
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.request_seconds.labels(route).observe(time.perf_counter() - arrived)

    async def _read_body(self, scope, receive) -> bytes | None:
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _replay(body: bytes, receive):
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()
    return replay


def page_html() -> str:
    return resources.files("bertrt.serve").joinpath("static/index.html").read_text(encoding="utf-8")


def tokenize_in_the_calling_thread() -> None:
    """Make the tokenizers library tokenise a batch of texts in the thread that asks, for this
    whole process (unless ``TOKENIZERS_PARALLELISM`` is set already). A server tokenises one
    request's few texts at a time while other requests and workers keep the cores busy, where the
    library's thread pool only adds its hand-offs: a SQuAD question and its paragraph took 0.44
    ms of CPU through the pool on an EPYC core and 0.24 ms without it."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def create_app(model: ServedModel | RemoteModel, settings: ServeSettings = ServeSettings(), *,
               warm_up: bool = True) -> FastAPI:
    """The API over ``model`` (loaded here, or a ``RemoteModel`` run by a model process). Its lifespan
    starts the batcher's worker, warms the model (``/ready`` turns 200), and at shutdown finishes
    what is queued before the worker ends. The process tokenises without the tokenizers library's
    thread pool from here on (``tokenize_in_the_calling_thread``)."""
    from bertrt import __version__
    from bertrt.tasks.qa import best_answer, qa_features_batch

    tokenize_in_the_calling_thread()
    metrics = Metrics()
    tokenizer = model.tokenizer
    # Consecutive SQuAD questions mostly share their paragraph, as questions about one passage do:
    # a kept context costs no tokenising (~0.15 ms of a ~750-character one).
    contexts = EncodingCache()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if isinstance(model, RemoteModel):  # the model runs in a process shared by several workers
            batcher = RemoteBatcher(model, metrics, drain_timeout_s=settings.timeout_s)
        else:
            batcher = ModelBatcher(model, metrics, max_batch_tokens=settings.max_batch_tokens,
                                   max_delay_s=settings.max_delay_ms / 1000,
                                   max_queue_tokens=settings.max_queue_tokens)
        metrics.watch_queue(batcher)
        app.state.batcher = batcher.start()
        app.state.tokenizer_thread = ThreadPoolExecutor(1, thread_name_prefix="serve-tokenizer")
        if warm_up:
            await run_in_threadpool(model.warm_up, batcher.max_batch_tokens)
        freeze_heap()
        app.state.ready = True
        metrics.ready.set(1)
        try:
            yield
        finally:
            app.state.ready = False
            metrics.ready.set(0)
            await run_in_threadpool(batcher.stop)
            app.state.tokenizer_thread.shutdown(wait=False)
            thaw_heap()

    app = FastAPI(title="bertrt", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="BERT encoders behind HTTP: extractive question answering, sentence "
                              "embeddings and classification, batched by tokens into packed forward passes.")
    app.state.ready = False
    app.state.model, app.state.settings, app.state.metrics = model, settings, metrics

    # --- errors ----------------------------------------------------------------------------

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return _error(request.state.request_id, exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        problems = []
        for err in exc.errors()[:5]:
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
            problems.append(f"{where}: {err.get('msg', 'invalid')}")
        return _error(request.state.request_id, 422, "invalid_request", "; ".join(problems) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error(request.state.request_id, exc.status_code, code, str(exc.detail), exc.headers)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception):
        request_id = request.scope.get("state", {}).get("request_id", "-")
        log.exception("request %s failed", request_id)
        return _error(request_id, 500, "internal_error",
                      f"the server failed on this request; quote request id {request_id}",
                      {"x-request-id": request_id})

    # --- shared by the routes ----------------------------------------------------------------

    def batcher_for(request: Request) -> ModelBatcher | RemoteBatcher:
        if not app.state.ready:
            raise ApiError(503, "not_ready", "the model is loading or the server is stopping",
                           {"Retry-After": "1"})
        batcher = app.state.batcher
        if not batcher.alive:
            raise ApiError(503, "not_ready", "the model's batcher has stopped (the model process is gone)",
                           {"Retry-After": "1"})
        # A full queue refuses before tokenising: overload must not be paid for in host time.
        if batcher.queued_tokens >= settings.max_queue_tokens:
            raise ApiError(503, "overloaded", f"the server is busy ({batcher.queued_tokens} tokens queued)",
                           {"Retry-After": str(batcher.retry_after_s())})
        return batcher

    def too_large(what: str, size: int, limit: int, unit: str = "characters") -> ApiError:
        return ApiError(413, "too_large", f"{what} has {size} {unit}; the server takes at most {limit}")

    def check_inputs(count: int) -> None:
        if count > settings.max_inputs:
            raise too_large("inputs", count, settings.max_inputs, "items")

    def check_text(what: str, text: str, limit: int | None = None) -> None:
        limit = settings.max_text_chars if limit is None else limit
        if len(text) > limit:
            raise too_large(f"the {what}", len(text), limit)

    async def run(request: Request, kind: str, sequences) -> list[np.ndarray]:
        batcher = batcher_for(request)
        tokens = sum(len(ids) for ids, _ in sequences)
        if tokens > settings.max_queue_tokens:
            raise too_large("the request", tokens, settings.max_queue_tokens, "tokens")
        deadline = request.state.arrived + settings.timeout_s
        try:
            return await run_windows(batcher, kind, sequences, deadline)
        except Overloaded as exc:
            raise ApiError(503, "overloaded", str(exc), {"Retry-After": str(exc.retry_after_s)}) from None
        except TimedOut as exc:
            raise ApiError(504, "timeout", f"{exc} ({settings.timeout_s:g} s)") from None
        except ModelFailure as exc:
            raise ApiError(500, "model_error", f"{exc}; quote request id {request.state.request_id}") from None

    def require(kind: str) -> None:
        try:
            model.require(kind)
        except MissingHead as exc:
            raise ApiError(400, "no_such_head", str(exc)) from None

    async def tokenized(route: str, fn, chars: int):
        start = time.perf_counter()
        try:
            # Small requests tokenise on the event loop: the hop to a pool thread and back cost
            # ~0.14 ms of CPU, more than tokenising a SQuAD question does, and gains nothing under
            # the interpreter lock. Long texts go to one thread of their own (the tokenizer releases
            # the lock while it runs): one thread, not a pool of 40, so that fewer threads contend
            # for the lock with the batcher's, whose every kernel launch gives the lock up.
            if chars <= INLINE_TOKENIZE_CHARS:
                return fn()
            return await asyncio.get_running_loop().run_in_executor(app.state.tokenizer_thread, fn)
        except ValueError as exc:
            raise ApiError(422, "no_tokens", str(exc)) from None
        finally:
            metrics.tokenize_seconds.labels(route).observe(time.perf_counter() - start)

    def fit(ids: list[int], limit: int, truncate: bool, what: str) -> list[int]:
        if len(ids) <= limit:
            return ids
        if truncate:
            return ids[:limit]
        raise too_large(what, len(ids), limit, "tokens (pass truncate: true to cut it)")

    # --- work routes -------------------------------------------------------------------------

    @app.post("/v1/qa", response_model=QAAnswer | QAResults, responses=ERRORS, tags=["work"],
              summary="Answer questions about passages (extractive spans)")
    async def qa(body: QARequest, request: Request):
        require("qa")
        batcher_for(request)
        pairs = body.pairs()
        check_inputs(len(pairs))
        for p in pairs:
            check_text("question", p.question, settings.max_question_chars)
            check_text("context", p.context)
        prepared = await tokenized("/v1/qa", lambda: qa_features_batch(
            tokenizer, [(p.question, p.context) for p in pairs], config=model.features, contexts_cache=contexts),
            sum(len(p.question) for p in pairs) + sum(len(c) for c in {p.context for p in pairs}))
        sequences = [(f.input_ids, f.token_type_ids) for _, features in prepared for f in features]
        outputs = await run(request, "qa", sequences)
        answers, at = [], 0
        for example, features in prepared:
            logits = outputs[at:at + len(features)]
            at += len(features)
            best = best_answer(example, features, [x[:, 0] for x in logits], [x[:, 1] for x in logits])
            answers.append({"answer": best.text, "score": round(float(best.score), 4), "start": int(best.start),
                            "end": int(best.end), "probability": round(float(best.probability), 4)})
        # Serialised here: FastAPI's validation and encoding of the response models (kept for
        # the OpenAPI document) would cost more than the JSON itself.
        return _json(answers[0] if body.inputs is None else {"results": answers})

    @app.post("/v1/embed", response_model=Embeddings, responses=ERRORS, tags=["work"],
              summary="Sentence vectors: mean of the last hidden states")
    async def embed(body: EmbedRequest, request: Request):
        batcher_for(request)
        texts = body.texts()
        check_inputs(len(texts))
        for text in texts:
            check_text("text", text)
        room = model.info.max_seq_length - 2

        def prepare():
            return [tokenizer.pair(fit(enc.ids, room, body.truncate, "a text"))
                    for enc in tokenizer.encode_batch(texts)]
        sequences = await tokenized("/v1/embed", prepare, sum(len(t) for t in texts))
        vectors = np.stack(await run(request, "embed", sequences))
        if body.normalize:
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return Embeddings(embeddings=vectors.tolist(), dimensions=vectors.shape[1])

    @app.post("/v1/classify", response_model=Classification | Classifications, responses=ERRORS, tags=["work"],
              summary="Classify sentences or sentence pairs (models with a classification head)")
    async def classify(body: ClassifyRequest, request: Request):
        require("classify")
        batcher_for(request)
        pairs = body.pairs()
        check_inputs(len(pairs))
        for p in pairs:
            check_text("text", p.text)
            if p.text_pair is not None:
                check_text("text_pair", p.text_pair)
        room = model.info.max_seq_length

        def prepare():
            sequences = []
            for p in pairs:
                first = tokenizer.encode(p.text).ids
                second = None if p.text_pair is None else tokenizer.encode(p.text_pair).ids
                sequences.append(tokenizer.pair(*_fit_pair(first, second, room, body.truncate, too_large)))
            return sequences
        sequences = await tokenized("/v1/classify", prepare,
                                    sum(len(p.text) + len(p.text_pair or "") for p in pairs))
        results = []
        for logits in await run(request, "classify", sequences):
            e = np.exp(logits - logits.max())
            probs = e / e.sum()
            results.append(Classification(label=int(np.argmax(logits)),
                                          probabilities=[round(float(p), 6) for p in probs]))
        return results[0] if body.inputs is None else Classifications(results=results)

    # --- service routes ----------------------------------------------------------------------

    @app.get("/health", response_model=Health, tags=["service"], summary="The process is alive")
    async def health():
        return Health(status="ok")

    @app.get("/ready", response_model=Health, tags=["service"], responses={503: {"model": Health}},
             summary="The model is loaded and warm, and the server is not stopping")
    async def ready():
        if app.state.ready and app.state.batcher.alive:
            return Health(status="ready")
        return JSONResponse({"status": "not ready"}, status_code=503, headers={"Retry-After": "1"})

    @app.get("/v1/info", response_model=Info, tags=["service"], summary="Model, precision, device and limits")
    async def info():
        i = model.info
        limits = {k: float(v) for k, v in dataclasses.asdict(settings).items()}
        return Info(model=i.name, device=i.device, precision=i.precision, heads=list(i.heads),
                    routes=[f"/v1/{k}" for k in ("qa", "embed", "classify") if model.supports(k)],
                    hidden_size=i.hidden_size, num_labels=i.num_labels, max_seq_length=i.max_seq_length,
                    limits=limits, version=__version__)

    @app.get("/metrics", tags=["service"], summary="Prometheus metrics (text exposition format)",
             response_class=Response, responses={200: {"content": {"text/plain": {}}}})
    async def prometheus():
        return Response(metrics.render(), media_type=Metrics.content_type)

    @app.get("/", include_in_schema=False)
    async def page():
        return HTMLResponse(page_html())

    routes = frozenset(r.path for r in app.routes)
    app.add_middleware(_Edge, metrics=metrics, max_body_bytes=settings.max_body_bytes, routes=routes)
    return app


ENVIRONMENT_KEY = "BERTRT_SERVE_OPTIONS"


def environment_options(model: str | None, engine: str | None, device: str, settings: ServeSettings,
                        model_process: dict | None = None) -> str:
    """What ``app_from_environment`` reads from ``ENVIRONMENT_KEY``: the model to load (or the model
    process to connect to, ``ModelProcess.worker_options``) and the settings."""
    return json.dumps({"model": model, "engine": engine, "device": device, "settings": dataclasses.asdict(settings),
                       "model_process": model_process})


def app_from_environment() -> FastAPI:
    """The app of one of ``bertrt serve --workers N``'s processes: it loads the model, or connects
    to the model process, that ``environment_options`` wrote into ``ENVIRONMENT_KEY``."""
    try:
        options = json.loads(os.environ[ENVIRONMENT_KEY])
    except KeyError:
        raise RuntimeError(f"{ENVIRONMENT_KEY} is not set: start the workers with `bertrt serve --workers N`") from None
    shared = options.get("model_process")
    if shared:
        model = RemoteModel.connect(shared["address"], bytes.fromhex(shared["authkey"]))
    else:
        model = ServedModel.load(options["model"], engine=options["engine"], device=options["device"],
                                 graph_max_tokens=options["settings"]["max_batch_tokens"])
    return create_app(model, ServeSettings(**options["settings"]))


def _fit_pair(first: list[int], second: list[int] | None, room: int, truncate: bool, too_large):
    """Cut the longer text first until [CLS] first [SEP] second [SEP] fits ``room`` tokens."""
    special = 2 if second is None else 3
    total = len(first) + len(second or []) + special
    if total <= room:
        return first, second
    if not truncate:
        raise too_large("the pair", total, room, "tokens (pass truncate: true to cut it)")
    first, second = list(first), None if second is None else list(second)
    while len(first) + len(second or []) + special > room:
        if second and len(second) >= len(first):
            second.pop()
        else:
            first.pop()
    return first, second
