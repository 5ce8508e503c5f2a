"""Attention maps (paper Fig. 3) come from the function each model runs: for every registered mixer
that exposes one, the map's rows applied to its values, through the mixer's output path, give the
mixer's own parallel output; and the figure's maps are row-stochastic and causal."""

from __future__ import annotations

import pytest
import torch

from analyses.attention_maps import implied_attention, row_tv_distance
from harness import get_method, list_methods
from harness.core.mixer import has_attention_map
from tests.test_contract import T_ODD, rel_err, tiny_mixer, tiny_model

WITH_MAPS = [m for m in list_methods() if get_method(m).kind == "mixer" and has_attention_map(get_method(m))]


def test_the_paper_figure_methods_expose_maps():
    assert {"softmax", "performer", "dijiang", "pff", "cosformer", "retnet"} <= set(WITH_MAPS)


@pytest.mark.parametrize("method", WITH_MAPS)
def test_map_applied_to_values_is_the_parallel_output(method):
    mixer = tiny_mixer(method)
    x = torch.randn(2, T_ODD, 32, generator=torch.Generator().manual_seed(5))
    amap = mixer.attention_map(x)
    B, H, T, _ = amap.values.shape
    assert amap.weights.shape == (B, H, T, T) == (2, mixer.config.n_heads, T_ODD, T_ODD)
    assert not amap.weights.triu(1).any(), "a weight on a future token"
    ref, _ = mixer(x, form="parallel") if "parallel" in mixer.forms else mixer(x)
    assert rel_err(amap.output(), ref) <= 1e-4


@pytest.mark.parametrize("method", ["softmax", "performer", "dijiang"])
def test_figure_maps_are_causal_and_row_stochastic(method):
    model = tiny_model(method)
    ids = torch.randint(0, 64, (1, 24), generator=torch.Generator().manual_seed(0))
    amap = implied_attention(model, ids, layer=1)
    assert amap.shape == (24, 24) and (amap >= 0).all() and not amap.triu(1).any()
    assert torch.allclose(amap.sum(-1), torch.ones(24), atol=1e-5)
    assert row_tv_distance(amap, amap) == 0.0


def test_a_mixer_without_a_map_is_a_clear_error():
    without = [m for m in list_methods() if get_method(m).kind == "mixer" and m not in WITH_MAPS]
    if not without:
        pytest.skip("every registered mixer exposes an attention map")
    with pytest.raises(ValueError, match="exposes no attention map"):
        implied_attention(tiny_model(without[0]), torch.randint(0, 64, (1, 8)), layer=0)
