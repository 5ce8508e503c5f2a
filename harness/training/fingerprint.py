"""Fingerprints of the code that produces a result, so a result made by other code is never reused.

A fingerprint is the sha256 of a set of the project's source files (their paths relative to the
repository and their bytes). The set is the *import closure* of some root modules: the roots' files
plus every project module they import, transitively, found by reading the sources with :mod:`ast`
(imports inside functions count; nothing is imported). Project modules are those of the
repository's top-level package folders (``harness``, ``baselines``, ``dijiang``...; not
:data:`NOT_CODE`) and of method packages kept outside it (``$DIJIANG_METHOD_PACKAGES``). YAML files
beside a package's ``__init__.py`` count as part of that package (lm-eval task definitions). What the
keys of the suite use:

* a **training run** (:meth:`harness.training.train.TrainConfig.config_hash`): :mod:`harness.training.train` and the
  modules that define its methods (e.g. ``baselines/cosformer.py``; for ``dijiang`` also
  ``dijiang/features.py`` and ``dijiang/decay.py``, which it imports), with their closures;
* an **evaluation** (:func:`harness.pipeline.stages.evaluate_model`): :mod:`harness.evaluation.evaluate`;
* an **MQAR point**: :mod:`analyses.mqar` and its method's module;
* an **experiment** (:mod:`harness.pipeline.reproduce`): its runner's code in
  :mod:`harness.pipeline.runners` (the module-level imports, the runner class's own imports and
  the shared helpers') and the modules of every method the experiment uses.

So editing one method's module re-runs exactly what uses that method; editing the model, the
training loop or the data pipeline re-runs every training run. The registry imports the method
packages by name at run time (not an ``import`` statement), so one method's closure does not hold
the others. The report (``harness/report/report.py``, ``compare.py``: rebuilt or run on every
invocation), the command line and the pipeline's own driver are in no closure; the parts of
``harness/report/`` that results are computed with (figures, statistics) are, through the imports.

Files are hashed once per (path, size, mtime); :data:`SOURCE_ROOT` is read at call time, so a test
can point it at an edited copy of the tree.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from harness.util.provenance import REPO_ROOT

#: top-level folders of the repository that are not the suite's code (never followed)
NOT_CODE: frozenset[str] = frozenset({"tests", "notebooks", "results", "runs", "build"})
#: where the packages live (read at call time; tests point it at a copy)
SOURCE_ROOT: Path = REPO_ROOT
#: hex digits kept of a fingerprint
LENGTH = 16


@dataclass(frozen=True)
class Fingerprint:
    """A fingerprint and the per-file hashes it was made of (to say which file changed)."""

    digest: str
    files: dict[str, str]

    def changed_files(self, old: dict[str, str] | None) -> list[str]:
        """Files added, removed or edited since ``old`` (the ``files`` of an earlier fingerprint)."""
        old = old or {}
        return sorted(f for f in set(self.files) | set(old) if self.files.get(f) != old.get(f))


def external_packages() -> dict[str, Path]:
    """Method packages kept outside the repository (``$DIJIANG_METHOD_PACKAGES``, see
    :mod:`harness.core.registry`) -> the folder holding each, so their code is fingerprinted too."""
    from harness.core import registry

    return dict(_package_folders(tuple(getattr(registry, "method_packages", lambda: registry.METHOD_PACKAGES)())))


@lru_cache(maxsize=64)
def _package_folders(names: tuple[str, ...]) -> tuple[tuple[str, Path], ...]:
    found = {}
    for name in names:
        try:
            spec = importlib.util.find_spec(name) if name.isidentifier() else None
        except (ImportError, ValueError):
            spec = None
        locations = list(spec.submodule_search_locations or []) if spec else []
        if locations:
            found[name] = Path(locations[0]).parent
    return tuple(found.items())


def module_file(name: str, root: Path | None = None) -> Path | None:
    """The source file of project module ``name`` (a module or a package's ``__init__.py``), or None."""
    root = SOURCE_ROOT if root is None else root
    parts = name.split(".")
    if parts[0] in NOT_CODE or not parts[0].isidentifier():
        return None
    if not (root / parts[0] / "__init__.py").is_file():
        root = external_packages().get(parts[0]) or root
        if not (root / parts[0] / "__init__.py").is_file():
            return None
    base = root.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _stat_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path), st.st_size, st.st_mtime_ns


