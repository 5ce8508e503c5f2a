"""Methods are discovered, not listed: a throwaway method module, written at run time into a fresh
method package with an empty ``__init__`` and no other edit anywhere, is registered by the registry's
package walk, appears in ``python -m harness methods``, builds through the factory and passes every
registry-wide contract test (``tests/test_contract.py``) and the attention-map check."""

from __future__ import annotations

import inspect
import itertools
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from harness.conversion.factory import ModelSpec, build_model, decode_state_size
from harness.core import registry
from harness.core.modeling import MixerLMConfig
from tests import test_attention_maps, test_contract

PACKAGE, NAME = "throwaway_methods", "throwaway-elu"
REPO = Path(__file__).resolve().parents[1]
METHOD_SOURCE = f'''"""A throwaway method: elu + 1 linear attention (Katharopoulos et al. 2020, Eq. 7)."""

import torch

from harness.layers.linear_mixer import LinearAttentionMixer
from harness.core.registry import register_mixer


@register_mixer("{NAME}")
class ThrowawayElu(LinearAttentionMixer):
    """phi(x) = elu(x) + 1."""

    paper = "Katharopoulos et al. 2020 (test stand-in)"

    def feature_map(self, x, position_ids, is_query):
        return torch.nn.functional.elu(x) + 1
'''


@pytest.fixture
def throwaway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A method package outside the repository holding one method module; forgotten afterwards."""
    root = tmp_path / "src"
    package = root / PACKAGE
    package.mkdir(parents=True)
    (package / "__init__.py").write_text('"""Methods kept outside the suite."""\n')
    (package / "elu_attention.py").write_text(METHOD_SOURCE)
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv(registry.EXTRA_PACKAGES_ENV, PACKAGE)
    yield root
    registry._REGISTRY.pop(NAME, None)
    registry._LOADED.discard(PACKAGE)
    for module in [m for m in sys.modules if m.split(".")[0] == PACKAGE]:
        del sys.modules[module]


def contract_calls(module: object, fixtures: dict[str, object]) -> Iterator[tuple[str, Callable[[], None]]]:
    """Every registry-wide test of ``module`` (a ``test_*`` function taking ``method``), once per
    combination of its ``parametrize`` values, bound to ``fixtures``."""
    for name, fn in vars(module).items():
        if not (name.startswith("test_") and callable(fn)):
            continue
        params = inspect.signature(fn).parameters
        if "method" not in params:
            continue
        grid: dict[str, list] = {}
        for mark in getattr(fn, "pytestmark", []):
            if mark.name == "parametrize" and mark.args[0] != "method":
                grid[mark.args[0]] = list(mark.args[1])
        for values in itertools.product(*grid.values()):
            kwargs = {k: fixtures[k] for k in params if k in fixtures}
            kwargs.update(zip(grid, values))
            yield f"{name}{list(values) or ''}", lambda fn=fn, kwargs=kwargs: fn(**kwargs)


def test_a_new_module_registers_itself_and_passes_the_contract(throwaway, tmp_path):
    assert NAME in registry.list_methods()
    caps = registry.capabilities(NAME)
    assert caps["kind"] == "mixer" and caps["convertible"] and caps["attention_map"]

    # a fresh process sees it too: `python -m harness methods`
    env = {**os.environ, registry.EXTRA_PACKAGES_ENV: PACKAGE}
    env["PYTHONPATH"] = os.pathsep.join([str(throwaway), str(REPO), env.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, "-m", "harness", "methods", "--json"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert NAME in {row["method"] for row in json.loads(out.stdout)}

    # the factory builds it, and sizes its state
    torch.manual_seed(0)
    config = MixerLMConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
    model = build_model(ModelSpec(NAME, config=config))
    assert model.config.mixer == NAME and decode_state_size(model, 100) == decode_state_size(model, 10) > 0

    # every registry-wide contract test, and the attention-map check
    ran = []
    with pytest.MonkeyPatch.context() as mp:
        fixtures = {"method": NAME, "tmp_path": tmp_path, "monkeypatch": mp}
        for label, check in itertools.chain(
            contract_calls(test_contract, fixtures), contract_calls(test_attention_maps, fixtures)
        ):
            check()
            ran.append(label)
    assert len(ran) >= 15 and any(r.startswith("test_map_applied_to_values") for r in ran), ran


def test_the_package_walk_forgets_nothing_it_registered():
    """The suite's own modules are found by the walk (their packages import none of them)."""
    from baselines import __doc__ as baselines_doc

    assert "no edit here" in baselines_doc
    assert {"softmax", "performer", "cosformer", "linformer", "retnet", "mamba", "dijiang", "pff"} <= set(
        registry.list_methods()
    )
