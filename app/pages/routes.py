from __future__ import annotations

from litestar.types import ControllerRouterHandler

PAGE_CONTROLLERS: list[ControllerRouterHandler] = []
