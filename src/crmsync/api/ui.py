"""The dashboard at ``GET /ui``: plain HTML, CSS and ES modules shipped as package
data (``api/static``), no build step and nothing fetched from elsewhere.

The page and its assets hold no data and need no key; the page signs in with an
API key (kept in the tab's sessionStorage) and reads everything from the ``/v1``
routes, behind the same keys as any other client.
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources

from fastapi import APIRouter, HTTPException, Response

_ASSET = re.compile(r"^[a-z0-9_-]{1,40}\.(js|css|svg)$")
_TYPES = {
    "html": "text/html; charset=utf-8",
    "js": "text/javascript; charset=utf-8",
    "css": "text/css; charset=utf-8",
    "svg": "image/svg+xml",
}
# Everything comes from this origin; no inline script or style, no framing.
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter()


@lru_cache(maxsize=64)
def _read(name: str) -> bytes | None:
    entry = resources.files("crmsync.api") / "static" / name
    return entry.read_bytes() if entry.is_file() else None


def _file(name: str) -> Response:
    body = _read(name)
    if body is None:
        raise HTTPException(404, detail=f"no dashboard file {name!r}")
    return Response(body, media_type=_TYPES[name.rpartition(".")[2]], headers=_HEADERS)


@router.get("/ui", include_in_schema=False)
async def page() -> Response:
    return _file("index.html")


@router.get("/ui/{name}", include_in_schema=False)
async def asset(name: str) -> Response:
    if not _ASSET.fullmatch(name):
        raise HTTPException(404, detail=f"no dashboard file {name!r}")
    return _file(name)
