"""The playground at ``/ui``: one self-contained page on ``POST /solve``'s SSE stream.

The page (``app/ui/index.html``) has no CDN and no build step, so it works offline and in an
air-gapped cluster: a question box and the main options, turns side by side as they stream
(answer, right/wrong against a reference, answer changes, tokens, latency), the vote tally and
final answer, and the session with "two more turns". It calls the API as any client would,
with the API key the user types (kept in the browser's local storage).
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

PAGE = files("app") / "ui" / "index.html"

router = APIRouter(tags=["ui"])


@router.get("/ui", response_class=HTMLResponse, include_in_schema=False)
async def playground() -> HTMLResponse:
    """The playground page (public: it holds no data; the API calls it makes carry the key)."""
    return HTMLResponse(PAGE.read_text(encoding="utf-8"))
