"""Operations: /health (the process answers), /ready (engine and store answer), /metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from app.api.protocol import ERROR_RESPONSES
from app.deps import ServiceDep


class Status(BaseModel):
    status: str
    model: str | None = None


router = APIRouter(tags=["operations"])


@router.get("/health", response_model=Status)
async def health() -> Status:
    """Liveness: the process serves HTTP."""
    return Status(status="ok")


@router.get("/ready", response_model=Status, responses={503: ERROR_RESPONSES[503]})
async def ready(service: ServiceDep) -> Status:
    """Readiness: the engine is loaded and healthy and the session store answers (else 503)."""
    await service.check_ready()
    return Status(status="ready", model=service.model_name)


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics(request: Request, service: ServiceDep) -> Response:
    """Prometheus metrics of this replica: the service's ``rise_*`` and the engine's ``vllm:*``."""
    await service.refresh_gauges()
    body = generate_latest(service.metrics.registry)
    engine = service.engine.metrics_registry()
    if engine is not None:
        body += generate_latest(engine)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
