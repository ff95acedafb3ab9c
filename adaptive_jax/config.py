"""Config checking: an unknown or misspelt key is an error that names it, never silently ignored;
a value of the wrong type or out of range is an error before any data is loaded or step compiled.
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Callable

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


# -- value checks: (predicate, what was expected) pairs, applied by `check_config_values` ----------

Check = tuple[Callable[[object], bool], str]


def integer(minimum: int | None = None, maximum: int | None = None) -> Check:
    """An int (not a bool) in [minimum, maximum]."""
    def ok(v):
        return (isinstance(v, numbers.Integral) and not isinstance(v, bool)
                and (minimum is None or v >= minimum) and (maximum is None or v <= maximum))
    bounds = "" if minimum is None and maximum is None else \
        f" >= {minimum}" if maximum is None else f" in [{minimum}, {maximum}]"
    return ok, f"an integer{bounds}"


def check_count(name: str, value, minimum: int = 1, meaning: str = "") -> None:
    """Raises ValueError unless `value` is an int (not a bool) >= minimum: for the counts public
    functions take (buckets, cache sizes, windows, channel multiples). `meaning` says what it
    counts, for the message."""
    if not integer(minimum)[0](value):
        raise ValueError(f"{name} must be an integer >= {minimum}"
                         + (f" ({meaning})" if meaning else "") + f", got {value!r}")


def number(minimum: float | None = None, maximum: float | None = None, *,
           above: float | None = None, below: float | None = None) -> Check:
    """A finite real number (not a bool) within the bounds: minimum / maximum inclusive, above /
    below exclusive."""
    def ok(v):
        return (isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
                and (minimum is None or v >= minimum) and (maximum is None or v <= maximum)
                and (above is None or v > above) and (below is None or v < below))
    parts = [f">= {minimum}" if minimum is not None else "", f"> {above}" if above is not None else "",
             f"<= {maximum}" if maximum is not None else "", f"< {below}" if below is not None else ""]
    bounds = " and ".join(p for p in parts if p)
    return ok, "a finite number" + (f" {bounds}" if bounds else "")


def one_of(*choices) -> Check:
    return (lambda v: isinstance(v, (str, bool, numbers.Number)) and v in choices,
            f"one of {list(choices)}")


def boolean() -> Check:
    return (lambda v: isinstance(v, bool)), "True or False"


def string() -> Check:
    return (lambda v: isinstance(v, str)), "a string"


def sequence_of(item: Check, *, nonempty: bool = True, unique: bool = False) -> Check:
    """A tuple or list whose every item passes `item` (a comma-separated flag value arrives as
    a tuple)."""
    item_ok, item_expected = item

    def ok(v):
        return (isinstance(v, (tuple, list)) and (len(v) > 0 or not nonempty)
                and all(item_ok(x) for x in v) and (not unique or len(set(v)) == len(v)))
    extra = (", non-empty" if nonempty else "") + (", without repeats" if unique else "")
    return ok, f"a list{extra} (e.g. 1,2), each item {item_expected}"


def _get(config, key: str):
    value = config
    for part in key.split("."):
        value = value[part]
    return value


def check_config_values(config, checks: dict[str, Check]) -> None:
    """Raises one ValueError listing every `config.<key>` whose value fails its check."""
    errors = []
    for key, (ok, expected) in checks.items():
        value = _get(config, key)
        if not ok(value):
            errors.append(f"config.{key} = {value!r}: expected {expected}")
    if errors:
        raise ValueError("invalid config value" + ("s" if len(errors) > 1 else "") + ":\n  "
                         + "\n  ".join(errors))


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
