"""CLI options generated from the config classes: one default and one help text per setting."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from rise.engine.config import EngineSettings
from rise.prompts import PromptConfig
from rise_train import cli
from rise_train.build import BuildConfig
from rise_train.collect import CollectConfig
from rise_train.evaluate import EvalConfig
from rise_train.options import Options, with_options
from rise_train.train_options import TrainOptions

runner = CliRunner()


def click_params(command: str) -> dict[str, Any]:
    """The click parameters of one command, by name."""
    group = typer.main.get_command(cli.app)
    return {p.name: p for p in group.commands[command].params}  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("command", "options"),
    [
        ("collect", cli.COLLECT),
        ("build", cli.BUILD),
        ("build", cli.BUILD_FILES),
        ("build", cli.BUILD_EXPERIMENTAL),
        ("evaluate", cli.EVALUATE),
        ("iterate", cli.COLLECT),
        ("iterate", cli.BUILD),
        ("iterate", cli.BUILD_EXPERIMENTAL),
        ("iterate", cli.ITERATE_EVALUATE),
    ],
)
def test_option_defaults_are_the_configs(command: str, options: Options) -> None:
    params = click_params(command)
    config = options.config()
    for spec in options.specs():
        value = getattr(config, spec.field)
        shown = ",".join(map(str, value)) if spec.schedule else value
        assert params[spec.option].default == shown, (command, spec.option)
        shared = options is cli.ITERATE_EVALUATE and not spec.option.startswith("eval_")
        if not shared:  # a shared option (--top-p) shows the first set's help
            assert params[spec.option].help == dataclasses_help(options.config, spec.field)


def dataclasses_help(config: type, name: str) -> str:
    return next(f.metadata["help"] for f in dataclasses.fields(config) if f.name == name)


def test_optional_options_show_the_config_default() -> None:
    params = click_params("train")
    assert params["learning_rate"].default is None  # not given: TrainConfig's own default
    assert params["learning_rate"].show_default == str(TrainOptions().learning_rate)
    assert params["batch_size"].show_default == str(TrainOptions().per_device_train_batch_size)
    engine = click_params("evaluate")
    assert engine["max_model_len"].default is None  # EngineSettings (and RISE_*) decide
    assert engine["max_model_len"].show_default == str(
        EngineSettings.model_fields["max_model_len"].default
    )
    assert "RISE_MAX_MODEL_LEN" in engine["max_model_len"].help


def test_a_shared_option_must_have_one_default() -> None:
    @dataclasses.dataclass
    class A:
        top_p: float = dataclasses.field(default=1.0, metadata={"help": "p"})

    @dataclasses.dataclass
    class B:
        top_p: float = dataclasses.field(default=0.9, metadata={"help": "p"})

    def command(**options: Any) -> None: ...

    with pytest.raises(TypeError, match="two defaults"):
        with_options(Options(A, ("top_p",)), Options(B, ("top_p",)))(command)
    shared = with_options(Options(A, ("top_p",)), Options(A, ("top_p",)))(command)
    assert list(shared.__signature__.parameters) == ["top_p"]  # type: ignore[attr-defined]


def test_every_exposed_field_needs_help_and_must_exist() -> None:
    @dataclasses.dataclass
    class C:
        silent: int = 1

    with pytest.raises(TypeError, match="no help"):
        Options(C, ("silent",)).specs()
    with pytest.raises(TypeError, match="no field"):
        Options(CollectConfig, ("nope",)).specs()


def problems_file(tmp_path: Path) -> Path:
    path = tmp_path / "p.jsonl"
    path.write_text(
        "".join(json.dumps({"question": f"{i}+1?", "answer": "2"}) + "\n" for i in range(3))
    )
    return path


class NoEngine:
    """Stands in for the engine where a test only looks at the configs a command builds."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    async def close(self) -> None: ...


def test_collect_options_reach_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_tokenizer: Any
) -> None:
    import rise.engine
    import rise_train.collect

    seen: dict[str, Any] = {}

    async def fake_collect(engine, problems, output, config, renderer, progress):
        seen.update(config=config, problems=problems, prompts=renderer.prompts)
        return rise_train.collect.CollectStats()

    def fake_engine(settings: EngineSettings) -> NoEngine:
        seen["settings"] = settings
        return NoEngine(tiny_tokenizer)

    monkeypatch.setattr(rise.engine, "build_engine", fake_engine)
    monkeypatch.setattr(rise_train.collect, "collect", fake_collect)
    args = [
        "collect", "--data", f"jsonl:{problems_file(tmp_path)}", "--turns", "3",
        "--samples", "1,4", "--temperature", "0.7,1.0", "--max-tokens", "64",
        "--teacher-url", "http://t/v1", "--teacher-model", "big", "--max-model-len", "1024",
        "--seed", "5", "--quiet",
    ]  # fmt: skip
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    config: CollectConfig = seen["config"]
    assert (config.max_turns, config.samples, config.temperatures) == (3, (1, 4), (0.7, 1.0))
    assert config.max_tokens == 64 and config.seed == 5
    assert config.teacher is not None and (config.teacher.model, config.teacher.samples) == (
        "big",
        1,
    )
    assert config.top_p == CollectConfig().top_p  # not given: the config's default
    assert seen["settings"].max_model_len == 1024
    assert seen["settings"].kv_cache_gib == EngineSettings().kv_cache_gib
    assert seen["prompts"] == PromptConfig()  # no --prompts, no checkpoint file: the paper's


