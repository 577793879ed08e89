"""The web pages (Persian, right to left, server-rendered). Filled in by app/pages/routes.py."""

from __future__ import annotations

from pathlib import Path

from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig
from litestar.types import ControllerRouterHandler

HERE = Path(__file__).parent


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    return TemplateConfig(directory=HERE / "templates", engine=JinjaTemplateEngine)


def page_handlers() -> list[ControllerRouterHandler]:
    from app.pages.routes import PAGE_CONTROLLERS

    return [*PAGE_CONTROLLERS, create_static_files_router(path="/static", directories=[HERE / "static"])]
