"""Experiment definitions and profiles, loaded from ``experiments/*.yaml``: their structure, checked on read.

A *profile* (``experiments/profiles.yaml``) fixes the scale: data, tokenizer, block and batch
size, learning rates, named teacher shapes (or hub checkpoints) and evaluation tasks. An
*experiment* (one YAML file per paper result) names a runner, default parameters, and per-profile
overrides. This module reads both and checks what needs no runner (keys, names, the profile's
teachers and method options); it imports no runner. The runner registry
(:func:`harness.pipeline.runners.load_experiment`) validates the rest: the runner's name and its
parameters (each runner declares them as a dataclass), so a misspelt key, an unknown teacher or an
unregistered method is an error at load time, with the fix in the message.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

EXPERIMENTS_DIR = Path(__file__).resolve().parents[2] / "experiments"


class SpecError(ValueError):
    """An experiment or profile definition that does not validate."""


@dataclass
class Teacher:
    """A named teacher: a shape trained here (``layout`` + dims + ``tokens``) or a hub checkpoint."""

    name: str
    tokens: float
    checkpoint: str | None = None
    params: float | None = None
    #: a teacher trained here and committed (``teachers/<profile>/<name>-v<N>``, see
    #: :mod:`harness.pipeline.teachers`): converted as is instead of being trained again
    shipped: str | None = None
    shape: dict[str, Any] = field(default_factory=dict)

    @property
    def pretrained(self) -> bool:
        return self.checkpoint is not None

    @property
    def trained_here(self) -> bool:
        """Pretrained by the pipeline (neither a hub checkpoint nor a shipped teacher)."""
        return self.checkpoint is None and self.shipped is None


@dataclass
class Profile:
    name: str
    description: str
    device: str
    data: str
    tokenizer: str
    block_size: int
    batch_size: int
    pretrain: dict[str, Any]
    convert: dict[str, Any]
    teachers: dict[str, Teacher]
    eval: dict[str, Any]
    #: per-method options for conversions (``mixer_options``), e.g. lengths a method sizes itself by
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def teacher(self, name: str) -> Teacher:
        if name not in self.teachers:
            raise SpecError(f"profile {self.name!r} has no teacher {name!r}; it has {sorted(self.teachers)}.")
        return self.teachers[name]


@dataclass
class Experiment:
    """An experiment at a profile, as read (:func:`read_experiment`); its runner's typed parameters
    are :func:`harness.pipeline.runners.runner_params`."""

    name: str
    paper_ref: str
    runner: str
    description: str
    params: dict[str, Any]  # defaults merged with the profile's overrides
    profile: Profile
    #: the YAML file it was read from (for messages)
    path: Path | None = None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SpecError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path} must hold a mapping of keys, not {type(data).__name__}.")
    return data


def profile_names(directory: Path | None = None) -> list[str]:
    """The profiles ``profiles.yaml`` defines, in its order."""
    return list(_read_yaml((EXPERIMENTS_DIR if directory is None else directory) / "profiles.yaml"))


def load_profile(name: str, directory: Path | None = None) -> Profile:
    """Profile ``name`` from ``profiles.yaml`` (in ``directory``, default :data:`EXPERIMENTS_DIR`)."""
    directory = EXPERIMENTS_DIR if directory is None else directory
    data = _read_yaml(directory / "profiles.yaml")
    if name not in data:
        raise SpecError(f"unknown profile {name!r}; choose one of {sorted(data)}.")
    raw = dict(data[name])
    teachers = {}
    for tname, t in (raw.pop("teachers", None) or {}).items():
        t = dict(t)
        tokens = t.pop("tokens", None)
        if tokens is None:
            raise SpecError(f"profile {name!r}, teacher {tname!r}: 'tokens' (pretraining tokens) is required.")
        teachers[tname] = Teacher(
            name=tname,
            tokens=float(tokens),
            checkpoint=t.pop("checkpoint", None),
            shipped=t.pop("shipped", None),
            params=t.pop("params", None),
            shape=t,
        )
    fields = {f.name for f in dataclasses.fields(Profile)} - {"name", "teachers"}
    no_default = dataclasses.MISSING
    required = {f.name for f in dataclasses.fields(Profile) if f.default is f.default_factory is no_default} & fields
    missing, unknown = sorted(required - set(raw)), sorted(set(raw) - fields)
    if missing or unknown:
        raise SpecError(f"profile {name!r}: missing {missing}, unknown {unknown} keys.")
    from harness.core.registry import list_methods

    for method, opts in (raw.get("method_options") or {}).items():
        if method not in list_methods() or not isinstance(opts, dict):
            raise SpecError(
                f"profile {name!r}: method_options.{method} must map a registered method "
                f"({', '.join(list_methods())}) to its options."
            )
    return Profile(name=name, teachers=teachers, **raw)


def experiment_names(directory: Path | None = None) -> list[str]:
    """All defined experiments (file stems), sorted."""
    directory = EXPERIMENTS_DIR if directory is None else directory
    return sorted(p.stem for p in directory.glob("*.yaml") if p.stem != "profiles")


def defined_for(profile: str, directory: Path | None = None) -> list[str]:
    """The experiments that define ``profile`` (an entry under their ``profiles:``), sorted. A profile
    such as ``grid`` runs only the experiments that define it."""
    directory = EXPERIMENTS_DIR if directory is None else directory
    names = []
    for name in experiment_names(directory):
        profiles = _read_yaml(directory / f"{name}.yaml").get("profiles") or {}
        if isinstance(profiles, dict) and profile in profiles:
            names.append(name)
    return names


def read_experiment(name: str, profile: str | Profile, directory: Path | None = None) -> Experiment:
    """Experiment ``name`` at ``profile``, read and structurally checked (keys, name, the profile's
    overrides); its runner and parameters are validated by :func:`harness.pipeline.runners.load_experiment`,
    the function to load an experiment with."""
    directory = EXPERIMENTS_DIR if directory is None else directory
    path = directory / f"{name}.yaml"
    if not path.exists():
        raise SpecError(f"unknown experiment {name!r}; defined: {', '.join(experiment_names(directory))}.")
    prof = profile if isinstance(profile, Profile) else load_profile(profile, directory)
    raw = _read_yaml(path)
    for key in ("name", "paper_ref", "runner", "description", "profiles"):
        if key not in raw:
            raise SpecError(f"{path}: missing key {key!r}.")
    if raw["name"] != name:
        raise SpecError(f"{path}: name {raw['name']!r} must equal the file name {name!r}.")
    if not isinstance(raw["runner"], str):
        raise SpecError(f"{path}: runner must be a runner's name, not {raw['runner']!r}.")
    overrides = (raw.get("profiles") or {}).get(prof.name)
    if overrides is None:
        raise SpecError(f"experiment {name!r} is not defined for profile {prof.name!r}.")
    for where, value in (("params", raw.get("params") or {}), (f"profiles.{prof.name}", overrides)):
        if not isinstance(value, dict):
            raise SpecError(f"{path}: {where} must map parameter names to values, not {type(value).__name__}.")
    params = {**(raw.get("params") or {}), **overrides}
    description = " ".join(str(raw["description"]).split())
    return Experiment(name, raw["paper_ref"], raw["runner"], description, params, prof, path=path)
