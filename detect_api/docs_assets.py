"""/docs (Swagger UI) and /redoc (ReDoc) served from files inside a pinned package, not a CDN.

FastAPI's default pages load their JavaScript and CSS from a CDN: on a host without internet (many GPU
servers, these machines) they render blank. The files come from the `fastapi-offline` wheel (Swagger UI 5,
ReDoc 2, pinned in pyproject.toml); only its static folder is used, the pages are FastAPI's own.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

ASSETS_URL = "/docs-assets"
REDOC_CDN_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"
ASSET_FILES = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png")


def assets_dir() -> Path:
    return Path(str(files("fastapi_offline") / "static"))


def install_offline_docs(app: FastAPI, docs_url: str = "/docs", redoc_url: str = "/redoc") -> None:
    """Add the two pages and their assets to an app created with docs_url=None and redoc_url=None."""
    folder = assets_dir()
    missing = [name for name in ASSET_FILES if not (folder / name).is_file()]
    if missing:
        raise RuntimeError(f"API docs assets missing from {folder}: {', '.join(missing)}")
    # ReDoc's bundle shows a logo from Redocly's CDN (an <img> that hides itself when it fails): point it at
    # the packaged icon instead, so the page makes no request off the host. Patched once, served from memory.
    redoc_js = (
        (folder / "redoc.standalone.js").read_bytes().replace(REDOC_CDN_LOGO, b"docs-assets/favicon.png")
    )

    @app.get(f"{ASSETS_URL}/redoc.standalone.js", include_in_schema=False)
    async def redoc_bundle() -> Response:
        return Response(redoc_js, media_type="text/javascript", headers={"Cache-Control": "max-age=3600"})

    app.mount(ASSETS_URL, StaticFiles(directory=folder), name="docs-assets")
    oauth2_redirect_url = f"{docs_url}/oauth2-redirect"
    title = app.title

    def url(request: Request, path: str) -> str:
        # root_path: behind a front that serves the API under a prefix, the page asks for prefixed URLs.
        return f"{request.scope.get('root_path', '')}{path}"

    @app.get(docs_url, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=url(request, app.openapi_url or "/openapi.json"),
            title=f"{title} - Swagger UI",
            oauth2_redirect_url=url(request, oauth2_redirect_url),
            swagger_js_url=url(request, f"{ASSETS_URL}/swagger-ui-bundle.js"),
            swagger_css_url=url(request, f"{ASSETS_URL}/swagger-ui.css"),
            swagger_favicon_url=url(request, f"{ASSETS_URL}/favicon.png"),
        )

    @app.get(oauth2_redirect_url, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(redoc_url, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        return get_redoc_html(
            openapi_url=url(request, app.openapi_url or "/openapi.json"),
            title=f"{title} - ReDoc",
            redoc_js_url=url(request, f"{ASSETS_URL}/redoc.standalone.js"),
            redoc_favicon_url=url(request, f"{ASSETS_URL}/favicon.png"),
            with_google_fonts=False,  # fonts from Google are another CDN
        )
