"""Hybrid conversions: which layers of a softmax teacher keep softmax attention, the hybrid student
built from that choice, and what such a model costs to decode at long contexts.

Practitioners linearising pretrained Transformers keep some exact attention: Mamba-in-the-Llama
(Wang et al. 2024) keeps 1/2 or 1/4 of the attention layers at regular intervals; LoLCATs
(Zhang et al. 2024) keeps a 64-token sliding window in every layer. This module chooses
the layers and builds the model; the per-layer methods themselves are the registry's (``softmax``,
``sliding-window``, ``window-linear``, any linear method), held by
:class:`~harness.core.modeling.MixerLMConfig`'s ``layer_mixers``.

**Which layers** (:func:`select_layers`, recorded in ``config.layer_selection``):

* ``index`` — the layers given;
* ``even`` — ``k`` of ``L`` layers evenly spaced (:func:`evenly_spaced`), the control;
* ``transfer`` — measured on the teacher: per layer, the MSE between the all-linear student's mixer
  output and the teacher attention's output, both on the teacher's hidden states at that layer
  (LoLCATs' attention-transfer loss, the ``transfer`` objective, through
  :meth:`harness.training.objectives.AttentionTransfer.layer_targets`), averaged over held-out batches; the
  ``k`` layers with the *highest* error keep softmax (the layers the linear method reproduces worst);
* ``entropy`` — the teacher's attention entropy per layer (mean over heads, queries and batches, in
  nats); the ``k`` layers with the *lowest* entropy keep softmax: low-entropy, "spiky" attention is
  what linear attention fails to reproduce (Zhang et al. 2024, "The Hedgehog & the Porcupine:
  Expressive Linear Attentions with Softmax Mimicry", ICLR).

**The hybrid** (:func:`build_hybrid`): the teacher's config with the linear method in every layer
except the kept ones, which get ``keep_mixer`` (``softmax``: the teacher's attention exactly; or
``sliding-window`` / ``window-linear``); every non-mixer weight copied and every layer's mixer
initialised from the teacher's Q/K/V/O, as :func:`harness.conversion.mixer_swap.convert_model` does.

**Decode cost** (:func:`measure_decode`): tokens per second of one-token decoding steps and the
decoding state's size, at given context lengths, without an O(L^2) prefill (see its docstring for
exactly what is measured).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from harness.bench.synthetic_cache import PROBE_TOKENS, synthetic_prompt_cache
from harness.bench.workloads import cache_bytes, cache_numel
from harness.conversion.factory import decode_state_size
from harness.conversion.mixer_swap import convert_model
from harness.core.hf_cache import cache_kwarg, output_cache
from harness.core.mixer import MixerConfigError
from harness.core.modeling import MixerLMForCausalLM
from harness.training.objectives import AttentionTransfer
from harness.util.timing import time_round_robin

CRITERIA: tuple[str, ...] = ("index", "even", "transfer", "entropy")
#: methods a kept layer may get: exact softmax, or the windowed forms of it
KEEP_MIXERS: tuple[str, ...] = ("softmax", "sliding-window", "window-linear")
#: the teacher's attention method
SOFTMAX = "softmax"


@dataclass
class LayerSelection:
    """Which layers keep softmax, and why (stored as ``config.layer_selection``).

    ``criterion``: one of :data:`CRITERIA`. ``kept``: layer indices, ascending. ``scores``: the
    measured quantity per layer (``transfer``: MSE; ``entropy``: nats), None for ``index``/``even``.
    ``keep``: which end of the scores is kept (``highest``/``lowest``). ``detail``: how the scores
    were measured (linear method, batches, tokens).
    """

    criterion: str
    kept: list[int]
    scores: list[float] | None = None
    keep: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (what ``config.layer_selection`` holds)."""
        return asdict(self)


