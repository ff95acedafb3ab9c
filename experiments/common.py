"""What every experiment's command line does the same way (the absl `main`s of experiments/)."""

from __future__ import annotations

import shlex
import sys

from absl import app, flags, logging

from adaptive_jax.config import check_override_flags


def exit_on_bad_overrides(reference, flag_name: str = "config") -> None:
    """Check the `--config.*` overrides on the command line against `reference`'s keys; call it
    under `if __name__ == "__main__":` before the config flag is defined. config_flags applies
    the overrides as soon as the flag is defined, and a misspelt key then dies with a bare
    AttributeError: this exits with an error that names the key and the keys there are."""
    try:
        check_override_flags(sys.argv, reference, flag_name)
    except ValueError as e:
        sys.exit(f"error: {e}")


def start(argv: list[str], module: str) -> str:
    """The start of an experiment's `main(argv)`: positional arguments are an error, and absl's
    log goes to WARNING unless `--verbosity` is given (orbax and TFDS log every step of their
    work at INFO). Returns the command as typed, `python -m <module> <flags>`, for the run's
    record."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    return f"python -m {module} " + " ".join(shlex.quote(a) for a in sys.argv[1:])
