"""Multi-query associative recall (Zoology, Arora et al. 2023): generator properties and a short
softmax-attention training run that must solve an easy setting."""

from __future__ import annotations

import argparse

import pytest
import torch

from analyses.mqar import (
    IGNORE_INDEX,
    MQARConfig,
    MQARConfigError,
    MQARTrainConfig,
    build_mqar_model,
    generate_mqar,
    train_mqar,
)
from harness.cli.mqar import add_arguments, main
from harness.conversion.factory import decode_state_size


@pytest.fixture
def one_thread():
    """Tiny matrices: threading costs more than it gives (and the CI machine is shared)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("random_non_queries", [True, False])
def test_generator_keys_values_and_queries_are_consistent(random_non_queries):
    cfg = MQARConfig(vocab_size=40, num_kv_pairs=6, seq_len=48, random_non_queries=random_non_queries)
    inputs, targets = generate_mqar(cfg, 200, seed=3)
    assert inputs.shape == targets.shape == (200, 48) and inputs.dtype == targets.dtype == torch.int64
    assert int(inputs.min()) >= 0 and int(inputs.max()) < cfg.vocab_size
    ctx = 2 * cfg.num_kv_pairs
    klo, khi = cfg.key_range
    vlo, vhi = cfg.value_range
    for x, y in zip(inputs.tolist(), targets.tolist()):
        keys, values = x[0:ctx:2], x[1:ctx:2]
        assert len(set(keys)) == len(keys) and all(klo <= k < khi for k in keys)
        assert len(set(values)) == len(values) and all(vlo <= v < vhi for v in values)
        pairs = dict(zip(keys, values))
        queries = [t for t in range(len(y)) if y[t] != IGNORE_INDEX]
        # every key is asked exactly once, after the context, and the target is its value
        assert sorted(x[t] for t in queries) == sorted(keys)
        assert all(t >= ctx for t in queries)
        for t in queries:
            assert y[t] == pairs[x[t]]
            assert x[t + 1] == y[t]  # the value follows its query key in the input
        assert all(v == IGNORE_INDEX for v in y[:ctx])
        if not random_non_queries:
            used = set(queries) | {t + 1 for t in queries}
            assert all(x[t] == 0 for t in range(ctx, len(x)) if t not in used)


def test_generator_is_deterministic_in_its_seed():
    cfg = MQARConfig(vocab_size=32, num_kv_pairs=4, seq_len=24)
    a, b, c = generate_mqar(cfg, 64, 7), generate_mqar(cfg, 64, 7), generate_mqar(cfg, 64, 8)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_power_law_puts_queries_near_the_context_for_small_a():
    """p(gap) ~ a gap^(a-1): a small a concentrates queries right after the key-value context."""

    def mean_query_position(a: float) -> float:
        cfg = MQARConfig(vocab_size=64, num_kv_pairs=4, seq_len=128, power_a=a)
        _, y = generate_mqar(cfg, 300, seed=0)
        return (y != IGNORE_INDEX).nonzero()[:, 1].float().mean().item()

    assert mean_query_position(0.01) < mean_query_position(1.0) - 10


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"num_kv_pairs": 8, "seq_len": 20}, "seq_len >= 32"),
        ({"vocab_size": 8, "num_kv_pairs": 4}, "raise vocab_size"),
        ({"num_kv_pairs": 0}, "positive"),
    ],
)
def test_impossible_settings_get_clear_errors(kwargs, needle):
    with pytest.raises(MQARConfigError, match=needle):
        MQARConfig(**kwargs)


def test_state_size_sums_the_mixers_contract():
    data = MQARConfig(vocab_size=32, num_kv_pairs=4, seq_len=24)
    model = build_mqar_model("softmax", data, MQARTrainConfig(d_model=32, n_layers=3, n_heads=2))
    # softmax caches K and V: 2 x heads x head_dim x seq_len per layer
    assert decode_state_size(model, 24) == 3 * 2 * 2 * 16 * 24


def test_whole_architecture_methods_train_too(one_thread):
    """Mamba (kind "model") is its own architecture: built by the factory at the same width, depth and
    vocabulary, its state sized by its registry entry."""
    from harness.core.registry import get_method

    data = MQARConfig(vocab_size=16, num_kv_pairs=2, seq_len=8)
    train = MQARTrainConfig(d_model=16, n_layers=2, steps=2, batch_size=4, eval_examples=8)
    row = train_mqar("mamba", data, train, device="cpu")
    model = build_mqar_model("mamba", data, train)
    assert model.config.hidden_size == 16 and model.config.num_hidden_layers == 2 and model.config.vocab_size == 16
    assert row["state_size"] == get_method("mamba").state_size(model.config, 8) == decode_state_size(model, 8)
    assert 0.0 <= row["value"] <= 1.0 and row["n"] == 16


def test_softmax_attention_solves_easy_mqar(one_thread):
    data = MQARConfig(vocab_size=32, num_kv_pairs=4, seq_len=24)
    train = MQARTrainConfig(d_model=64, n_layers=2, n_heads=2, steps=300, batch_size=32, lr=1e-3, seed=0)
    row = train_mqar("softmax", data, train, device="cpu")
    assert row["task"] == "mqar" and row["method"] == "softmax" and row["n"] == 512 * 4
    assert row["state_size"] == 2 * 2 * 2 * 32 * 24
    assert row["value"] >= 0.9, row


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_cli_writes_rows_and_rejects_bad_input(tmp_path, capsys, one_thread):
    out = tmp_path / "mqar.csv"
    common = ("--vocab-size", "16", "--num-kv-pairs", "2", "--seq-len", "8", "--steps", "2", "--batch-size", "4")
    assert main(_args("--methods", "softmax", "--d-models", "16", *common, "--out", str(out))) == 0
    text = out.read_text()
    assert text.splitlines()[0].startswith("model,method,task,metric,value,stderr,n,state_size")
    assert "git_commit" in text and (tmp_path / "mqar.json").is_file()
    assert main(_args("--methods", "softmax", "--d-models", "16", *common, "--out", str(out))) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(_args("--methods", "no-such-method", *common)) == 2
    assert "registered methods" in capsys.readouterr().err
    assert main(_args("--methods", "softmax", "--num-kv-pairs", "8", "--seq-len", "8")) == 2
    assert "seq_len >=" in capsys.readouterr().err
