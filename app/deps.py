"""The service objects as ``Annotated`` dependencies, read from ``app.state`` (set by lifespan)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.service import SolveService


def get_service(request: Request) -> SolveService:
    return request.app.state.service


ServiceDep = Annotated[SolveService, Depends(get_service)]
