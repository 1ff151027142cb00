"""``GET /v1/pipelines``: the pipelines a job may name, each with its version and stages.

Kept out of :mod:`briefd.daemon.http_api` (shared by several features): the app adds
:func:`pipeline_routes`. A backend without pipelines (a test double) answers with the
empty list rather than a 500.
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


def pipeline_routes(backend: Any) -> list[Route]:
    """The routes to add to the API's application."""

    async def list_pipelines(request: Request) -> Response:
        describe = getattr(backend, "pipelines", None)
        found = await run_in_threadpool(describe) if describe is not None else []
        return JSONResponse({"pipelines": found})

    return [Route("/v1/pipelines", list_pipelines, methods=["GET"])]
