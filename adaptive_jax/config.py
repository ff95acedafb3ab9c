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


def check_config_keys(config, reference) -> None:
    """Raises ValueError if `config` has a key that `reference` does not (suggesting the closest)."""
    known = _flat_keys(reference)
    known_prefixes = {k.rsplit(".", 1)[0] for k in known if "." in k}
    for key in _flat_keys(config):
        if key in known or key in known_prefixes:
            continue
        close = difflib.get_close_matches(key, list(known), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown config key {key!r}{hint} Known keys: {sorted(known)}")
