"""The README's layout is the tree: every package and module it names exists, every package of
``harness/`` is named, and each layer imports only the layers drawn above it (so there is no
import cycle, and nothing in the model core reaches a method package)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: the harness packages, from the bottom layer up, in the README's order
ORDER = (
    "util",
    "core",
    "layers",
    "data",
    "conversion",
    "training",
    "evaluation",
    "scale",
    "report",
    "bench",
    "pipeline",
    "cli",
)
METHOD_PACKAGES = ("baselines", "dijiang")


def readme_tree() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("## Layout", 1)[1]
    return re.search(r"```text\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]


def test_readme_tree_names_every_harness_package_in_layer_order():
    tree = readme_tree()
    named = re.findall(r"^  (\w+)/", tree, re.M)
    actual = sorted(p.name for p in (REPO / "harness").iterdir() if (p / "__init__.py").is_file())
    assert sorted(named) == actual, "README layout and harness/ packages differ"
    assert tuple(named) == ORDER


def package_texts(tree: str) -> dict[str, str]:
    """``harness/<package>/`` -> its description in the tree (continuation lines included)."""
    texts: dict[str, str] = {}
    current = None
    for line in tree.splitlines():
        m = re.match(r"^  (\w+)/ +(.*)$", line)
        if m:
            current = m.group(1)
            texts[current] = m.group(2)
        elif current and line.startswith(" " * 10):
            texts[current] += " " + line.strip()
        else:
            current = None
    return texts


def test_readme_tree_names_every_module_and_every_named_folder_exists():
    tree = readme_tree()
    for package, text in package_texts(tree).items():
        words = set(re.findall(r"[a-z_]+", text))
        for path in sorted((REPO / "harness" / package).iterdir()):
            name = path.stem if path.suffix == ".py" else path.name
            if name.startswith("_") or not (path.suffix == ".py" or (path / "__init__.py").is_file()):
                continue
            assert name in words, f"README layout does not name harness/{package}/{path.name}"
    for top in re.findall(r"^([a-z_]+)/", tree, re.M):
        assert (REPO / top).is_dir(), f"README names {top}/, which does not exist"


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_each_layer_imports_only_layers_above_it():
    rank = {p: i for i, p in enumerate(ORDER)}
    wrong = []
    for path in sorted((REPO / "harness").rglob("*.py")):
        parts = path.relative_to(REPO / "harness").parts
        if len(parts) < 2:
            continue  # harness/__init__.py, __main__.py: the package's front door
        mine = parts[0]
        for name in imports_of(path):
            bits = name.split(".")
            if bits[0] in METHOD_PACKAGES and mine in ("util", "core", "layers"):
                wrong.append(f"{path.relative_to(REPO)} imports the method package {name}")
            if bits[0] == "harness" and len(bits) > 1 and bits[1] in rank and rank[bits[1]] > rank[mine]:
                wrong.append(f"{path.relative_to(REPO)} ({mine}) imports {name} (a layer below it)")
    assert not wrong, "\n".join(wrong)
