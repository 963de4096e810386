"""Inference engines behind one small contract (``base.Engine``); vLLM is imported lazily.

The engine speaks token ids: it knows no prompts, answers or episodes, and imports nothing of
``rise`` outside this package (docs/ARCHITECTURE.md).
"""

from rise.engine.base import (
    Engine,
    EngineError,
    GenerationChunk,
    PromptTooLongError,
    SamplingConfig,
)
from rise.engine.config import DEFAULT_MODEL, EngineSettings

__all__ = [
    "DEFAULT_MODEL",
    "Engine",
    "EngineError",
    "EngineSettings",
    "GenerationChunk",
    "PromptTooLongError",
    "SamplingConfig",
    "build_engine",
]


def build_engine(settings: EngineSettings) -> Engine:
    """The vLLM engine for these settings (imports vLLM only when called)."""
    from rise.engine.vllm_engine import VLLMEngine

    return VLLMEngine.from_settings(settings)
