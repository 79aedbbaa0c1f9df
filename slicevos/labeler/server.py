"""The labeler's web app (Starlette): the page, its two static files and the JSON / PNG API.

Security rules:

- every request needs the session token: ``?token=`` on the page and its static files, the
  ``X-Slicevos-Token`` header on ``/api/*`` (compared in constant time); else 403;
- the browser never sends a path: the server reads only the scan, ``--labels`` and the
  checkpoint it was started with, and writes only its output and sidecar; static files come
  from a fixed list, any other name is 404;
- request bodies over ``max_body`` bytes are refused (413) before they are read in full;
  a malformed body, field or slice index gets 400 with a one-line message; nothing unpickles.

API (JSON unless said): ``GET /api/info``, ``GET /api/status``, ``GET /api/image/{view}/{i}
?window=abdomen|chest|bone`` (PNG), ``GET /api/labels/{view}/{i}`` (PNG, grey value = label
id), ``POST /api/stroke``, ``/api/fill``, ``/api/undo``, ``/api/propagate``, ``/api/stop``,
``/api/save``, ``/api/discard``.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from slicevos.errors import InputError
from slicevos.labeler import render
from slicevos.labeler.state import Labeler

log = logging.getLogger("slicevos.label")
TOKEN_HEADER = "X-Slicevos-Token"
MAX_BODY = 2_000_000
_STATIC = {"app.js": "text/javascript", "style.css": "text/css"}
_CSP = ("default-src 'self'; img-src 'self' blob: data:; script-src 'self'; "
        "style-src 'self'; connect-src 'self'; frame-ancestors 'none'")


class BodyTooLarge(Exception):
    pass


def new_token() -> str:
    return secrets.token_urlsafe(24)


def page_file(name: str) -> str:
    return resources.files("slicevos.labeler").joinpath("page", name).read_text("utf-8")


async def read_json(request: Request, limit: int) -> Any:
    """The request's JSON body, refusing more than ``limit`` bytes (413) and bad JSON (400)."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise BodyTooLarge(f"request body of {declared} bytes is over the {limit} byte limit")
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise BodyTooLarge(f"request body is over the {limit} byte limit")
    if not data:
        return {}
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as err:
        raise InputError(None, f"request body is not valid JSON ({err})",
                         "send a JSON object") from None


def parse_index(text: str) -> int:
    if not text.isdigit() or len(text) > 6:
        raise InputError(None, f"slice index {text[:20]!r} is not a non-negative integer",
                         "ask for a slice as /api/image/axial/12")
    return int(text)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status, headers={"Cache-Control": "no-store"})


def authorised(request: Request, token: str, api: bool) -> bool:
    """The request carries ``token`` (header on the API, ``?token=`` on the page)."""
    given = (request.headers.get(TOKEN_HEADER) if api
             else request.query_params.get("token")) or ""
    return secrets.compare_digest(given.encode(), token.encode())


def page_routes(token: str) -> list[Route]:
    """The page and its static files (a fixed list; any other name is 404)."""

    async def page(request: Request) -> Response:
        if not authorised(request, token, api=False):
            return HTMLResponse("<h1>403</h1><p>Missing or wrong access token. Open the URL "
                                "that slicevos-label printed in its terminal.</p>", 403)
        html = page_file("index.html").replace("{{TOKEN}}", token)
        return HTMLResponse(html, headers={"Content-Security-Policy": _CSP,
                                           "Cache-Control": "no-store",
                                           "X-Content-Type-Options": "nosniff"})

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if not authorised(request, token, api=False):
            return Response("missing or wrong access token", 403)
        if name not in _STATIC:
            return Response("not found", 404)
        return Response(page_file(name), media_type=_STATIC[name],
                        headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})

    return [Route("/", page), Route("/static/{name:path}", static)]


def create_error_app(message: str, token: str) -> Starlette:
    """The page alone, whose every API call answers ``message`` (the scan could not be
    opened), so ``--open`` shows the one-line error in the browser too."""

    async def refuse(request: Request) -> Response:
        if not authorised(request, token, api=True):
            return _error(403, "missing or wrong access token")
        return _error(400, message)

    return Starlette(routes=[*page_routes(token),
                             Route("/api/{rest:path}", refuse, methods=["GET", "POST"])])


def create_app(labeler: Labeler, token: str, max_body: int = MAX_BODY) -> Starlette:
    """The app serving ``labeler``; every request must carry ``token``."""

    def api(handler: Callable[[Request, Any], Any], body: bool = False) -> Callable:
        async def endpoint(request: Request) -> Response:
            if not authorised(request, token, api=True):
                return _error(403, f"missing or wrong access token (header {TOKEN_HEADER}). "
                              "Fix: open the URL that slicevos-label printed")
            try:
                payload = await read_json(request, max_body) if body else None
                result = await run_in_threadpool(handler, request, payload)
            except BodyTooLarge as err:
                return _error(413, f"{err}. Fix: send smaller strokes")
            except InputError as err:
                return _error(400, str(err))
            except Exception as err:  # a bug must not take the server down
                log.exception("request %s failed", request.url.path)
                return _error(500, f"unexpected {type(err).__name__}: {err}. Fix: see the "
                              "terminal running slicevos-label for the traceback")
            if isinstance(result, Response):
                return result
            return JSONResponse(result, headers={"Cache-Control": "no-store"})
        return endpoint

    def png(data: bytes, cache: bool) -> Response:
        headers = {"Cache-Control": "private, max-age=3600" if cache else "no-store"}
        return Response(data, media_type="image/png", headers=headers)

    def image(request: Request, _: Any) -> Response:
        view, index = request.path_params["view"], parse_index(request.path_params["index"])
        window = request.query_params.get("window", "abdomen")
        return png(render.grey_png(labeler.hu, render.check_view(view), index, window), True)

    def labels(request: Request, _: Any) -> Response:
        view, index = request.path_params["view"], parse_index(request.path_params["index"])
        return png(render.label_png(labeler.session.labels, render.check_view(view), index),
                   False)

    def no_fields(body: Any) -> None:
        if body not in (None, {}):
            raise InputError(None, "this request takes no fields (the server knows its files)",
                             "send an empty body or {}")

    def action(method: Callable[[], Any]) -> Callable[[Request, Any], Any]:
        def handler(_: Request, body: Any) -> Any:
            no_fields(body)
            return method()
        return handler

    def stop() -> dict[str, Any]:
        labeler.stop()
        return labeler.status()

    routes = [
        *page_routes(token),
        Route("/api/info", api(lambda r, b: labeler.info())),
        Route("/api/status", api(lambda r, b: labeler.status())),
        Route("/api/image/{view}/{index}", api(image)),
        Route("/api/labels/{view}/{index}", api(labels)),
        Route("/api/stroke", api(lambda r, b: labeler.stroke(b), body=True), methods=["POST"]),
        Route("/api/fill", api(lambda r, b: labeler.fill(b), body=True), methods=["POST"]),
        Route("/api/accept", api(lambda r, b: labeler.accept(b), body=True), methods=["POST"]),
        Route("/api/organ_end", api(lambda r, b: labeler.organ_end(b), body=True),
              methods=["POST"]),
        Route("/api/undo", api(action(labeler.undo), body=True), methods=["POST"]),
        Route("/api/propagate", api(action(labeler.start_propagation), body=True),
              methods=["POST"]),
        Route("/api/stop", api(action(stop), body=True), methods=["POST"]),
        Route("/api/save", api(action(labeler.save), body=True), methods=["POST"]),
        Route("/api/discard", api(action(labeler.discard), body=True), methods=["POST"]),
    ]
    return Starlette(routes=routes)
