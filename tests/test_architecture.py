"""The house's import graph (docs/architecture.md): arrows point down only."""

import ast
import pathlib

import adaptive_jax

ROOT = pathlib.Path(adaptive_jax.__file__).parent

# What each layer may not import, lazily inside a function or not.
FORBIDDEN = {
    "plans": {"nn", "models", "policies", "execution", "methods", "train", "cost", "latency",
              "zoo", "runtime", "report", "demo", "data"},
    "nn": {"models", "policies", "execution", "methods", "train", "cost", "latency", "zoo",
           "runtime", "report", "demo", "data"},
    "models": {"policies", "execution", "methods", "train", "cost", "latency", "zoo", "runtime",
               "report", "demo", "data"},
    "policies": {"execution", "methods", "train", "cost", "latency", "zoo", "runtime", "report",
                 "demo", "data"},
    "execution": {"methods", "train", "latency", "zoo", "runtime", "report", "demo", "data"},
    "cost": {"execution", "methods", "train", "zoo", "runtime", "report", "demo", "data"},
    "methods": {"train", "zoo", "runtime", "report", "demo"},
    "evaluation": {"methods", "train", "zoo", "runtime", "report", "demo"},
    "zoo": {"train", "runtime", "demo"},
}


def _layer(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return parts[0]


def _imports(path: pathlib.Path) -> set[str]:
    """The top-level adaptive_jax subpackages / modules `path` imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] == "adaptive_jax":
                if len(parts) > 1:
                    found.add(parts[1])
                else:
                    found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "adaptive_jax" and len(parts) > 1:
                    found.add(parts[1])
    return found


def test_no_arrow_points_up_the_house():
    wrong = []
    for path in sorted(ROOT.rglob("*.py")):
        layer = _layer(path)
        for target in _imports(path) & FORBIDDEN.get(layer, set()):
            wrong.append(f"{path.relative_to(ROOT)} imports adaptive_jax.{target}")
    assert not wrong, "\n".join(wrong)


def test_the_check_sees_imports():
    """The checker is not blind: it finds the imports a known module makes."""
    assert {"execution", "models", "policies"} <= _imports(ROOT / "methods" / "ofas.py")
    assert "plans" in _imports(ROOT / "models" / "resnet.py")
    assert "evaluation" in _imports(ROOT / "zoo" / "__init__.py")  # imported inside a function