def evenly_spaced(n_layers: int, k: int) -> list[int]:
    """``k`` of ``n_layers`` layers, evenly spaced: the middle layer of each of ``k`` equal segments,
    ``floor((2i + 1) L / 2k)`` for ``i < k`` (L=4, k=2: [1, 3]; L=24, k=4: [3, 9, 15, 21]; k=L: all)."""
    if not 0 <= k <= n_layers:
        raise MixerConfigError(f"cannot keep {k} of {n_layers} layers; choose 0 <= k <= {n_layers}.")
    return [(2 * i + 1) * n_layers // (2 * k) for i in range(k)]


def _check_layers(n_layers: int, layers: Iterable[int]) -> list[int]:
    out = sorted({int(i) for i in layers})
    bad = [i for i in out if not 0 <= i < n_layers]
    if bad:
        raise MixerConfigError(f"layers {bad} do not exist; the model has layers 0..{n_layers - 1}.")
    return out


def top_layers(scores: Sequence[float], k: int, highest: bool = True) -> list[int]:
    """Indices of the ``k`` highest (or lowest) scores, ascending; ties go to the earlier layer."""
    if not 0 <= k <= len(scores):
        raise MixerConfigError(f"cannot keep {k} of {len(scores)} layers.")
    order = sorted(range(len(scores)), key=lambda i: (-scores[i] if highest else scores[i], i))
    return sorted(order[:k])


def _teacher_targets(teacher: MixerLMForCausalLM, batches: Sequence[torch.Tensor]) -> Iterator[list[tuple]]:
    """Per batch, :meth:`AttentionTransfer.layer_targets` of the teacher (mixer input, its context,
    attention output per layer), one batch at a time, on the teacher's device (the ids are moved
    there); the recording hooks are removed afterwards."""
    transfer = AttentionTransfer(teacher)
    device = next(teacher.parameters()).device
    try:
        for ids in batches:
            yield transfer.layer_targets(ids.to(device))
    finally:
        transfer.close()


@torch.no_grad()
def transfer_scores(
    teacher: MixerLMForCausalLM, student: MixerLMForCausalLM, batches: Sequence[torch.Tensor]
) -> list[float]:
    """Per layer, the MSE between ``student``'s mixer and the teacher's attention, both applied to
    the teacher's hidden states at that layer (LoLCATs' attention transfer), averaged over ``batches``."""
    layers = student.model.layers
    totals = [0.0] * len(layers)
    for per_layer in _teacher_targets(teacher, batches):
        if len(per_layer) != len(layers):
            raise MixerConfigError(f"teacher has {len(per_layer)} layers, the student {len(layers)}.")
        for i, (layer, (x, ctx, y)) in enumerate(zip(layers, per_layer)):
            out = layer.mixer(x, **ctx)[0]
            totals[i] += float(torch.mean((out.float() - y.float()) ** 2))
    return [t / len(batches) for t in totals]


@torch.no_grad()
def entropy_scores(teacher: MixerLMForCausalLM, batches: Sequence[torch.Tensor]) -> list[float]:
    """Per layer, the mean entropy (nats) of the teacher's attention rows
    (:meth:`~harness.core.mixer.TokenMixer.attention_map`), over heads, queries and ``batches``."""
    totals = [0.0] * len(teacher.model.layers)
    for per_layer in _teacher_targets(teacher, batches):
        for i, (layer, (x, ctx, _)) in enumerate(zip(teacher.model.layers, per_layer)):
            w = layer.mixer.attention_map(x, position_ids=ctx.get("position_ids")).weights.float()
            totals[i] += float(-(w * torch.log(w.clamp_min(1e-30))).sum(-1).mean())
    return [t / len(batches) for t in totals]


def select_layers(
    teacher: MixerLMForCausalLM,
    criterion: str,
    k: int | None = None,
    *,
    layers: Iterable[int] | None = None,
    batches: Sequence[torch.Tensor] | None = None,
    student: MixerLMForCausalLM | None = None,
    linear: str | None = None,
    linear_options: Mapping[str, Any] | None = None,
) -> LayerSelection:
    """Choose the layers that keep softmax (see the module docstring for the criteria).

    ``index``: ``layers``. ``even``: ``k``. ``transfer``: ``k``, held-out ``batches`` of token ids and
    the all-linear model to score — ``student`` (e.g. after ``transfer`` training), or ``linear`` (and
    its ``linear_options``) converted from the teacher as it is. ``entropy``: ``k`` and ``batches``.
    """
    if criterion not in CRITERIA:
        raise MixerConfigError(f"unknown layer criterion {criterion!r}; choose one of {list(CRITERIA)}.")
    n = teacher.config.num_hidden_layers
    if criterion == "index":
        if layers is None:
            raise MixerConfigError("criterion 'index' needs `layers`.")
        return LayerSelection("index", _check_layers(n, layers))
    if k is None:
        raise MixerConfigError(f"criterion {criterion!r} needs k, the number of layers to keep.")
    if criterion == "even":
        return LayerSelection("even", evenly_spaced(n, k))
    if not batches:
        raise MixerConfigError(f"criterion {criterion!r} is measured on the teacher: pass held-out `batches` of ids.")
    detail: dict[str, Any] = {"batches": len(batches), "tokens": int(sum(b.numel() for b in batches))}
    if criterion == "entropy":
        scores = entropy_scores(teacher, batches)
        return LayerSelection("entropy", top_layers(scores, k, highest=False), scores, "lowest", detail)
    if student is None:
        if linear is None:
            raise MixerConfigError("criterion 'transfer' needs the all-linear `student` or the `linear` method.")
        from harness.conversion.mixer_swap import convert_model

        student = convert_model(teacher, linear, dict(linear_options or {})).eval()
        detail["student"] = "converted, untrained"
    else:
        detail["student"] = "given"
    detail.update(linear=student.config.mixer, linear_options=dict(student.config.mixer_options))
    scores = transfer_scores(teacher, student, batches)
    return LayerSelection("transfer", top_layers(scores, k, highest=True), scores, "highest", detail)


def _keep_options(
    keep_mixer: str, keep_options: Mapping[str, Any] | None, linear: str, linear_options: Mapping[str, Any]
) -> dict[str, Any]:
    """Options of the kept layers; ``window-linear`` wraps the hybrid's linear method unless told."""
    opts = dict(keep_options or {})
    if keep_mixer == "window-linear":
        if "linear" not in opts:
            opts["linear"] = linear
            opts.setdefault("linear_options", dict(linear_options))
    return opts


@torch.no_grad()
def build_hybrid(
    teacher: MixerLMForCausalLM,
    linear: str,
    keep: LayerSelection | Iterable[int],
    *,
    linear_options: Mapping[str, Any] | None = None,
    keep_mixer: str = SOFTMAX,
    keep_options: Mapping[str, Any] | None = None,
) -> MixerLMForCausalLM:
    """A student of ``teacher`` with ``linear`` in every layer but the kept ones (``keep``: a
    :class:`LayerSelection` or layer indices), which get ``keep_mixer`` with ``keep_options``.

    As :func:`~harness.conversion.mixer_swap.convert_model`: embeddings, norms, MLPs and the head are copied
    exactly, every mixer receives its layer's teacher Q/K/V/O (a kept ``softmax`` layer is then the
    teacher's attention exactly); on the teacher's device and dtype, in its train/eval mode. The
    choice is recorded in ``config.layer_selection`` (with the kept method and its options).
    """
    if not isinstance(teacher, MixerLMForCausalLM):
        raise TypeError(f"build_hybrid needs a MixerLMForCausalLM teacher, got {type(teacher).__name__}.")
    if keep_mixer not in KEEP_MIXERS:
        raise MixerConfigError(f"keep_mixer {keep_mixer!r}: kept layers get one of {list(KEEP_MIXERS)}.")
    n = teacher.config.num_hidden_layers
    selection = keep if isinstance(keep, LayerSelection) else LayerSelection("index", _check_layers(n, keep))
    kept = _check_layers(n, selection.kept)
    linear_options = dict(linear_options or {})
    kopts = _keep_options(keep_mixer, keep_options, linear, linear_options)
    record = selection.as_dict()
    record.update(kept=kept, keep_mixer=keep_mixer, keep_options=kopts, linear=linear, linear_options=linear_options)
    return convert_model(
        teacher,
        linear,
        linear_options,
        layer_mixers={i: {"mixer": keep_mixer, "options": kopts} for i in kept},
        layer_selection=record,
    )


# -- decode cost -------------------------------------------------------------------------------
def measure_decode(
    models: Mapping[str, MixerLMForCausalLM],
    contexts: Sequence[int] = (2048, 8192, 32768),
    *,
    batch_size: int = 1,
    steps: int = 16,
    repeats: int = 5,
    warmup: int = 1,
    probe_tokens: int = PROBE_TOKENS,
) -> list[dict[str, Any]]:
    """Decode speed and state size of each model at each context length.

    What is measured, per (model, context L): the cache an L-token prefill of a fixed random prompt
    leaves, built without that O(L^2) prefill by
    :func:`harness.bench.synthetic_cache.synthetic_prompt_cache` (grown from real prefills of its first
    ``probe_tokens - 1`` and ``probe_tokens`` tokens; a cache that cannot be grown is really prefilled,
    recorded in ``prompt_cache_built`` = ``"prefill"`` with the reason in ``prompt_cache_note``); then
    ``warmup`` untimed calls and ``repeats`` timed calls, each of ``steps`` one-token decoding steps
    ``model(token, cache=cache, use_cache=True)`` (full logits over the vocabulary, as generation;
    fixed random tokens, no sampling), continuing the same cache, so the context grows from L to
    ``L + (warmup + repeats) * steps`` over the measurement. Calls of all (model, context) pairs are
    interleaved (:func:`harness.util.timing.time_round_robin`), device synchronised around each call.
    ``tokens_per_s`` = ``batch_size * steps`` / the median call time. ``state_numbers``: numbers
    cached per sequence after L tokens as the layers declare them
    (:func:`harness.conversion.factory.decode_state_size`);
    ``cache_numel``: the numbers the cache actually holds per sequence at L (they must agree);
    ``state_bytes``: the bytes it holds per sequence.
    """
    fns, reps, info = {}, {}, {}
    for name, model in models.items():
        model.eval()
        kwarg = cache_kwarg(model)
        dev = next(model.parameters()).device
        vocab = model.get_output_embeddings().weight.shape[0]
        for L in contexts:
            g = torch.Generator().manual_seed(L)
            prompt_ids = torch.randint(0, vocab, (batch_size, L), generator=g).to(dev)
            tokens = torch.randint(0, vocab, (batch_size, 1), generator=g).to(dev)

            def prefill(n: int, model: nn.Module = model, ids: torch.Tensor = prompt_ids) -> Any:
                with torch.inference_mode():
                    return output_cache(model(ids[:, :n], use_cache=True, logits_to_keep=1))

            def declared(n: int, model: nn.Module = model) -> int:
                return decode_state_size(model, n) * batch_size

            prompt = synthetic_prompt_cache(prefill, L, declared, probe_tokens)
            cache = prompt.fresh()
            holder = {"cache": cache}

            def run(model: nn.Module = model, holder: dict = holder, tokens: torch.Tensor = tokens, kwarg: str = kwarg):
                for _ in range(steps):
                    out = model(tokens, use_cache=True, **{kwarg: holder["cache"]})
                    holder["cache"] = output_cache(out)

            key = f"{name}@{L}"
            fns[key], reps[key] = run, repeats
            info[key] = {
                "model": name,
                "context": L,
                "batch_size": batch_size,
                "steps": steps,
                "state_numbers": decode_state_size(model, L),
                "cache_numel": cache_numel(cache, batch_size),
                "state_bytes": cache_bytes(cache, batch_size),
                "prompt_cache_built": prompt.built,
                "prompt_cache_note": prompt.note,
                "device": str(dev),
            }
            del cache, prompt
    device = next(next(iter(models.values())).parameters()).device
    times = time_round_robin(fns, reps, device, warmup=warmup)
    rows = []
    for key, t in times.items():
        row = dict(info[key])
        med = statistics.median(t)
        row.update(
            tokens_per_s=row["batch_size"] * steps / med,
            s_per_step=med / steps,
            context_end=row["context"] + (warmup + repeats) * steps,
            times=t,
        )
        rows.append(row)
    return rows
