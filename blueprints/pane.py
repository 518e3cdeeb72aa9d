"""The stored-completions pane: a static page at `/` and its assets under `/pane/`, shipped with the app.

Both routes are public: the page holds no data, and its script calls the JSON APIs with the caller's
key (or, behind App Service Authentication, the platform's principal header). The assets are plain
HTML, CSS and JavaScript modules in the `pane/` folder: no build step, no CDN.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import azure.functions as func
from azurefunctions.extensions.http.fastapi import Request, Response

from blueprints.http_adapter import ROOT_ROUTE, endpoint
from shared.platform.access import Caller
from shared.platform.errors import NotFound

bp = func.Blueprint()

PANE_DIR = Path(__file__).resolve().parents[1] / "pane"
INDEX = "index.html"
_MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
_HEADERS = {
    # Only the app's own scripts, styles and API: an injected completion text can never run as code.
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}


@cache
def pane_files() -> dict[str, tuple[bytes, str]]:
    """Every servable file of the pane folder by name, with its media type (read once per worker)."""
    return {
        path.name: (path.read_bytes(), _MEDIA_TYPES[path.suffix])
        for path in sorted(PANE_DIR.iterdir())
        if path.is_file() and path.suffix in _MEDIA_TYPES
    }


def _serve(name: str) -> Response:
    found = pane_files().get(name)
    if found is None:
        raise NotFound(f"The pane has no file '{name}'.", param="name")
    content, media_type = found
    return Response(content=content, headers=_HEADERS, media_type=media_type)


@bp.route(route=ROOT_ROUTE, methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@endpoint(None)
async def pane_page(req: Request, caller: Caller | None) -> Response:
    """The stored-completions pane (a web page); public, it holds no data."""
    return _serve(INDEX)


@bp.route(route="pane/{name}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@endpoint(None)
async def pane_asset(req: Request, caller: Caller | None) -> Response:
    """A script, style sheet or image of the pane; public."""
    return _serve(req.path_params["name"])
