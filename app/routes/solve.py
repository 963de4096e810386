"""POST /solve and the session routes: HTTP in, one SolveService call, JSON or SSE out."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response

from app.auth import Owner
from app.deps import ServiceDep
from app.native import continue_job, solve_job, solve_sse
from app.schemas import (
    ERROR_RESPONSES,
    ContinueRequest,
    SessionPublic,
    SolveRequest,
    SolveResponse,
)
from app.service import SolveJob, SolveService
from app.streaming import respond
from app.views import session_public, solve_response

router = APIRouter(tags=["solve"])
SessionPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{8,64}$", max_length=64)]
_SSE_DOC = {200: {"content": {"text/event-stream": {}}, "description": "JSON, or SSE with stream"}}


async def _respond(request: Request, service: SolveService, job: SolveJob) -> Response:
    model = service.model_name
    return await respond(
        request,
        service,
        job,
        lambda events: solve_sse(events, job, model),
        lambda: solve_response(job, model),
    )


@router.post("/solve", response_model=SolveResponse, responses={**ERROR_RESPONSES, **_SSE_DOC})
async def solve(
    body: SolveRequest, request: Request, service: ServiceDep, owner: Owner
) -> Response:
    """Answer a question over several self-correcting turns, or continue a session."""
    job = await solve_job(body, service, owner)
    return await _respond(request, service, job)


@router.get("/sessions/{session_id}", response_model=SessionPublic, responses=ERROR_RESPONSES)
async def get_session(session_id: SessionPath, service: ServiceDep, owner: Owner) -> SessionPublic:
    """A stored session: every turn, the vote, the conversation."""
    return session_public(await service.load(session_id, owner))


@router.delete("/sessions/{session_id}", status_code=204, responses=ERROR_RESPONSES)
async def delete_session(session_id: SessionPath, service: ServiceDep, owner: Owner) -> Response:
    """Forget a session."""
    await service.delete(session_id, owner)
    return Response(status_code=204)


@router.post(
    "/sessions/{session_id}/turns",
    response_model=SolveResponse,
    responses={**ERROR_RESPONSES, **_SSE_DOC},
)
async def add_turns(
    session_id: SessionPath,
    body: ContinueRequest,
    request: Request,
    service: ServiceDep,
    owner: Owner,
) -> Response:
    """Run more turns on a stored session, continuing from its exact token ids."""
    job = await continue_job(session_id, body, service, owner)
    return await _respond(request, service, job)
