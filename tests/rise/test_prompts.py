"""The one renderer and token-level continuation, on the tiny ChatML tokenizer."""

from __future__ import annotations

from rise import prompts as prompts_module
from rise.episode import Episode, Turn
from rise.prompts import (
    FIRST_TURN_TEMPLATE,
    ChatRenderer,
    PromptConfig,
    fill,
    render_chat,
    render_chat_text,
)

QUESTION = "What is {x} when 2x = 14?"  # braces in the question must survive substitution


def _turn(renderer: ChatRenderer, episode: Episode, text: str, eos: bool = True) -> Turn:
    index = len(episode.turns)
    user = (
        renderer.prompts.first_user_message(episode.question)
        if index == 0
        else renderer.prompts.introspection_message(episode.question)
    )
    prompt = renderer.next_prompt_ids(episode, user)
    output = renderer.tokenizer(text, add_special_tokens=False)["input_ids"]
    if eos:
        output = [*output, renderer.tokenizer.eos_token_id]
    turn = Turn(index, user, prompt, output, text, "stop" if eos else "length", eos)
    episode.turns.append(turn)
    return turn


def test_fill_substitutes_question_only() -> None:
    assert fill(FIRST_TURN_TEMPLATE, QUESTION).endswith("\\boxed{}.\n\n" + QUESTION)


def test_prompt_config_defaults_match_paper() -> None:
    prompts = PromptConfig()
    assert prompts.introspection_message("Q?") == (
        "The answer is incorrect. Please try again. Here's the question: Q?"
    )
    assert prompts.context() == []
    demo = PromptConfig(system="sys", demonstrations=(("1+1?", "\\boxed{2}"),))
    assert [m["role"] for m in demo.context()] == ["system", "user", "assistant"]


def test_render_chat_matches_template_text(tiny_tokenizer) -> None:
    messages = [{"role": "user", "content": "hello"}]
    ids = render_chat(tiny_tokenizer, messages, add_generation_prompt=True)
    assert tiny_tokenizer.decode(ids) == render_chat_text(tiny_tokenizer, messages, True)
    assert tiny_tokenizer.decode(ids).endswith("<|im_start|>assistant\n")


def test_next_prompt_extends_previous_prompt_and_output(tiny_tokenizer) -> None:
    renderer = ChatRenderer(tiny_tokenizer)
    episode = Episode(question=QUESTION)
    first = _turn(renderer, episode, "x is 7. \\boxed{7}")
    second = _turn(renderer, episode, "Still \\boxed{7}")
    assert second.prompt_ids[: len(first.prompt_ids) + len(first.output_ids)] == (
        first.prompt_ids + first.output_ids
    )
    # The token-level prompt decodes to exactly what the chat template renders.
    expected = render_chat_text(tiny_tokenizer, [*episode.messages()[:3]], True)
    assert tiny_tokenizer.decode(second.prompt_ids) == expected


def test_continuation_closes_turn_cut_by_length(tiny_tokenizer) -> None:
    renderer = ChatRenderer(tiny_tokenizer)
    closed = tiny_tokenizer.decode(renderer.continuation_ids("again", ended_with_eos=True))
    open_ = tiny_tokenizer.decode(renderer.continuation_ids("again", ended_with_eos=False))
    assert open_ == "<|im_end|>" + closed
    assert closed == "\n<|im_start|>user\nagain<|im_end|>\n<|im_start|>assistant\n"


def test_continuation_is_remembered_and_bounded(tiny_tokenizer, monkeypatch) -> None:
    """A repeated introspection message is rendered once; callers get their own list; the
    memory keeps the most recent renders only."""
    monkeypatch.setattr(prompts_module, "_CONTINUATION_CACHE", 2)
    renderer = ChatRenderer(tiny_tokenizer)
    renders: list[str] = []
    real = renderer._render_continuation

    def counting(message: str, ended_with_eos: bool) -> list[int]:
        renders.append(message)
        return real(message, ended_with_eos)

    renderer._render_continuation = counting  # type: ignore[method-assign]
    first = renderer.continuation_ids("again", ended_with_eos=True)
    first.append(-1)  # the caller's copy: the remembered ids stay intact
    again = renderer.continuation_ids("again", ended_with_eos=True)
    assert again == real("again", True) and renders == ["again"]
    assert renderer.continuation_ids("again", ended_with_eos=False) == real("again", False)
    renderer.continuation_ids("other", ended_with_eos=True)  # evicts the oldest ("again", True)
    renderer.continuation_ids("again", ended_with_eos=True)
    assert renders == ["again", "again", "other", "again"]


def test_window_keeps_problem_and_last_attempts(tiny_tokenizer) -> None:
    renderer = ChatRenderer(tiny_tokenizer)
    episode = Episode(question=QUESTION)
    for answer in ("1", "2", "3"):
        _turn(renderer, episode, f"\\boxed{{{answer}}}")
    intro = renderer.prompts.introspection_message(QUESTION)
    ids = renderer.next_prompt_ids(episode, intro, window=2)
    messages = episode.messages()
    expected = [messages[0], messages[3], messages[4], messages[5]]
    expected.append({"role": "user", "content": intro})
    assert tiny_tokenizer.decode(ids) == render_chat_text(tiny_tokenizer, expected, True)
    # With a window as large as the history, the prompt is the exact extension again.
    last = episode.turns[-1]
    full = renderer.next_prompt_ids(episode, intro, window=3)
    assert full[: len(last.prompt_ids) + len(last.output_ids)] == last.prompt_ids + last.output_ids


def test_response_ids_end_with_stop_token(tiny_tokenizer) -> None:
    renderer = ChatRenderer(tiny_tokenizer)
    ids, closed = renderer.response_ids("\\boxed{3}")
    assert closed and ids[-1] == tiny_tokenizer.eos_token_id
    assert renderer.ends_turn(ids)
