"""Exception handlers that keep every error a JSON body and never show a stack trace."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

# FastAPI answers 400 "There was an error parsing the body" when json.loads fails other than with
# a JSONDecodeError: bytes that are not UTF-8, or nesting too deep to parse. To a client that is
# the same mistake as malformed JSON, which FastAPI answers 422 json_invalid: one rule for both.
_NOT_JSON = [{"loc": ["body"], "msg": "The body is not valid UTF-8 JSON", "type": "json_invalid"}]


def _safe_errors(exc: RequestValidationError) -> list[dict[str, object]]:
    # Echoing the input back can reflect secrets or megabytes: keep location, message and type.
    return [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()]


def _unparsable_body(exc: HTTPException) -> bool:
    return exc.status_code == 400 and isinstance(exc.__cause__, ValueError | RecursionError)


def install_error_handlers(app: FastAPI) -> None:
    """422 for bad input and the HTTPException's own body.

    The plain JSON 500 for bugs is answered by `RequestContextMiddleware`, so it carries the request id.
    """

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _safe_errors(exc)}, status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        if _unparsable_body(exc):
            return JSONResponse({"detail": _NOT_JSON}, status_code=422)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)