def test_collect_uses_the_checkpoint_prompts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_tokenizer: Any
) -> None:
    """A checkpoint's prompt file is what collection runs with; another file needs the override."""
    import rise.engine
    import rise_train.collect
    from rise.prompt_file import write_prompts

    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    trained = PromptConfig(introspection="Check again. {question}")
    write_prompts(trained, checkpoint)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"introspection": "Once more: {question}"}))
    seen: dict[str, Any] = {}

    async def fake_collect(engine, problems, output, config, renderer, progress):
        seen["prompts"] = renderer.prompts
        return rise_train.collect.CollectStats()

    monkeypatch.setattr(rise.engine, "build_engine", lambda settings: NoEngine(tiny_tokenizer))
    monkeypatch.setattr(rise_train.collect, "collect", fake_collect)
    base = ["collect", "--data", str(problems_file(tmp_path)), "--model", str(checkpoint)]
    result = runner.invoke(cli.app, [*base, "--quiet"])
    assert result.exit_code == 0, result.output
    assert seen["prompts"] == trained
    result = runner.invoke(cli.app, [*base, "--prompts", str(other)])
    output = " ".join(result.output.replace("│", " ").split())
    assert result.exit_code == 2 and "--prompts" in output and "differs" in output, result.output
    result = runner.invoke(cli.app, [*base, "--prompts", str(other), "--prompts-override"])
    assert result.exit_code == 0, result.output
    assert seen["prompts"].introspection == "Once more: {question}"


def test_a_bad_schedule_names_its_flag(tmp_path: Path) -> None:
    result = runner.invoke(
        cli.app, ["collect", "--data", str(problems_file(tmp_path)), "--samples", "1,x"]
    )
    output = " ".join(result.output.replace("│", " ").split())
    assert result.exit_code == 2 and "--samples" in output, result.output


def test_train_passes_only_given_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import rise.engine.models
    import rise_train.train

    seen: dict[str, Any] = {}

    def fake_fit(config: Any) -> Any:
        seen["config"] = config
        return SimpleNamespace(model_dir=tmp_path / "out", global_step=0)

    monkeypatch.setattr(rise.engine.models, "prepare_model", lambda model, data_dir: tmp_path)
    monkeypatch.setattr(rise_train.train, "fit", fake_fit)
    examples = tmp_path / "e.jsonl"
    examples.write_text("{}\n")
    args = ["train", "--examples", examples, "--output-dir", tmp_path / "out", "--epochs", "2",
            "--train-arg", "lr_scheduler_type=linear", "--train-arg", "warmup_steps=0"]  # fmt: skip
    result = runner.invoke(cli.app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    config = seen["config"]
    assert config.num_train_epochs == 2
    assert config.learning_rate == TrainOptions().learning_rate
    assert config.lr_scheduler_type.value == "linear" and config.warmup_steps == 0


def test_build_and_evaluate_configs_from_defaults() -> None:
    # The generated option sets cover the fields the commands used to list by hand.
    build_sets = (cli.BUILD, cli.BUILD_FILES, cli.BUILD_EXPERIMENTAL)
    assert {s.field for options in build_sets for s in options.specs()} == {
        f.name for f in dataclasses.fields(BuildConfig)
    } - {"seed"}
    assert {s.field for s in cli.EVALUATE.specs()} == {
        f.name for f in dataclasses.fields(EvalConfig)
    } - {"seed"}


def test_train_arg_values_are_typed_but_words_stay_words() -> None:
    """``save_strategy=no`` is the string "no" (YAML 1.1 would read a boolean False)."""
    from rise_train.config import parse_assignments

    parsed = parse_assignments(
        ["save_strategy=no", "optim=sgd", "bf16=true", "learning_rate=1e-5", "warmup-steps=3"]
    )
    assert parsed == {
        "save_strategy": "no",
        "optim": "sgd",
        "bf16": True,
        "learning_rate": 1e-5,
        "warmup_steps": 3,
    }


def test_the_study_options_are_listed_apart_as_experimental() -> None:
    """``iterate --help`` lists the study's additions under their own heading, and RISE's
    recipe (objective, criteria, tau) outside it."""
    params = click_params("iterate")
    experimental = {
        name
        for name, p in params.items()
        if getattr(p, "rich_help_panel", None) == cli.EXPERIMENTAL
    }
    assert experimental == {
        "target", "first_turn", "progress_bonus", "pairs", "negative_scale", "mask_negative_stop",
        "copy_penalty", "max_corrections", "policy_clip", "anchor_kl", "anchor_turns",
    }  # fmt: skip
    assert params["objective"].rich_help_panel == "Examples"
    assert "policy_clip" in click_params("train") and "anchor_model" in click_params("train")
    assert "anchor_model" not in params  # iterate anchors to its base model
