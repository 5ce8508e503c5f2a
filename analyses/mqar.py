"""Multi-query associative recall (MQAR; Arora et al. 2023, "Zoology: Measuring and Improving Recall
in Efficient Language Models", arXiv 2312.04927, Sec. 3.1): a generator and a small training run per
token mixer, reporting recall accuracy against the mixer's decoding state size.

A sequence first lists ``num_kv_pairs`` key-value pairs ``k_1 v_1 ... k_N v_N`` (distinct keys from
the lower half of the vocabulary, distinct values from the upper half), then, after gaps drawn from
a power law, every key again as a query followed by its value. The model must predict, at each
query key, the value paired with it in the context. Softmax attention solves it with an induction
head; a fixed-size recurrent state (linear attention) must compress all pairs, which is where it
falls behind (Zoology, Fig. 2) — hence accuracy is reported against
:func:`harness.conversion.factory.decode_state_size`.

``inputs``/``targets`` are aligned (not shifted): ``targets[b, t]`` is the token to predict *from*
position ``t`` — the value, at query-key positions — and ``-100`` everywhere else.

Command line (:mod:`harness.cli.mqar`): ``python -m harness mqar --methods softmax,dijiang --d-models 32,64 --out
results/mqar.csv``.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from harness.conversion.factory import decode_state_size
from harness.training.schedules import warmup_cosine

IGNORE_INDEX = -100


class MQARConfigError(ValueError):
    """An MQAR setting that cannot be generated."""


@dataclass(frozen=True)
class MQARConfig:
    """One MQAR setting (Zoology's ``multiquery_ar``).

    ``vocab_size``: keys are drawn from ``1 .. vocab_size//2 - 1``, values from
    ``vocab_size//2 .. vocab_size - 1`` (token 0 is the filler). ``seq_len``: tokens per sequence.
    ``power_a``: exponent of the power law ``p(gap) ~ a gap^(a-1)`` that places queries (small
    ``a``: queries close to the context). ``random_non_queries``: fill the non-query positions of
    the query section with random tokens (Zoology's default) instead of token 0.
    """

    vocab_size: int = 64
    num_kv_pairs: int = 8
    seq_len: int = 64
    power_a: float = 0.01
    random_non_queries: bool = True

    def __post_init__(self) -> None:
        n_keys = self.vocab_size // 2 - 1
        if self.num_kv_pairs < 1:
            raise MQARConfigError(f"num_kv_pairs must be positive, got {self.num_kv_pairs}.")
        if self.num_kv_pairs > n_keys or self.num_kv_pairs > self.vocab_size - self.vocab_size // 2:
            raise MQARConfigError(
                f"vocab_size={self.vocab_size} has only {n_keys} keys for num_kv_pairs={self.num_kv_pairs}; "
                f"raise vocab_size to at least {2 * self.num_kv_pairs + 2}."
            )
        if self.seq_len < 4 * self.num_kv_pairs:
            raise MQARConfigError(
                f"seq_len={self.seq_len} is too short for {self.num_kv_pairs} pairs: the context takes "
                f"2*num_kv_pairs tokens and the queries as many again with room for gaps; use seq_len >= "
                f"{4 * self.num_kv_pairs}."
            )
        if self.power_a <= 0:
            raise MQARConfigError(f"power_a must be positive, got {self.power_a}.")

    @property
    def key_range(self) -> tuple[int, int]:
        """Half-open range of key tokens."""
        return 1, self.vocab_size // 2

    @property
    def value_range(self) -> tuple[int, int]:
        """Half-open range of value tokens."""
        return self.vocab_size // 2, self.vocab_size


def generate_mqar(config: MQARConfig, num_examples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, targets)``, both ``(num_examples, seq_len)`` int64; deterministic in ``seed``.

    Layout of one row (``N = num_kv_pairs``, ``C = 2N``)::

        k_1 v_1 k_2 v_2 ... k_N v_N | filler ... k_q v_q ... filler ... k_r v_r ...
        targets: -100 everywhere except at each query key k_q, where it is v_q.

    Queries sit at even offsets ``2g`` of the query section, with the ``N`` distinct gap slots
    ``g`` drawn without replacement from ``p(g) ~ a g^(a-1)`` (Zoology, Sec. 3.1)."""
    if num_examples < 1:
        raise MQARConfigError(f"num_examples must be positive, got {num_examples}.")
    c = config
    rng = np.random.default_rng(seed)
    n, ctx = c.num_kv_pairs, 2 * c.num_kv_pairs
    klo, khi = c.key_range
    vlo, vhi = c.value_range
    # distinct keys and values per row: the first N of a random permutation of each vocabulary half
    keys = np.argsort(rng.random((num_examples, khi - klo)), axis=1)[:, :n] + klo
    values = np.argsort(rng.random((num_examples, vhi - vlo)), axis=1)[:, :n] + vlo
    inputs = np.zeros((num_examples, c.seq_len), dtype=np.int64)
    targets = np.full((num_examples, c.seq_len), IGNORE_INDEX, dtype=np.int64)
    inputs[:, 0:ctx:2] = keys
    inputs[:, 1:ctx:2] = values
    slots = (c.seq_len - ctx) // 2  # query slots: (key, value) at offsets 2g, 2g+1 of the query section
    p = c.power_a * np.arange(1, slots + 1, dtype=np.float64) ** (c.power_a - 1)
    p /= p.sum()
    if c.random_non_queries:
        inputs[:, ctx:] = rng.integers(0, c.vocab_size, size=(num_examples, c.seq_len - ctx))
    order = np.argsort(rng.random((num_examples, n)), axis=1)  # which pair each query asks for
    for b in range(num_examples):
        gaps = rng.choice(slots, size=n, replace=False, p=p)
        pos = ctx + 2 * gaps
        q_keys, q_values = keys[b, order[b]], values[b, order[b]]
        inputs[b, pos] = q_keys
        inputs[b, pos + 1] = q_values
        targets[b, pos] = q_values
    return torch.from_numpy(inputs), torch.from_numpy(targets)


# -- training -----------------------------------------------------------------------------------------
@dataclass
class MQARTrainConfig:
    """Model and optimiser of one MQAR run: a small :class:`~harness.MixerLMForCausalLM` trained with
    AdamW (linear warm-up, cosine decay) on freshly generated batches (no example seen twice).

    ``d_model`` is the knob that sets a mixer's state size (Zoology sweeps model width)."""

    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 2
    layout: str = "llama"
    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 20
    eval_examples: int = 512
    seed: int = 0
    mixer_options: dict[str, Any] = field(default_factory=dict)
    mixer_form: str | None = None


def build_mqar_model(method: str, data: MQARConfig, train: MQARTrainConfig) -> Any:
    """The small model of an MQAR run (:func:`harness.conversion.factory.build_model`): the suite's decoder with
    ``method`` in every layer, or — for a method of kind ``model`` such as ``mamba`` — that
    architecture at the same width, depth and vocabulary (``match="layers"``)."""
    from harness.conversion.factory import ModelSpec, build_model
    from harness.core.modeling import MixerLMConfig

    config = MixerLMConfig(
        vocab_size=data.vocab_size,
        hidden_size=train.d_model,
        num_hidden_layers=train.n_layers,
        num_attention_heads=train.n_heads,
        intermediate_size=2 * train.d_model,
        layout=train.layout,
        mixer_form=train.mixer_form,
        max_position_embeddings=data.seq_len,
    )
    return build_model(ModelSpec(method, config=config, options=train.mixer_options, match="layers"))


@torch.no_grad()
def mqar_accuracy(model: Any, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int = 256) -> float:
    """Fraction of query positions whose arg-max prediction is the paired value."""
    model.eval()
    device = next(model.parameters()).device
    correct = total = 0
    for i in range(0, len(inputs), batch_size):
        x, y = inputs[i : i + batch_size].to(device), targets[i : i + batch_size].to(device)
        pred = model(input_ids=x).logits.argmax(-1)
        mask = y != IGNORE_INDEX
        correct += int((pred[mask] == y[mask]).sum())
        total += int(mask.sum())
    return correct / max(total, 1)


def train_mqar(
    method: str,
    data: MQARConfig | None = None,
    train: MQARTrainConfig | None = None,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Train a small model with mixer ``method`` on MQAR and score it on held-out sequences.

    Returns a tidy row: ``model, method, task="mqar", metric="accuracy", value, stderr, n`` (n =
    query positions scored; stderr binomial) plus ``state_size`` (all layers, at ``seq_len``),
    the setting, the final training loss and the wall time."""
    data = data or MQARConfig()
    train = train or MQARTrainConfig()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(train.seed)
    model = build_mqar_model(method, data, train).to(device)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=train.lr,
        betas=(0.9, 0.98),
    )
    decay_steps = max(1, train.steps - train.warmup_steps)
    start = time.perf_counter()
    loss_value = float("nan")
    model.train()
    for step in range(train.steps):
        # a fresh batch every step; train seeds are disjoint from the evaluation seed below
        x, y = generate_mqar(data, train.batch_size, seed=hash_seed(train.seed, "train", step))
        x, y = x.to(device), y.to(device)
        for group in opt.param_groups:
            group["lr"] = warmup_cosine(step, peak=train.lr, warmup_steps=train.warmup_steps, decay_steps=decay_steps)
        logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1), ignore_index=IGNORE_INDEX)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"MQAR training of {method!r} diverged at step {step} (loss {loss.item()}).")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss_value = loss.item()
    x_eval, y_eval = generate_mqar(data, train.eval_examples, seed=hash_seed(train.seed, "eval", 0))
    acc = mqar_accuracy(model, x_eval, y_eval)
    n = int((y_eval != IGNORE_INDEX).sum())
    total_state = decode_state_size(model, data.seq_len, method)
    return {
        "model": f"mqar-{method}-d{train.d_model}-L{train.n_layers}",
        "method": method,
        "task": "mqar",
        "metric": "accuracy",
        "value": acc,
        "stderr": math.sqrt(acc * (1 - acc) / n),
        "n": n,
        "state_size": total_state,
        "state_size_per_layer": total_state // train.n_layers,
        "d_model": train.d_model,
        "n_layers": train.n_layers,
        "n_heads": train.n_heads,
        "vocab_size": data.vocab_size,
        "num_kv_pairs": data.num_kv_pairs,
        "seq_len": data.seq_len,
        "steps": train.steps,
        "batch_size": train.batch_size,
        "lr": train.lr,
        "final_loss": loss_value,
        "train_seconds": round(time.perf_counter() - start, 2),
        "device": str(device),
    }


def hash_seed(seed: int, purpose: str, index: int) -> int:
    """A 63-bit seed from ``(seed, purpose, index)``, stable across runs and platforms."""
    return int(np.random.SeedSequence([seed, index, *purpose.encode()]).generate_state(2, np.uint64)[0] >> 1)


def mqar_sweep(
    methods: Sequence[str],
    d_models: Sequence[int],
    data: MQARConfig | None = None,
    train: MQARTrainConfig | None = None,
    lrs: Sequence[float] | None = None,
    mixer_options: dict[str, dict[str, Any]] | None = None,
    device: str | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """One row per (method, d_model): accuracy against state size.

    With several learning rates ``lrs`` each pair keeps its best run, as Zoology reports (each
    architecture at its own best learning rate); the row records the winning ``lr`` and the
    ``lrs_tried``."""
    train = train or MQARTrainConfig()
    lrs = list(lrs) if lrs else [train.lr]
    rows = []
    for method in methods:
        for d in d_models:
            best = None
            for lr in lrs:
                run = dataclasses.replace(train, d_model=d, lr=lr, mixer_options=(mixer_options or {}).get(method, {}))
                row = train_mqar(method, data, run, device=device)
                if best is None or row["value"] > best["value"]:
                    best = row
                if progress:
                    print(
                        f"{method:>16s} d_model={d:<4d} lr={lr:<8g} state={row['state_size']:<8d} "
                        f"acc={row['value']:.3f} ({row['train_seconds']:.0f}s)",
                        file=sys.stderr,
                    )
            rows.append({**best, "lrs_tried": ",".join(f"{lr:g}" for lr in lrs)})
    return rows
