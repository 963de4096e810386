"""RISE prompts and the one chat-template renderer (docs/RISE.md §1).

Every part of the project — serving, data collection, training, evaluation — turns
conversations into token ids here, through the model's own chat template. The public RISE code
trained in one chat format and queried in another; keeping a single renderer is how this project
avoids that.

Turns are continued at the token level: turn t+1's prompt is turn t's prompt ids + output ids +
the ids of the rendered introspection turn. That suffix is cut out of a real template render (a
sentinel stands in for the assistant's text), so it is whatever the template would produce, and
the prompt stays an exact extension of the previous one — which is what makes every earlier
token a prefix-cache hit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rise.episode import Episode

Message = dict[str, str]

FIRST_TURN_TEMPLATE = (
    "Solve the following math problem step by step. Put your final answer in \\boxed{}.\n\n"
    "{question}"
)
INTROSPECTION_TEMPLATE = (
    "The answer is incorrect. Please try again. Here's the question: {question}"
)
# The feedback providers' wording (rise/feedback): what follows an attempt when a provider knows
# more than RISE's fixed prompt says. {slips}: the calculator's wrong statements, "12 x 6 = 72,
# not 62; ..."; {message}: a verifier's own words.
FEEDBACK_SLIPS_TEMPLATE = (
    "The answer is incorrect. Check your arithmetic: {slips}. Please try again. "
    "Here's the question: {question}"
)
FEEDBACK_VERIFIER_TEMPLATE = "{message} Please try again. Here's the question: {question}"
FEEDBACK_CORRECT_TEMPLATE = (
    "The answer is correct. Please check it once more. Here's the question: {question}"
)

_SENTINEL = "\u2063RISE-SENTINEL\u2063"
_CONTINUATION_CACHE = 4096  # continuation renders a ChatRenderer remembers


def fill(template: str, question: str, **fields: str) -> str:
    """Substitute ``{question}`` (and any ``fields``) only, so braces elsewhere (``\\boxed{}``)
    need no escaping."""
    text = template
    for name, value in fields.items():
        text = text.replace("{" + name + "}", value)
    return text.replace("{question}", question)


@dataclass(frozen=True)
class PromptConfig:
    """The configurable prompts of RISE; the defaults are the paper's (docs/RISE.md §1)."""

    first_turn: str = FIRST_TURN_TEMPLATE
    introspection: str = INTROSPECTION_TEMPLATE
    system: str | None = None
    # One-shot demonstrations as (question, response) pairs; off by default for instruct models.
    demonstrations: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    # What feedback providers say (rise/feedback): after an attempt with arithmetic slips, in a
    # verifier's words, and after an attempt known to be right (the loop went on anyway). A
    # wrong attempt with nothing more to say gets ``introspection``.
    feedback_slips: str = FEEDBACK_SLIPS_TEMPLATE
    feedback_verifier: str = FEEDBACK_VERIFIER_TEMPLATE
    feedback_correct: str = FEEDBACK_CORRECT_TEMPLATE

    def first_user_message(self, question: str) -> str:
        return fill(self.first_turn, question)

    def introspection_message(self, question: str) -> str:
        return fill(self.introspection, question)

    def slips_message(self, question: str, slips: str) -> str:
        return fill(self.feedback_slips, question, slips=slips)

    def verifier_message(self, question: str, message: str) -> str:
        return fill(self.feedback_verifier, question, message=message)

    def correct_message(self, question: str) -> str:
        return fill(self.feedback_correct, question)

    def context(self) -> list[Message]:
        """Messages placed before the first user turn: system prompt and demonstrations."""
        messages: list[Message] = []
        if self.system:
            messages.append({"role": "system", "content": self.system})
        for question, response in self.demonstrations:
            messages.append({"role": "user", "content": self.first_user_message(question)})
            messages.append({"role": "assistant", "content": response})
        return messages


