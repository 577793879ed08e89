"""The style sheet and the script, asked for by their content's digest.

A page names ``/assets/<digest>/nobat.css``; the phone keeps it a year, and a release whose
file changed names a new address. The digest is checked: during a rollout a page from a new
instance may ask an old one, which then answers its own file, not to be kept (a file served
under a digest that is not its own had stayed in the phone for the whole max-age)."""

from __future__ import annotations

import hashlib
import mimetypes
from pathlib import Path

from litestar import Response, get
from litestar.exceptions import NotFoundException
from litestar.params import FromPath

STATIC = Path(__file__).parent / "static"
VERSIONED = ("nobat.css", "nobat.js")
KEPT = "public, max-age=31536000, immutable"


class _Asset:
    def __init__(self, path: Path) -> None:
        self.body = path.read_bytes()
        self.digest = hashlib.sha256(self.body).hexdigest()[:12]
        self.media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"


ASSETS = {name: _Asset(STATIC / name) for name in VERSIONED}


def asset_url(name: str) -> str:
    """The address a page names an asset by (templates: ``asset("nobat.css")``)."""
    return f"/assets/{ASSETS[name].digest}/{name}"


@get("/assets/{digest:str}/{name:str}", include_in_schema=False, sync_to_thread=False)
def asset(digest: FromPath[str], name: FromPath[str]) -> Response[bytes]:
    found = ASSETS.get(name)
    if found is None:
        raise NotFoundException()
    cache = KEPT if digest == found.digest else "no-cache"
    return Response(found.body, media_type=found.media_type, headers={"Cache-Control": cache})
