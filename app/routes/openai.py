"""OpenAI-compatible routes: GET /v1/models, POST /v1/chat/completions (JSON or SSE)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from app.auth import Owner
from app.chat import build_job, completion_chunks, completion_response, model_list
from app.deps import ServiceDep
from app.schemas import ERROR_RESPONSES, ChatCompletionRequest, ChatCompletionResponse, ModelList
from app.streaming import respond

router = APIRouter(prefix="/v1", tags=["openai"])


@router.get("/models", response_model=ModelList, responses=ERROR_RESPONSES)
async def list_models(service: ServiceDep, owner: Owner) -> ModelList:
    """The served model, plain and as a RISE alias (`rise-N/<model>`)."""
    return model_list(service)


@router.post(
    "/chat/completions",
    response_model=ChatCompletionResponse,
    responses={**ERROR_RESPONSES, 200: {"content": {"text/event-stream": {}}}},
)
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, service: ServiceDep, owner: Owner
) -> Response:
    """OpenAI chat completions; the content is the chosen turn, all turns are in `rise`."""
    job = build_job(body, service, owner)
    model = body.model or service.model_name
    usage = bool(body.stream_options and body.stream_options.include_usage)
    return await respond(
        request,
        service,
        job,
        lambda events: completion_chunks(events, job, model, usage),
        lambda: completion_response(job, model),
    )