def render_chat(
    tokenizer: Any, messages: Sequence[Message], add_generation_prompt: bool
) -> list[int]:
    """THE renderer: a conversation through the tokenizer's chat template, to token ids.

    The template is rendered to text and the text tokenized without adding special tokens,
    exactly as vLLM's chat endpoint does, so ids here match what a served request would see.
    """
    text = render_chat_text(tokenizer, messages, add_generation_prompt)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def render_chat_text(
    tokenizer: Any, messages: Sequence[Message], add_generation_prompt: bool
) -> str:
    """The chat template's text for a conversation (used by :func:`render_chat`)."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("the tokenizer has no chat template; RISE needs a chat model")
    text = tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
    )
    return str(text)


class ChatRenderer:
    """Builds every turn's prompt ids for one tokenizer and prompt configuration."""

    def __init__(self, tokenizer: Any, prompts: PromptConfig | None = None) -> None:
        self.tokenizer = tokenizer
        self.prompts = prompts or PromptConfig()
        self.stop_token_ids = _stop_token_ids(tokenizer)
        # The text each end-of-turn id stands for (continuation_ids drops it when emitted).
        self._closings = [
            tokenizer.decode([token_id], skip_special_tokens=False)
            for token_id in self.stop_token_ids
        ]
        # continuation_ids' results: an episode's later turns all take the same introspection
        # message, so turns 3..N reuse turn 2's render (a chat-template pass + a tokenizer call).
        self._continuations: dict[tuple[str, bool], tuple[int, ...]] = {}

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> list[int]:
        return render_chat(self.tokenizer, messages, add_generation_prompt)

    def first_messages(self, episode: Episode, user_message: str) -> list[Message]:
        return [*episode.context, {"role": "user", "content": user_message}]

    # -- later turns ----------------------------------------------------------------------

    def continuation_ids(self, user_message: str, ended_with_eos: bool) -> list[int]:
        """Ids that close an assistant turn and open the next one with ``user_message``.

        Cut from a render of ``[user, assistant=SENTINEL, user=user_message]``: everything after
        the sentinel. When the model already emitted its end-of-turn token, the part of the
        suffix that token stands for is dropped so it is not repeated. Results are remembered
        (the last ``_CONTINUATION_CACHE`` messages).
        """
        key = (user_message, ended_with_eos)
        cached = self._continuations.get(key)
        if cached is None:
            cached = tuple(self._render_continuation(user_message, ended_with_eos))
            if len(self._continuations) >= _CONTINUATION_CACHE:
                del self._continuations[next(iter(self._continuations))]  # the oldest
            self._continuations[key] = cached
        return list(cached)

    def _render_continuation(self, user_message: str, ended_with_eos: bool) -> list[int]:
        messages = [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": _SENTINEL},
            {"role": "user", "content": user_message},
        ]
        text = render_chat_text(self.tokenizer, messages, add_generation_prompt=True)
        suffix = text[text.rindex(_SENTINEL) + len(_SENTINEL) :]
        if ended_with_eos:
            for closing in self._closings:
                if closing and suffix.startswith(closing):
                    suffix = suffix[len(closing) :]
                    break
        return list(self.tokenizer(suffix, add_special_tokens=False)["input_ids"])

    def next_prompt_ids(
        self, episode: Episode, user_message: str, window: int | None = None
    ) -> list[int]:
        """Prompt ids for the turn after ``episode.turns[-1]``.

        ``window=None`` keeps every turn: the result extends the last prompt + output exactly.
        ``window=k`` keeps the context, the first user message and the last k attempts, each
        followed by its introspection turn (the paper's evaluation window).
        """
        turns = episode.turns
        if not turns:
            return self.render(self.first_messages(episode, user_message))
        last = turns[-1]
        if window is None or len(turns) <= window:
            return [
                *last.prompt_ids,
                *last.output_ids,
                *self.continuation_ids(user_message, last.ended_with_eos),
            ]
        ids = self.render(self.first_messages(episode, turns[0].user_message))
        kept = turns[-window:]
        for i, turn in enumerate(kept):
            following = kept[i + 1].user_message if i + 1 < len(kept) else user_message
            ids += turn.output_ids + self.continuation_ids(following, turn.ended_with_eos)
        return ids

    # -- text-only responses (teachers, chat history) ---------------------------------------

    def response_ids(self, text: str) -> tuple[list[int], bool]:
        """Ids for an assistant response known only as text, closed by the stop token."""
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        if self.stop_token_ids:
            return [*ids, self.stop_token_ids[0]], True
        return ids, False

    def ends_turn(self, output_ids: Sequence[int]) -> bool:
        return bool(output_ids) and output_ids[-1] in self.stop_token_ids


def _stop_token_ids(tokenizer: Any) -> list[int]:
    """The end-of-turn ids: the tokenizer's EOS first, then other known end-of-turn markers."""
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    vocab = tokenizer.get_vocab()
    for marker in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>"):
        token_id = vocab.get(marker)
        if token_id is not None and token_id not in ids:
            ids.append(int(token_id))
    return ids
