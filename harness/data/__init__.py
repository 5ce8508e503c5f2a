"""Data for training and evaluation: the byte tokenizer, corpora (embedded default: the Python
standard library's source), and tokenised, packed, cached training blocks."""

from harness.data.corpus import Corpus, CorpusError, Document, load_corpus
from harness.data.tokenizer import BYTE_VOCAB_SIZE, ByteTokenizer, TokenizerError, check_vocab, load_tokenizer

__all__ = [
    "BYTE_VOCAB_SIZE",
    "ByteTokenizer",
    "Corpus",
    "CorpusError",
    "Document",
    "TokenizerError",
    "check_vocab",
    "load_corpus",
    "load_tokenizer",
]
