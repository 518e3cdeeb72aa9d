"""The pane's routes on the running host: the page at `/`, its assets, nothing else from disk."""

from __future__ import annotations

import re

import httpx
import pytest

from blueprints.pane import PANE_DIR
from tests.conftest import RunningHost


def test_the_page_and_its_assets_are_served_without_a_key(host: RunningHost) -> None:
    page = httpx.get(host.url + "/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    referenced = re.findall(r'(?:src|href)="(/pane/[^"]+)"', page.text)
    assert {"/pane/app.js", "/pane/app.css", "/pane/icon.svg"} <= set(referenced)
    for path in referenced:
        asset = httpx.get(host.url + path)
        assert asset.status_code == 200, path
        assert asset.content == (PANE_DIR / path.removeprefix("/pane/")).read_bytes()
    assert httpx.get(host.url + "/pane/app.js").headers["content-type"] == "text/javascript; charset=utf-8"
    imported = re.findall(r'from "\./([^"]+)"', (PANE_DIR / "app.js").read_text())
    assert imported and all(httpx.get(f"{host.url}/pane/{name}").status_code == 200 for name in imported)


@pytest.mark.parametrize("path", ["/pane/missing.js", "/pane/..%2Fshared%2Fsettings.py", "/pane/%2e%2e", "/index.html"])
def test_anything_else_is_an_openai_shaped_404(host: RunningHost, path: str) -> None:
    response = httpx.get(host.url + path)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_the_caller_endpoint_names_the_rights(host: RunningHost) -> None:
    with host.http() as http:
        caller = http.get("/api/caller").json()
    assert caller["object"] == "caller" and caller["name"] == "default" and caller["owner_scope"] is None
    assert "stored-completions/action" in caller["rights"]
    assert httpx.get(host.url + "/api/caller").status_code == 401
