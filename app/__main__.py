"""``python -m app``: serve RISE with uvicorn on ``RISE_HOST:RISE_PORT``.

With no configuration this is the embedded default: the bundled SmolLM2-135M-Instruct (prepared
once into ``RISE_DATA_DIR``) and sessions in memory. The ``__main__`` guard matters: vLLM starts
its engine core with ``spawn``, which re-imports this module.
"""

from __future__ import annotations

import logging

import uvicorn

from app.main import create_app
from app.settings import Settings


def banner(settings: Settings) -> str:
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    base = f"http://{host}:{settings.port}"
    store = "Redis" if settings.redis_url else "memory (set RISE_REDIS_URL for Redis)"
    auth = "Bearer keys" if settings.api_keys else "none"
    return (
        f"RISE: model {settings.model}, sessions in {store}, auth: {auth}\n"
        f"  POST {base}/solve                  every turn, JSON or SSE\n"
        f"  OpenAI base_url {base}/v1           /v1/chat/completions, /v1/models\n"
        f"  docs {base}/docs   ready: GET {base}/ready   metrics: {base}/metrics\n"
        f"(loading the model first: /ready answers 200 once it can serve)"
    )


def main() -> None:
    settings = Settings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    print(banner(settings), flush=True)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=settings.shutdown_grace_s,
    )


if __name__ == "__main__":
    main()
