"""The web pages (Persian, right to left, server-rendered): citizens at "/", office staff
under "/office", the guild and the regulator under "/watch". Handlers live in
``citizen.py``, ``office.py`` and ``watch.py``; ``routes.py`` gathers them."""

from __future__ import annotations

from pathlib import Path

from litestar.datastructures import CacheControlHeader
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig
from litestar.types import ControllerRouterHandler

HERE = Path(__file__).parent


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    from app.pages.render import environment

    return TemplateConfig(instance=JinjaTemplateEngine.from_environment(environment(HERE / "templates")))


def page_handlers() -> list[ControllerRouterHandler]:
    from app.pages.routes import PAGE_CONTROLLERS

    return [
        *PAGE_CONTROLLERS,
        # An hour: long enough to spare phones on slow links, short enough for a new release.
        create_static_files_router(
            path="/static", directories=[HERE / "static"], cache_control=CacheControlHeader(max_age=3600)
        ),
    ]