@lru_cache(maxsize=4096)
def _file_hash(key: tuple[str, int, int]) -> str:
    return hashlib.sha256(Path(key[0]).read_bytes()).hexdigest()


def file_hash(path: Path) -> str:
    """sha256 of a file's bytes (cached while its size and modification time stay the same)."""
    return _file_hash(_stat_key(path))


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> list[str]:
    """Module names an AST imports (absolute; ``from a import b`` gives ``a`` and ``a.b``)."""
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.append(base)
            names += [f"{base}.{alias.name}" for alias in node.names if alias.name != "*"]
    return names


@lru_cache(maxsize=4096)
def _imports(key: tuple[str, int, int], module: str) -> tuple[str, ...]:
    path = Path(key[0])
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return tuple(_imported_names(tree, module, path.name == "__init__.py"))


def imports_of(name: str, root: Path | None = None) -> list[str]:
    """Project modules module ``name`` imports anywhere in its source (one level, not transitive)."""
    path = module_file(name, root)
    if path is None:
        return []
    return [n for n in _imports(_stat_key(path), name) if module_file(n, root) is not None]


def scoped_imports(name: str, class_name: str, root: Path | None = None) -> list[str]:
    """Project modules that module ``name`` imports outside its classes, plus those imported inside
    class ``class_name``: the code one class of a module with many classes depends on."""
    path = module_file(name, root)
    if path is None:
        return []
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            if node.name == class_name:
                found += _imported_names(node, name, is_package)
        else:
            found += _imported_names(node, name, is_package)
    return [n for n in found if module_file(n, root) is not None]


def closure(roots: Iterable[str], root: Path | None = None, shallow: Iterable[str] = ()) -> list[str]:
    """The project modules ``roots`` name and every project module they import, transitively; the
    imports of ``shallow`` modules are not followed (their own files count)."""
    stop = set(shallow)
    seen: set[str] = set()
    todo = [r for r in roots if module_file(r, root) is not None]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name not in stop:
            todo += [n for n in imports_of(name, root) if n not in seen]
    return sorted(seen)


def _files(modules: Iterable[str], root: Path) -> list[Path]:
    files: set[Path] = set()
    for name in modules:
        path = module_file(name, root)
        if path is None:
            continue
        files.add(path)
        if path.name == "__init__.py":
            files.update(path.parent.glob("*.yaml"))
    return sorted(files)


def _shown(path: Path, root: Path) -> str:
    """A file's name in a fingerprint: relative to the repository (an outside package: its path)."""
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else path.as_posix()


def fingerprint(roots: Iterable[str], root: Path | None = None, shallow: Iterable[str] = ()) -> Fingerprint:
    """The fingerprint of the import closure of ``roots`` (module names; see :func:`closure`)."""
    root = SOURCE_ROOT if root is None else root
    modules = closure(roots, root, shallow)
    files = {_shown(p, root): file_hash(p)[:LENGTH] for p in _files(modules, root)}
    digest = hashlib.sha256("".join(f"{k}\0{v}\n" for k, v in sorted(files.items())).encode()).hexdigest()
    return Fingerprint(digest[:LENGTH], files)


def method_modules(methods: Iterable[str]) -> list[str]:
    """The modules that define registered ``methods`` (unknown names are left out: validated elsewhere)."""
    from harness.core.registry import UnknownMethodError, get_method

    out = set()
    for m in methods:
        try:
            out.add(get_method(m).__module__)
        except UnknownMethodError:
            continue
    return sorted(out)


def all_method_modules() -> list[str]:
    """The modules of every registered method."""
    from harness.core.registry import list_methods

    return method_modules(list_methods())


def describe_change(changed: list[str], limit: int = 3) -> str:
    """``a.py, b.py and 2 more`` for a message."""
    shown = ", ".join(changed[:limit])
    return shown + (f" and {len(changed) - limit} more" if len(changed) > limit else "")
