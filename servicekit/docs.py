"""/docs (Swagger UI) and /redoc served from packaged assets, so they work with no internet.

FastAPI's own pages load their scripts from a CDN and show a blank page offline. The assets here
come from the `fastapi-offline` wheel (Swagger UI 5, ReDoc 2, a favicon): a pinned, reviewed
copy installed like any other dependency, served by Starlette's `StaticFiles`.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_URL = "/docs-assets"

# null validatorUrl: Swagger UI would otherwise send the schema to validator.swagger.io.
SWAGGER_UI_PARAMETERS: dict[str, object] = {"validatorUrl": None, "tryItOutEnabled": True, "displayOperationId": True}


def _assets() -> Path:
    return Path(str(files("fastapi_offline") / "static"))


def install_offline_docs(app: FastAPI) -> None:
    """Serve /docs and /redoc with local assets; the app must be built with docs_url=None, redoc_url=None."""
    assert app.docs_url is None and app.redoc_url is None, "FastAPI's CDN pages would shadow these"
    app.mount(ASSETS_URL, StaticFiles(directory=_assets()), name="docs-assets")

    def base(request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        """Swagger UI, offline."""
        root = base(request)
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            swagger_ui_parameters=SWAGGER_UI_PARAMETERS,
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        """ReDoc, offline (no Google Fonts)."""
        root = base(request)
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )
