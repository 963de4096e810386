"""``python -m rise_train`` (and the ``rise-train`` script): the training CLI."""

from rise_train.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    main()
