"""A tiny chat model built locally in seconds, for tests and benchmarks on machines without a hub.

A random-weight Llama (~0.6M parameters) with a byte-level BPE tokenizer trained here on a
small built-in corpus, a ChatML chat template and ``<|im_end|>`` as end of turn — the same
conversation format as the default SmolLM2 model, so every code path (rendering, continuation,
prefix caching, training) runs for real. ``train_parrot`` optionally teaches it one fixed reply,
which gives integration tests a model whose answers are known in advance.

Test tooling, not part of the installed package (:mod:`testbed`): the fixtures in
``tests/conftest.py`` and the benchmarks under ``bench/`` use it. It stays out of
``rise/engine/`` because ``train_parrot`` renders RISE's prompts, and the engine knows no
prompts (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import json
from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_CORPUS = [
    "Solve the following math problem step by step. Put your final answer in \\boxed{}.",
    "The answer is incorrect. Please try again. Here's the question:",
    "A farmer has 12 cows and buys 7 more. How many cows does the farmer have now?",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many in May.",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting.",
    "First we add the numbers. Then we multiply the result by two and subtract three.",
    "So the total is 3 + 4 = 7, and 7 * 2 = 14. The final answer is \\boxed{14}.",
    "Let x be the number of apples. Then 2x + 5 = 17, so x = 6. Therefore \\boxed{6}.",
    "\\frac{1}{2} + \\frac{1}{3} = \\frac{5}{6} and \\sqrt{16} = 4 and 10 - 3 = 7.",
    "How many minutes are in 3 hours? There are 60 minutes in an hour, so 180 minutes.",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 25 30 40 50 60 70 80 90 100 1000",
]


def build_tiny_model(
    path: Path,
    *,
    seed: int = 0,
    vocab_size: int = 1024,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    max_position_embeddings: int = 8192,
) -> Path:
    """Write a random-weight Llama and its tokenizer to ``path`` (a Hugging Face folder)."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer(vocab_size)
    tokenizer.save_pretrained(path)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads // 2,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=False,
        architectures=["LlamaForCausalLM"],
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).float()
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    )
    model.save_pretrained(path, safe_serialization=True)
    return path


def build_tiny_tokenizer(vocab_size: int = 1024):  # -> PreTrainedTokenizerFast
    """A byte-level BPE tokenizer with ChatML special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_CORPUS * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def train_parrot(path: Path, reply: str, *, steps: int = 300, lr: float = 3e-3) -> Path:
    """Teach the model at ``path`` to answer every prompt with ``reply`` (in place).

    The prompts vary (questions, turn counts, the introspection prompt) so the reply is
    learned as *the* response to any chat, not to one prefix.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rise.prompts import PromptConfig, render_chat

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    prompts = PromptConfig()
    reply_ids = tokenizer(reply, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    examples: list[tuple[list[int], list[int]]] = []
    for i, sentence in enumerate(_CORPUS):
        messages = [{"role": "user", "content": prompts.first_user_message(sentence)}]
        for _ in range(i % 3):
            messages += [
                {"role": "assistant", "content": reply},
                {"role": "user", "content": prompts.introspection_message(sentence)},
            ]
        prompt_ids = render_chat(tokenizer, messages, add_generation_prompt=True)
        examples.append((prompt_ids + reply_ids, [-100] * len(prompt_ids) + reply_ids))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for step in range(steps):
        input_ids, labels = examples[step % len(examples)]
        out = model(input_ids=torch.tensor([input_ids]), labels=torch.tensor([labels]))
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(path, safe_serialization=True)
    (path / "rise-parrot.json").write_text(json.dumps({"reply": reply, "loss": out.loss.item()}))
    return path


def tiny_train_config(model: Path, examples: Path, out: Path, **overrides):  # -> TrainConfig
    """A quick, deterministic TrainConfig for the tiny model (constant lr, no saving)."""
    from rise_train.train import TrainConfig

    values = dict(
        output_dir=str(out),
        model_name_or_path=str(model),
        examples=str(examples),
        max_steps=8,
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        warmup_steps=0,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    values.update(overrides)
    return TrainConfig(**values)


MARKOV_STATES = 8
"""Tokens of the Markov-chain model's chain (:func:`build_markov_model`)."""


def markov_logits(states: int = MARKOV_STATES) -> list[list[float]]:
    """The chain's next-token logits, ``[state][next state]``: the cycle's successor 2.5, two
    other states 1.0 and 0.5, the rest 0. At temperature 1 the successor has about 0.57 of the
    mass, so n-gram drafts (which predict the cycle) are accepted about half the time and every
    other state keeps at least 2%: drafts are proposed, accepted and rejected at every step."""
    rows = []
    for state in range(states):
        row = [0.0] * states
        row[(state + 1) % states] = 2.5
        row[(state + 3) % states] = 1.0
        row[(state + 5) % states] = 0.5
        rows.append(row)
    return rows


def build_markov_model(path: Path, *, states: int = MARKOV_STATES, hidden_size: int = 128) -> Path:
    """A Llama whose next token depends only on the current one, with known probabilities: a
    Markov chain over ``states`` ordinary tokens (``markov.json`` lists their ids and
    :func:`markov_logits`), every other token far below (-30). Sampling exactness tests compare
    an engine's samples with this exact distribution.

    How: every layer's output projections are zero, so the residual stream is the current
    token's embedding, a unit basis vector ``e_s`` for its state ``s`` (tokens outside the chain
    are state 0); the final RMSNorm scales it to ``sqrt(hidden) * e_s``, and the LM head's
    column ``s`` holds the state's logits divided by ``sqrt(hidden)``.
    """
    import torch
    from safetensors.torch import load_file, save_file

    path = build_tiny_model(path, hidden_size=hidden_size)
    tokenizer = build_tiny_tokenizer()
    chain = [tokenizer.convert_tokens_to_ids(c) for c in "abcdefgh"[:states]]
    weights_file = path / "model.safetensors"
    weights = load_file(weights_file)
    vocab = weights["model.embed_tokens.weight"].shape[0]
    state_of = torch.zeros(vocab, dtype=torch.long)
    state_of[torch.tensor(chain)] = torch.arange(states)
    embed = torch.zeros(vocab, hidden_size)
    embed[torch.arange(vocab), state_of] = 10.0
    head = torch.full((vocab, hidden_size), 0.0)
    head[:, :states] = -30.0 / hidden_size**0.5
    logits = torch.tensor(markov_logits(states))  # [state, next state]
    head[torch.tensor(chain), :states] = logits.T / hidden_size**0.5
    weights["model.embed_tokens.weight"] = embed
    weights["lm_head.weight"] = head
    weights["model.norm.weight"] = torch.ones(hidden_size)
    for name in list(weights):
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            weights[name] = torch.zeros_like(weights[name])
    save_file({k: v.contiguous() for k, v in weights.items()}, weights_file, {"format": "pt"})
    (path / "markov.json").write_text(
        json.dumps({"tokens": chain, "logits": markov_logits(states)})
    )
    return path
