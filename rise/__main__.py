"""``python -m rise``: the one-shot command line (see :mod:`rise.cli`)."""

from rise.cli import app


def main() -> None:
    app()


if __name__ == "__main__":  # the vLLM engine core is a spawned process: keep this guard
    main()
