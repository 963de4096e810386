"""The FastAPI application: ``create_app(settings)`` wires engine, session store and metrics.

Nothing connects at import time. The lifespan resolves the prompts the model runs with
(``RISE_PROMPTS``, or the ``rise_prompts.json`` a checkpoint carries — a configured file that
differs from the checkpoint's stops the start-up unless ``RISE_PROMPTS_OVERRIDE`` is set), builds
the engine (vLLM: tens of seconds, in a worker thread so the event loop stays responsive) and
the session store, puts the :class:`~app.service.SolveService` on ``app.state``, and on shutdown
stores the sessions of solves still in flight before it stops the engine and closes the store.
Tests may inject an engine and a store (they are then not closed here).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from app.api import openai, ops, solve, ui
from app.errors import install_error_handlers
from app.metrics import Metrics
from app.middleware import BodySizeLimit, HttpMetrics
from app.service import SolveService
from app.sessions import SessionStore, build_store
from app.settings import Settings
from rise.engine.base import Engine
from rise.prompt_file import ActivePrompts, local_model_dir, resolve_prompts

logger = logging.getLogger("app")

DESCRIPTION = """Answers reconsidered over several turns (RISE, arXiv 2407.18219).

`POST /solve` shows every turn; `/v1/chat/completions` is OpenAI-compatible (`rise-N/<model>`
or the extra body field `rise` asks for N turns); sessions persist every turn."""


def served_prompts(settings: Settings) -> ActivePrompts:
    """The prompts to serve with; raises with a clear message on a file or parity problem."""
    try:
        return resolve_prompts(
            settings.prompts,
            local_model_dir(settings.model, settings.data_dir),
            override=settings.prompts_override,
        )
    except (OSError, ValueError) as error:
        logger.error("cannot start: %s", error)
        raise RuntimeError(f"cannot start: {error}") from error


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    engine, store = app.state.injected
    own_engine, own_store = engine is None, store is None
    # Checked before the engine loads when the model folder is here already; a model
    # downloaded by this start-up is checked once it is.
    known_folder = local_model_dir(settings.model, settings.data_dir) is not None
    prompts = served_prompts(settings)
    if store is None:
        store = build_store(
            settings.redis_url,
            settings.session_ttl_s,
            settings.session_lease_s,
            settings.redis_timeout_s,
        )
    if engine is None:
        from rise.engine import build_engine

        logger.info("loading %s", settings.model)
        engine = await asyncio.to_thread(build_engine, settings)
        if not known_folder:
            try:
                prompts = served_prompts(settings)
            except RuntimeError:
                await engine.close()
                if own_store:
                    await store.close()
                raise
    logger.info("%s", prompts.describe())
    service = SolveService(engine, store, app.state.metrics, settings, prompts)
    app.state.service = service
    logger.info("ready: %s, sessions in %s", service.model_name, type(store).__name__)
    try:
        yield
    finally:
        await service.shutdown()
        if own_engine:
            await engine.close()
        if own_store:
            await store.close()


def _with_limits(schema: Any, limits: dict[str, int]) -> None:
    """Write deployment bounds (``maximum``) onto every property named in ``limits``."""
    if isinstance(schema, dict):
        for name, prop in (schema.get("properties") or {}).items():
            if name in limits:
                for option in [prop, *prop.get("anyOf", [])]:
                    if option.get("type") == "integer":
                        option["maximum"] = limits[name]
        for value in schema.values():
            _with_limits(value, limits)
    elif isinstance(schema, list):
        for value in schema:
            _with_limits(value, limits)


def create_app(
    settings: Settings | None = None,
    *,
    engine: Engine | None = None,
    store: SessionStore | None = None,
) -> FastAPI:
    """The service for ``settings`` (default: from ``RISE_*``)."""
    settings = settings or Settings()
    app = FastAPI(title="RISE", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.state.metrics = Metrics()
    app.state.injected = (engine, store)
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
    app.add_middleware(HttpMetrics, metrics=app.state.metrics)  # outermost: sees every status
    for router in (solve.router, openai.router, ops.router, ui.router):
        app.include_router(router)

    limits = {  # request field -> the deployment's bound on it
        "max_turns": settings.turn_limit,
        "max_tokens": settings.token_limit,
        "max_completion_tokens": settings.token_limit,
        "n": settings.max_choices,
    }

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            _with_limits(schema, limits)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
