"""OpenAI-compatible routes: GET /v1/models, POST /v1/chat/completions (JSON or SSE)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from app.auth import Owner
from app.chat import build_job, completion_chunks, completion_response, model_list
from app.deps import ServiceDep
from app.schemas import ERROR_RESPONSES, ChatCompletionRequest, ChatCompletionResponse, ModelList
from app.streaming import cancel_on_disconnect, open_stream

router = APIRouter(prefix="/v1", tags=["openai"])
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


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
    if job.stream:
        events = await cancel_on_disconnect(request, open_stream(service.run(job)))
        usage = bool(body.stream_options and body.stream_options.include_usage)
        chunks = completion_chunks(events, job, model, usage)
        return StreamingResponse(chunks, media_type="text/event-stream", headers=_SSE_HEADERS)
    await cancel_on_disconnect(request, service.complete(job))
    return Response(
        completion_response(job, model).model_dump_json(), media_type="application/json"
    )
