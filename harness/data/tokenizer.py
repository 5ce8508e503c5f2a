"""Byte-level tokenizer (the suite's default) and a loader for any tokenizer by name.

:class:`ByteTokenizer` maps UTF-8 text to its bytes: ids ``0..255`` are the byte values, so no
vocabulary file is needed and bits per byte are comparable across methods (every method sees the
same tokens). Two special tokens follow the bytes:

=====  ====================  =====================================================================
id     token                 role
=====  ====================  =====================================================================
256    ``<|endoftext|>``     end of document **and** beginning of sequence (GPT-2/Pythia convention:
                             packed training data puts it between documents, so it is also the
                             token lm-eval prepends as its prefix for rolling log-likelihoods)
257    ``<|pad|>``           padding (never trained on; masked out of losses)
=====  ====================  =====================================================================

``len(ByteTokenizer()) == BYTE_VOCAB_SIZE == 258``: a model for this tokenizer needs
``vocab_size >= 258`` (``vocab_size`` of the tokenizer itself is 256, Hugging Face's convention of
counting the base vocabulary without added tokens).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from transformers import AutoTokenizer, PreTrainedTokenizer, PreTrainedTokenizerBase
from transformers.tokenization_python import AddedToken

N_BYTES = 256
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
EOS_ID = 256
PAD_ID = 257
BYTE_VOCAB_SIZE = 258
#: bumped whenever the id mapping changes (part of every tokenised-cache key)
BYTE_TOKENIZER_VERSION = "byte-v1"


class TokenizerError(ValueError):
    """A tokenizer that cannot be loaded, or that does not fit the model."""


def _special(content: str) -> AddedToken:
    return AddedToken(content, lstrip=False, rstrip=False, normalized=False, special=True)


class ByteTokenizer(PreTrainedTokenizer):
    """UTF-8 bytes as tokens (ids 0-255) plus ``<|endoftext|>`` (256, eos = bos) and ``<|pad|>`` (257).

    Encoding is lossless for any text; decoding joins the bytes and decodes them as UTF-8, replacing
    incomplete sequences (e.g. a generation cut inside a multi-byte character) with U+FFFD.
    ``save_pretrained``/``from_pretrained`` round-trip through ``tokenizer_config.json`` alone.
    """

    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, **kwargs: Any) -> None:
        for key in ("eos_token", "bos_token", "pad_token", "unk_token"):
            kwargs.pop(key, None)  # fixed by design; a saved config repeats them
        kwargs.pop("added_tokens_decoder", None)
        self._added_tokens_decoder = {EOS_ID: _special(EOS_TOKEN), PAD_ID: _special(PAD_TOKEN)}
        kwargs.setdefault("clean_up_tokenization_spaces", False)
        kwargs.setdefault("model_max_length", 1 << 30)
        super().__init__(eos_token=EOS_TOKEN, bos_token=EOS_TOKEN, pad_token=PAD_TOKEN, **kwargs)

    # -- vocabulary ------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return N_BYTES

    def get_vocab(self) -> dict[str, int]:
        vocab = {chr(i): i for i in range(N_BYTES)}
        vocab.update({EOS_TOKEN: EOS_ID, PAD_TOKEN: PAD_ID})
        return vocab

    def __len__(self) -> int:
        return BYTE_VOCAB_SIZE

    # -- text <-> tokens (one token per byte, written as the character with that code point) -----
    def _tokenize(self, text: str, **kwargs: Any) -> list[str]:
        return [chr(b) for b in text.encode("utf-8")]

    def _convert_token_to_id(self, token: str) -> int:
        if len(token) != 1 or ord(token) >= N_BYTES:
            raise TokenizerError(f"{token!r} is not a byte token of ByteTokenizer.")
        return ord(token)

    def _convert_id_to_token(self, index: int) -> str:
        if not 0 <= index < N_BYTES:
            raise TokenizerError(f"id {index} is outside ByteTokenizer's vocabulary (0..{BYTE_VOCAB_SIZE - 1}).")
        return chr(index)

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        out = bytearray()
        for tok in tokens:
            if len(tok) == 1 and ord(tok) < N_BYTES:
                out.append(ord(tok))
            else:  # a special token kept in the output
                out.extend(tok.encode("utf-8"))
        return out.decode("utf-8", errors="replace")

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str, ...]:
        return ()  # the vocabulary is fixed: nothing to write

    # -- fast paths for packing large corpora (no special-token parsing) --------------------------
    def encode_bytes(self, text: str) -> np.ndarray:
        """Token ids of ``text`` as ``uint16``, without special tokens and without treating any
        substring as a special token (``"<|endoftext|>"`` in a source file stays bytes)."""
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.uint16)

    @property
    def identity(self) -> str:
        """A string naming this tokenizer's exact id mapping (for cache keys and metadata)."""
        return BYTE_TOKENIZER_VERSION


def tokenizer_identity(tokenizer: PreTrainedTokenizerBase) -> str:
    """A stable description of a tokenizer's id mapping: the byte tokenizer's version, or a hash of
    any other tokenizer's vocabulary (so a cache keyed by it is invalidated when the vocabulary changes)."""
    if isinstance(tokenizer, ByteTokenizer):
        return tokenizer.identity
    import hashlib

    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    digest = hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode("utf-8")).hexdigest()[:16]
    return f"{type(tokenizer).__name__}:{len(tokenizer)}:{digest}"


def load_tokenizer(name_or_path: str | os.PathLike | None = "byte") -> PreTrainedTokenizerBase:
    """``"byte"`` (or ``None``) gives :class:`ByteTokenizer`; a directory saved by ByteTokenizer gives it
    back; anything else goes to ``AutoTokenizer`` (a hub id needs the network, a local path does not)."""
    if name_or_path is None or str(name_or_path) == "byte":
        return ByteTokenizer()
    path = Path(name_or_path)
    config = path / "tokenizer_config.json"
    if config.is_file():
        try:
            cls_name = json.loads(config.read_text()).get("tokenizer_class")
        except json.JSONDecodeError as err:
            raise TokenizerError(f"{config} is not valid JSON ({err}); re-save the tokenizer.") from None
        if cls_name == ByteTokenizer.__name__:
            return ByteTokenizer.from_pretrained(str(path))
    try:
        return AutoTokenizer.from_pretrained(str(name_or_path))
    except (OSError, ValueError) as err:
        offline = any(os.environ.get(v) == "1" for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
        hint = (
            "the hub is unreachable in offline mode (HF_HUB_OFFLINE=1); unset it with network access, "
            if offline
            else "check the name or your network, "
        )
        raise TokenizerError(
            f"cannot load tokenizer {str(name_or_path)!r}: {hint}pass a local tokenizer directory, "
            f"or use tokenizer 'byte' (no files needed). ({type(err).__name__}: {str(err).splitlines()[0]})"
        ) from None


def check_vocab(tokenizer: PreTrainedTokenizerBase, model_vocab_size: int) -> None:
    """Raise :class:`TokenizerError` when the model's embedding cannot hold every token id."""
    n = len(tokenizer)
    if model_vocab_size < n:
        raise TokenizerError(
            f"tokenizer/model vocab mismatch: the tokenizer has {n} tokens but the model's vocab_size is "
            f"{model_vocab_size}; set the model's vocab_size to at least {n} (byte tokenizer: "
            f"{BYTE_VOCAB_SIZE}) or use the tokenizer the model was trained with."
        )
