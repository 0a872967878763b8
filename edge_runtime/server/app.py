"""The aiohttp application: routes, JSON errors, per-route metrics, the bearer token. Handlers stay thin:
the work is in Service (admission, batching, deadlines) and v2 (protocol mapping).

With a token configured ([server] token or token_file), `/v1/admin/*` and `/v1/requests/{id}` (it
returns re-identified text) answer 401 without `Authorization: Bearer <token>`, and so do `/metrics` and
`/v1/status` with protect_status. The compare is constant-time; refusals are counted
(edge_runtime_rejected_total{reason="unauthorized"})."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time

from aiohttp import web

from . import v2
from .errors import RequestError
from .inputs import Limits, check_texts, parse_json, read_body

log = logging.getLogger(__name__)

SERVICE = web.AppKey("service", object)
LIMITS = web.AppKey("limits", Limits)
REQUEST_ID = re.compile(r"^[0-9a-f]{32}$")
V1_FIELDS = {"text", "texts", "top_k"}
PRIVATE_ROUTES = frozenset({"v1_reload", "v1_request"})  # and every /v1/admin/ path
STATUS_ROUTES = frozenset({"v1_status", "metrics"})


def json_response(data, status: int = 200, headers=None) -> web.Response:
    return web.Response(
        body=json.dumps(data, ensure_ascii=False).encode(),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def error_response(status: int, reason: str, retry_after: int | None = None, headers=None) -> web.Response:
    headers = dict(headers or {})
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return json_response({"error": reason}, status, headers)


@web.middleware
async def errors_and_metrics(request: web.Request, handler):
    started = time.perf_counter()
    route = request.match_info.route.name or "unmatched"
    try:
        response = await handler(request)
    except RequestError as error:
        response = error_response(error.status, error.reason, error.retry_after)
    except web.HTTPException as error:  # 404 unknown path, 405 wrong method, 413 ...
        headers = {k: v for k, v in error.headers.items() if k in ("Allow",)}
        response = error_response(error.status, error.reason.lower(), headers=headers)
    except Exception:
        log.exception("unexpected error", extra={"route": route})
        response = error_response(500, "internal error (see the daemon's log)")
    metrics = request.app[SERVICE].metrics
    metrics.requests.labels(route, str(response.status)).inc()
    metrics.latency.labels(route).observe(time.perf_counter() - started)
    return response


def bearer_token(token: str | None, protect_status: bool = False):
    """Middleware: the private routes (and with protect_status the status routes) need the token."""
    expected = token.encode() if token else None
    routes = PRIVATE_ROUTES | (STATUS_ROUTES if protect_status else frozenset())

    @web.middleware
    async def require_token(request: web.Request, handler):
        if expected is not None and (request.match_info.route.name in routes or request.path.startswith("/v1/admin/")):
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
                request.app[SERVICE].metrics.rejected.labels("unauthorized").inc()
                return error_response(
                    401,
                    "unauthorized: this route needs the daemon's bearer token (Authorization: Bearer ...)",
                    headers={"WWW-Authenticate": 'Bearer realm="edge-runtime"'},
                )
        return await handler(request)

    return require_token


# -- shared helpers --------------------------------------------------------------------------------


def _engine_for(request: web.Request):
    """The serving engine when the path names it (and its version, if given); 404 otherwise."""
    engine = request.app[SERVICE].swap.current
    name, version = request.match_info.get("name"), request.match_info.get("version")
    if name != engine.name:
        raise RequestError(404, f"unknown model {name!r} (serving {engine.name!r})")
    if version is not None and version != engine.version:
        raise RequestError(404, f"model {name!r} has no version {version!r} loaded (serving {engine.version})")
    return engine


# -- V2 --------------------------------------------------------------------------------------------


async def v2_server(request):
    return json_response(v2.server_metadata())


async def v2_live(request):
    return json_response({"live": True})


async def v2_ready(request):
    service = request.app[SERVICE]
    ready = not service.draining and service.batcher.alive
    return json_response({"ready": ready}, 200 if ready else 503)


async def v2_model(request):
    return json_response(v2.model_metadata(_engine_for(request)))


async def v2_model_ready(request):
    engine = _engine_for(request)
    return json_response({"name": engine.name, "ready": True})


async def v2_infer(request):
    _engine_for(request)
    service, limits = request.app[SERVICE], request.app[LIMITS]
    header = request.headers.get(v2.HEADER_LENGTH)
    allowed = ("application/json", "application/octet-stream") if header is not None else ("application/json",)
    body = await read_body(request, limits, allowed)
    parsed = v2.parse_infer(body, header, parse_json)
    check_texts(parsed.texts, limits, field=f"input '{v2.INPUT}'")
    engine, predictions = await service.predict(parsed.texts)
    payload, headers = v2.infer_response(engine, parsed, predictions)
    return web.Response(body=payload, headers=headers)


# -- /v1 -------------------------------------------------------------------------------------------


async def v1_predict(request):
    service, limits = request.app[SERVICE], request.app[LIMITS]
    data = parse_json(await read_body(request, limits))
    if not isinstance(data, dict):
        raise RequestError(400, 'expected a JSON object: {"text": ...} or {"texts": [...]}')
    unknown = sorted(set(data) - V1_FIELDS)
    if unknown:
        raise RequestError(400, f"unknown field {unknown[0]!r} (known: text, texts, top_k)")
    if ("text" in data) == ("texts" in data):
        raise RequestError(400, 'give exactly one of "text" (a string) or "texts" (a list of strings)')
    top_k = data.get("top_k", 5)
    if not (isinstance(top_k, int) and not isinstance(top_k, bool) and 1 <= top_k <= 5):
        raise RequestError(400, "top_k: must be an integer 1-5")
    single = "text" in data
    texts = check_texts([data["text"]] if single else data["texts"], limits, "text" if single else "texts")
    engine, predictions = await service.predict(texts)
    answers = []
    for prediction in predictions:
        answer = prediction.to_dict()
        answer["top_k"] = answer["top_k"][:top_k]
        answers.append(answer)
    head = {"model": engine.name, "version": engine.version}
    return json_response({**head, **answers[0]} if single else {**head, "predictions": answers})


async def v1_request(request):
    request_id = request.match_info["id"]
    if not REQUEST_ID.match(request_id):
        raise RequestError(404, "unknown request id")
    state, answer = await asyncio.to_thread(request.app[SERVICE].answer, request_id)  # SQLite: off the loop
    if state == "unknown":
        raise RequestError(404, "unknown request id")
    if state == "pending":
        return json_response({"request_id": request_id, "status": "pending"}, 202)
    return json_response({"request_id": request_id, "status": "answered", "answer": answer})


async def v1_status(request):
    return json_response(await asyncio.to_thread(request.app[SERVICE].status))  # SQLite counts: off the loop


async def v1_reload(request):
    result = await request.app[SERVICE].reload()
    return json_response(result, 500 if result["result"] == "failed" else 200)


async def metrics(request):
    service = request.app[SERVICE]
    body = await asyncio.to_thread(service.metrics.render)  # the outbox gauges count in SQLite: off the loop
    return web.Response(body=body, headers={"Content-Type": service.metrics.content_type})


def build_app(service, limits: Limits, token: str | None = None, protect_status: bool = False) -> web.Application:
    app = web.Application(
        client_max_size=limits.max_body_bytes, middlewares=[errors_and_metrics, bearer_token(token, protect_status)]
    )
    app[SERVICE], app[LIMITS] = service, limits
    get, post = web.get, web.post
    routes = [
        get("/v2", v2_server, name="v2_server"),
        get("/v2/health/live", v2_live, name="v2_live"),
        get("/v2/health/ready", v2_ready, name="v2_ready"),
        get("/v2/models/{name}", v2_model, name="v2_model"),
        get("/v2/models/{name}/versions/{version}", v2_model, name="v2_model_version"),
        get("/v2/models/{name}/ready", v2_model_ready, name="v2_model_ready"),
        get("/v2/models/{name}/versions/{version}/ready", v2_model_ready, name="v2_model_version_ready"),
        post("/v2/models/{name}/infer", v2_infer, name="v2_infer"),
        post("/v2/models/{name}/versions/{version}/infer", v2_infer, name="v2_infer_version"),
        post("/v1/predict", v1_predict, name="v1_predict"),
        get("/v1/requests/{id}", v1_request, name="v1_request"),
        get("/v1/status", v1_status, name="v1_status"),
        post("/v1/admin/reload", v1_reload, name="v1_reload"),
        get("/metrics", metrics, name="metrics"),
    ]
    app.add_routes([route for route in routes])
    return app
