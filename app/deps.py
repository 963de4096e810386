"""The service objects as ``Annotated`` dependencies, read from ``app.state`` (set by lifespan)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.service import SolveService
from app.settings import Settings


def get_service(request: Request) -> SolveService:
    return request.app.state.service


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


ServiceDep = Annotated[SolveService, Depends(get_service)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
