"""Verifiers: HTTP checkers an operator names in settings, judging attempts as feedback.

``RISE_VERIFIERS=units=http://checker:9000/verify,schema=http://...`` offers the feedback
providers ``units`` and ``schema``. A request picks one **by name only**; a URL never comes from
a request. For every attempt the loop POSTs JSON::

    {"question": "...", "attempt": "the turn's text", "answer": "42" | null, "turn": 0}

and reads back ``{"verdict": "correct" | "incorrect" | "unknown", "message": "..."}`` (the
message optional, at most :data:`MAX_MESSAGE_CHARS` used). The next turn's user message is the
verifier's message in the prompt file's ``feedback_verifier`` wording; without one, RISE's
prompt (or ``feedback_correct`` after a correct verdict).

A verifier that fails never fails the solve: after a timeout (``RISE_VERIFIER_TIMEOUT_S``), a
refused connection, a non-2xx status or a reply that is not that JSON, the turn gets RISE's
fixed prompt with verdict ``unknown`` and the failure's kind in :attr:`Feedback.error`
(``timeout``, ``unreachable``, ``status``, ``malformed``), which the service counts per verifier
(``rise_feedback_errors_total``).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from rise.episode import Feedback, Verdict
from rise.prompts import PromptConfig

MAX_MESSAGE_CHARS = 1000
FAILURES = ("timeout", "unreachable", "status", "malformed")
"""The kinds of verifier failure a turn records (``Feedback.error``)."""
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")


def parse_verifiers(text: str) -> dict[str, str]:
    """``name=url,name=url`` -> {name: url}; a ValueError naming the entry at fault."""
    verifiers: dict[str, str] = {}
    for entry in filter(None, (part.strip() for part in text.split(","))):
        name, sep, url = (part.strip() for part in entry.partition("="))
        if not sep or not _NAME.fullmatch(name):
            raise ValueError(f"verifier {entry!r}: expected name=url, the name a short word")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"verifier {name!r}: the URL must be http(s), got {url!r}")
        if name in verifiers:
            raise ValueError(f"verifier {name!r} is named twice")
        verifiers[name] = url
    return verifiers


class VerifierSettings(BaseSettings):
    """The operator's verifiers (env prefix ``RISE_``), read by the service and the trainer."""

    model_config = SettingsConfigDict(env_prefix="RISE_", extra="ignore")

    verifiers: str = Field(
        "",
        description="HTTP verifiers requests may pick as feedback by name: "
        "name=url,name=url (docs/RISE.md, 'Feedback'). Empty: none.",
    )
    verifier_timeout_s: float = Field(
        5.0, gt=0, description="Seconds a verifier has to answer before the turn goes on "
        "with RISE's fixed prompt (verdict unknown, counted as a timeout)."
    )  # fmt: skip

    @field_validator("verifiers")
    @classmethod
    def _parse(cls, value: str) -> str:
        parse_verifiers(value)
        return value

    def providers(self) -> dict[str, HttpVerifier]:
        return {
            name: HttpVerifier(name, url, self.verifier_timeout_s)
            for name, url in parse_verifiers(self.verifiers).items()
        }


@dataclass
class HttpVerifier:
    """One configured verifier (a :class:`rise.feedback.FeedbackProvider`)."""

    name: str
    url: str
    timeout_s: float = 5.0
    _client: Any = field(default=None, repr=False)

    def _http(self) -> Any:
        import httpx

        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout_s)
        return self._client

    async def judge(self, attempt: Any, prompts: PromptConfig) -> Feedback:
        import httpx

        body = {
            "question": attempt.question,
            "attempt": attempt.text,
            "answer": attempt.answer,
            "turn": attempt.turn,
        }
        started = time.perf_counter()
        error: str | None = None
        reply: Any = None
        try:
            response = await self._http().post(self.url, json=body)
            if response.is_success:
                reply = response.json()
            else:
                error = "status"
        except httpx.TimeoutException:
            error = "timeout"
        except httpx.TransportError:
            error = "unreachable"
        except ValueError:  # the body is not JSON
            error = "malformed"
        latency = time.perf_counter() - started
        parsed = None if error else _parse_reply(reply)
        if parsed is None:
            message = prompts.introspection_message(attempt.question)
            return Feedback(self.name, Verdict.UNKNOWN, message, error=error or "malformed",
                            latency_s=latency)  # fmt: skip
        verdict, said = parsed
        if said:
            message = prompts.verifier_message(attempt.question, said)
        elif verdict is Verdict.CORRECT:
            message = prompts.correct_message(attempt.question)
        else:
            message = prompts.introspection_message(attempt.question)
        return Feedback(self.name, verdict, message, latency_s=latency)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def _parse_reply(reply: Any) -> tuple[Verdict, str] | None:
    """(verdict, message) from a verifier's JSON, None when it is not the documented shape."""
    if not isinstance(reply, dict):
        return None
    if reply.get("verdict") not in {v.value for v in Verdict}:
        return None
    verdict = Verdict(reply["verdict"])
    message = reply.get("message", "")
    if message is None:
        message = ""
    if not isinstance(message, str):
        return None
    return verdict, " ".join(message.split())[:MAX_MESSAGE_CHARS]
