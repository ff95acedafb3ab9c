"""Config checking: an unknown or misspelt key is an error that names it, never silently ignored."""

from __future__ import annotations

import difflib

import ml_collections


def _flat_keys(config, prefix: str = "") -> dict[str, object]:
    keys = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, (ml_collections.ConfigDict, dict)):
            keys.update(_flat_keys(value, name + "."))
        else:
            keys[name] = value
    return keys


def _closest(key: str, known: list[str]) -> str | None:
    """The known key a typo most likely meant: an abbreviation (lr -> learning_rate) in the same
    section first, then the closest spelling."""
    parent, _, leaf = key.rpartition(".")
    for candidate in known:
        c_parent, _, c_leaf = candidate.rpartition(".")
        if c_parent == parent and "_" in c_leaf and leaf == "".join(w[0] for w in c_leaf.split("_")):
            return candidate
    close = difflib.get_close_matches(key, known, n=1)
    return close[0] if close else None


def check_config_keys(config, reference) -> None:
    """Raises ValueError if `config` has a key that `reference` does not (suggesting the closest)."""
    known = _flat_keys(reference)
    known_prefixes = {k.rsplit(".", 1)[0] for k in known if "." in k}
    for key in _flat_keys(config):
        if key in known or key in known_prefixes:
            continue
        close = _closest(key, list(known))
        hint = f"; did you mean {close!r}?" if close else ""
        raise ValueError(f"unknown config key {key!r}{hint} Known keys: {sorted(known)}")


def check_override_flags(argv: list[str], reference, flag_name: str = "config") -> None:
    """Checks `--config.a.b=value` command-line overrides against `reference` before absl parses
    them, so a misspelt key fails with its name instead of ml_collections' bare AttributeError."""
    prefix = f"--{flag_name}."
    overrides = {}
    for arg in argv:
        if arg.startswith(prefix):
            key = arg[len(prefix):].split("=", 1)[0]
            node = overrides
            *parents, leaf = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = None
    check_config_keys(overrides, reference)


def apply_smoke(config, num_epochs: int = 1):
    """The tests' "smoke" variant every experiment shares: a depth-8 ResNet on 256 training and
    100 test images, small batches, no progress bar. Experiments add their own smoke settings."""
    config.model.depth = 8
    config.num_epochs = num_epochs
    config.batch_size = 32
    config.eval_batch_size = 50
    config.num_train_examples = 256
    config.num_eval_examples = 100
    config.log_every_steps = 2
    config.progress_bar = False
    return config
