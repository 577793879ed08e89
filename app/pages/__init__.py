"""The web pages (Persian, right to left, server-rendered): citizens at "/", office staff
under "/office", the guild and the regulator under "/watch". Handlers live in
``citizen.py``, ``office.py`` and ``watch.py``; ``routes.py`` gathers them."""

from __future__ import annotations

from pathlib import Path

from litestar.config.compression import CompressionConfig
from litestar.datastructures import CacheControlHeader
from litestar.middleware import DefineMiddleware
from litestar.middleware.compression import CompressionMiddleware
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig
from litestar.types import ControllerRouterHandler

HERE = Path(__file__).parent


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    from app.pages.render import environment

    return TemplateConfig(instance=JinjaTemplateEngine.from_environment(environment(HERE / "templates")))


COMPRESSED = DefineMiddleware(
    CompressionMiddleware, config=CompressionConfig(backend="gzip", gzip_compress_level=6, exclude="^/static/fonts/")
)
"""The pages, their style sheet and script gzipped for a phone on a slow line (a booking's
eleven pages and their assets: about 130 KB as they are, 20 KB gzipped). Not the API's
answers (small, and each byte of CPU there is a booking less in a rush), nor the fonts
(woff2 is compressed already)."""


def page_handlers() -> list[ControllerRouterHandler]:
    from litestar import Router

    from app.pages.assets import asset
    from app.pages.routes import PAGE_CONTROLLERS

    return [
        *PAGE_CONTROLLERS,
        Router(path="/", route_handlers=[asset], middleware=[COMPRESSED]),  # the style sheet, the script
        # The fonts (and the old addresses of the above): thirty days. The fonts never change
        # under their names. (An hour had each phone fetch them all again every hour: Litestar
        # sends an ETag but never answers 304.)
        create_static_files_router(
            path="/static",
            directories=[HERE / "static"],
            cache_control=CacheControlHeader(max_age=30 * 24 * 3600),
            middleware=[COMPRESSED],
        ),
    ]
