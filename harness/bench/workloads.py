"""What is timed: prefill, decoding and a training step of one method at one shape and length.

Each phase is a :class:`Phase` holding a ``setup`` (builds the inputs, outside the timed region) and
a ``run`` (the timed work). Layer shapes run :class:`~harness.core.modeling.MixerLMModel` with one block on
random hidden states; model shapes run :class:`~harness.core.modeling.MixerLMForCausalLM` on token ids.

* prefill: one forward pass over ``L`` tokens under ``torch.inference_mode``, returning the
  decoding cache (a :class:`~harness.core.modeling.MixerCache`); for whole models only the last position's
  logits are computed (``logits_to_keep=1``), as generation does.
* decode: ``n`` tokens, one at a time, continuing from the prompt's cache with
  ``model(..., cache=cache, use_cache=True)`` — the KV cache for softmax, the recurrent
  state for linear methods (each method's ``recurrent`` form where it has one). Whole models feed
  back their greedy choice; layers get pre-built random hidden states. The prompt's cache is that of
  a real prefill of ``L`` tokens (``prompt_cache="prefill"``), or one of the same sizes and position
  counters grown from a prefill of a few dozen tokens (``"synthetic"``,
  :mod:`harness.bench.synthetic_cache`): a decoding step's cost depends on the cache's sizes only.
* train: forward and backward over ``L`` tokens (no optimizer step: its cost does not depend on
  ``L``); layers backpropagate a fixed random cotangent into their input, whole models the
  next-token cross-entropy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from harness.bench import reference
from harness.bench.shapes import Shape
from harness.bench.synthetic_cache import PROBE_TOKENS, PROMPT_CACHE_MODES, PromptCache, synthetic_prompt_cache
from harness.conversion.factory import ModelSpec, decode_state_size
from harness.conversion.factory import build_model as build_from_spec
from harness.core.hf_cache import cache_kwarg, output_cache
from harness.core.modeling import MixerCache, MixerLMConfig, MixerLMForCausalLM, MixerLMModel
from harness.core.registry import get_method, is_architecture
from harness.util.tensor_tree import tensors_in

PHASES: tuple[str, ...] = ("prefill", "decode", "train")


@dataclass
class Phase:
    """A phase ready to time: ``run()`` is the timed work; ``reset()`` restores its inputs between
    repeats (outside the timed region); ``tokens`` is how many tokens one run processes per batch."""

    name: str
    run: Callable[[], Any]
    reset: Callable[[], None]
    tokens: int
    form: str


def build_config(shape: Shape, method: str, max_seq_len: int) -> MixerLMConfig:
    """The :class:`MixerLMConfig` of ``shape`` holding ``method``, built for ``max_seq_len`` tokens."""
    return MixerLMConfig(**shape.config, mixer=method, max_position_embeddings=max_seq_len)


def build_model(shape: Shape, method: str, max_seq_len: int, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """Random-weight model of ``shape`` with ``method`` (seeded, eval mode, on ``device``/``dtype``),
    built by :func:`harness.conversion.factory.build_model`: the suite's decoder holding the method (one block
    without a head for a layer shape), or — for a method of kind ``model`` (a whole architecture, e.g.
    Mamba) — that architecture sized to the softmax model of the shape's parameter count (for a
    layer shape the config has one block, so the model matches one block's parameter count). The
    pseudo-method ``hf-softmax`` is transformers' own model of the shape
    (:func:`harness.bench.reference.build_reference`).
    """
    if reference.is_reference(method):
        return reference.build_reference(shape, max_seq_len, device, dtype)
    torch.manual_seed(0)
    if is_architecture(method):
        spec = ModelSpec(method, config=build_config(shape, "softmax", max_seq_len))
    else:
        spec = ModelSpec(method, config=build_config(shape, method, max_seq_len), body_only=shape.kind == "layer")
    return build_from_spec(spec).to(device=device, dtype=dtype).eval()


def declared_state_size(model: nn.Module, seq_len: int, method: str) -> int | None:
    """:func:`harness.conversion.factory.decode_state_size` after ``seq_len`` tokens (numbers per sequence), or
    None for a mixer that declares none; for the transformers reference, its KV cache's size
    (:func:`harness.bench.reference.kv_cache_size`)."""
    if reference.is_reference(method):
        return reference.kv_cache_size(model.config, seq_len)
    try:
        return decode_state_size(model, seq_len, method)
    except NotImplementedError:
        return None


def cache_numel(cache: Any, batch: int) -> int | None:
    """Numbers held in a decoding cache, per sequence (:meth:`MixerCache.numel` / batch)."""
    if cache is None:
        return None
    if isinstance(cache, MixerCache):
        return int(cache.numel()) // batch
    ts = tensors_in(cache)
    return sum(t.numel() for t in ts) // batch if ts else None


def cache_bytes(cache: Any, batch: int) -> int | None:
    """Bytes held in a decoding cache, per sequence."""
    ts = tensors_in(cache) if cache is not None else []
    return sum(t.numel() * t.element_size() for t in ts) // batch if ts else None


def default_forms(method: str) -> tuple[str, str]:
    """(form of prefill/training, form of one-token decoding) as the model picks them."""
    if reference.is_reference(method):
        return reference.ATTN_IMPLEMENTATION, reference.ATTN_IMPLEMENTATION
    cls = get_method(method)
    decode = "recurrent" if "recurrent" in cls.forms else cls.default_form
    return cls.default_form, decode


class Workload:
    """Inputs and closures of the three phases for one model at one length.

    Two calling conventions: the suite's decoder (:class:`MixerLMModel` for layer shapes,
    :class:`MixerLMForCausalLM` for whole models), and a plain Hugging Face causal LM built by a
    whole-architecture method (e.g. ``MambaForCausalLM``) or the transformers reference
    (``GPTNeoXForCausalLM``/``LlamaForCausalLM``, :mod:`harness.bench.reference`); for layer shapes it is
    fed hidden states through ``inputs_embeds`` and its minuscule head is kept.

    ``prompt_cache`` says how the decode phase's starting cache is built: ``"prefill"`` (a real prefill
    of ``seq_len`` tokens, or the prefill phase's cache when it ran) or ``"synthetic"``
    (:func:`harness.bench.synthetic_cache.synthetic_prompt_cache` from ``probe_tokens`` real tokens, falling
    back to a real prefill for a cache that cannot be grown); :attr:`prompt_info` records which.
    """

    def __init__(
        self,
        model: nn.Module,
        shape: Shape,
        method: str,
        seq_len: int,
        batch: int,
        decode_tokens: int,
        device: torch.device,
        dtype: torch.dtype,
        *,
        prompt_cache: str = "prefill",
        probe_tokens: int = PROBE_TOKENS,
    ) -> None:
        if prompt_cache not in PROMPT_CACHE_MODES:
            raise ValueError(f"prompt_cache must be one of {list(PROMPT_CACHE_MODES)}, not {prompt_cache!r}")
        self.model, self.shape, self.seq_len, self.batch = model, shape, seq_len, batch
        self.method, self.prompt_cache_mode, self.probe_tokens = method, prompt_cache, probe_tokens
        #: how the decode phase's starting cache was built (set by :meth:`decode`)
        self.prompt_info: PromptCache | None = None
        self._prompt_of_info: Any = None
        self.decode_tokens, self.device, self.dtype = decode_tokens, device, dtype
        self.layer = shape.kind == "layer"
        self.native = isinstance(model, (MixerLMModel, MixerLMForCausalLM))
        self.cache_arg = cache_kwarg(model)
        self.forms = default_forms(method)
        self.prompt_cache: Any = None
        self._decode_state: dict[str, Any] = {}
        g = torch.Generator(device="cpu").manual_seed(1234)
        if self.layer:
            d = int(shape.config["hidden_size"])
            self.x = torch.randn(batch, seq_len, d, generator=g).to(device, dtype)
            self.steps = [torch.randn(batch, 1, d, generator=g).to(device, dtype) for _ in range(decode_tokens)]
        else:
            vocab = int(shape.config["vocab_size"])
            self.ids = torch.randint(0, vocab, (batch, seq_len), generator=g).to(device)

    def input_bytes(self) -> int:
        """Bytes of the pre-built inputs."""
        if self.layer:
            return self.x.numel() * self.x.element_size() + sum(s.numel() * s.element_size() for s in self.steps)
        return self.ids.numel() * self.ids.element_size()

    def _call(self, inp: torch.Tensor, cache: Any, use_cache: bool, last_only: bool) -> tuple[Any, Any]:
        """One forward call; returns (output to feed back or backpropagate, cache)."""
        key = "inputs_embeds" if self.layer else "input_ids"
        kwargs: dict[str, Any] = {key: inp, "use_cache": use_cache}
        if cache is not None:
            kwargs[self.cache_arg] = cache
        if self.native and self.layer:
            return self.model(**kwargs)  # MixerLMModel: (hidden, cache)
        if last_only:
            kwargs["logits_to_keep"] = 1
        out = self.model(**kwargs)
        return out.logits, output_cache(out)

    # -- prefill -----------------------------------------------------------------------------
    def _prefill(self, tokens: int | None = None) -> Any:
        """The cache after a real prefill of the prompt's first ``tokens`` tokens (default: all)."""
        inp = self.x if self.layer else self.ids
        if tokens is not None:
            inp = inp[:, :tokens]
        with torch.inference_mode():
            _, cache = self._call(inp, None, True, True)
        return cache

    def declared_numel(self, seq_len: int) -> int | None:
        """Numbers the decoding cache holds after ``seq_len`` tokens, all sequences of the batch
        (:func:`declared_state_size` x batch), or None when the method declares no size."""
        per_sequence = declared_state_size(self.model, seq_len, self.method)
        return None if per_sequence is None else per_sequence * self.batch

    def prefill(self) -> Phase:
        def run() -> None:
            self.prompt_cache = self._prefill()

        return Phase("prefill", run, lambda: None, self.seq_len, self.forms[0])

    # -- decode ------------------------------------------------------------------------------
    def _prompt_for_decode(self) -> PromptCache:
        """The decode phase's starting cache, built as :attr:`prompt_cache_mode` says (once)."""
        if self.prompt_cache_mode == "synthetic":
            if self.prompt_info is None:
                self.prompt_cache = None  # a prefill phase's cache: not needed, free it first
                self.prompt_info = synthetic_prompt_cache(
                    self._prefill, self.seq_len, self.declared_numel, self.probe_tokens
                )
            return self.prompt_info
        if self.prompt_cache is None:  # prefill was not run in this process (resumed sweep)
            self.prompt_cache = self._prefill()
        if self.prompt_info is None or self._prompt_of_info is not self.prompt_cache:
            self.prompt_info = PromptCache.of_prefill(self.prompt_cache, self.seq_len)
            self._prompt_of_info = self.prompt_cache
        return self.prompt_info

    def decode(self) -> Phase:
        prompt = self._prompt_for_decode()
        state = self._decode_state

        def reset() -> None:
            state["cache"] = None  # free the last run's cache before building the next
            with torch.inference_mode():
                state["cache"] = prompt.fresh()

        def run() -> None:
            cache = state["cache"]
            with torch.inference_mode():
                if self.layer:
                    for x in self.steps:
                        _, cache = self._call(x, cache, True, False)
                else:
                    tok = self.ids[:, -1:]
                    for _ in range(self.decode_tokens):
                        logits, cache = self._call(tok, cache, True, False)
                        tok = logits[:, -1:].argmax(-1)
            state["cache"] = cache

        return Phase("decode", run, reset, self.decode_tokens, self.forms[1])

    def decoded_cache(self) -> Any:
        """The cache after the last decode run (prompt + generated tokens)."""
        return self._decode_state.get("cache")

    # -- train -------------------------------------------------------------------------------
    def train(self) -> Phase:
        model = self.model
        if self.layer:
            x = self.x.detach().clone().requires_grad_(True)
            grads: dict[str, torch.Tensor] = {}

            def run() -> None:
                out, _ = self._call(x, None, False, False)
                if "g" not in grads:  # cotangent fixed on the first (warm-up) run
                    grads["g"] = torch.randn_like(out)
                out.backward(grads["g"])

        else:
            ids = self.ids

            def run() -> None:
                model(input_ids=ids, labels=ids, use_cache=False).loss.backward()

        def reset() -> None:
            model.train()
            model.zero_grad(set_to_none=True)
            if self.layer:
                x.grad = None

        return Phase("train", run, reset, self.seq_len, self.forms[0])

    def finish_train(self) -> None:
        """Drop gradients and return to eval mode."""
        self.model.zero_grad(set_to_none=True)
        self.model.eval()

    def phase(self, name: str) -> Phase:
        """The phase called ``name`` (one of :data:`PHASES`)."""
        return {"prefill": self.prefill, "decode": self.decode, "train": self.train}[name]()


def weights_bytes(model: nn.Module) -> int:
    """Bytes of parameters and buffers."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def param_count(model: nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in model.parameters())
