"""A JWKS endpoint for tests, run as a real process: it serves the file named by JWKS_FILE.

Tests rotate keys by rewriting the file, and stop (or SIGSTOP) the process to take the identity
provider down. GET /hits tells how many times the key set was fetched.
"""

from __future__ import annotations

import os
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

HITS = {"jwks": 0}


async def key_set(_: Request) -> Response:
    HITS["jwks"] += 1
    return Response(Path(os.environ["JWKS_FILE"]).read_bytes(), media_type="application/json")


async def hits(_: Request) -> Response:
    return JSONResponse(HITS)


async def health(_: Request) -> Response:
    return JSONResponse({"status": "ok"})


app = Starlette(routes=[Route("/.well-known/jwks.json", key_set), Route("/hits", hits), Route("/healthz", health)])
