"""The part of the Engine protocol every scripted test engine shares.

Unit tests drive the loop, the collector, the evaluator and the service with engines that
answer from a script; each writes its own ``generate`` (and, where it matters, ``abort`` and
``queue_depth``) on top of this.
"""

from __future__ import annotations


class ScriptedEngineBase:
    model_name = "scripted"
    max_model_len = 100_000

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def reply_ids(self, reply: str) -> list[int]:
        """The reply's token ids, ended by the end-of-turn token."""
        ids = self.tokenizer(reply, add_special_tokens=False)["input_ids"]
        return [*ids, self.tokenizer.eos_token_id]

    async def abort(self, request_id: str) -> None:
        return None

    async def check_health(self) -> None:
        return None

    @property
    def queue_depth(self) -> int:
        return 0

    def metrics_registry(self) -> None:
        return None  # no engine series: /metrics shows the service's own

    async def close(self) -> None:
        return None
