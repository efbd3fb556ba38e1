"""Offline token counting that matches OpenAI's tokenizers (o200k_base, cl100k_base).

The BPE tables ship inside the `bpe_openai` wheel (Rust backend), so nothing is downloaded.
Tokenizers are loaded lazily on first use and cached per encoding; importing this module costs
nothing beyond the catalog.

First-load cost (measured on the dev box, x86_64, Python 3.11):
- `import bpe_openai` (the public package) parses three BPE tables in pure Python at import
  time: ~0.65 s, plus ~0.14 s for `get_encoding("o200k_base")`, i.e. ~0.8 s per cold start.
- Loading only the package's Rust extension (`bpe_openai._bindings`) and asking it for the
  tokenizer: ~0.08 s. That is what `_load_bindings` does: it loads the extension module from
  the package directory without executing the package's `__init__`, and falls back to the
  ordinary import if that is not possible. Both paths produce the same Rust tokenizer, so the
  counts are identical (tests/unit/test_tokens.py checks them against the public API).
Encoding a few hundred tokens after that takes microseconds.

Text is counted as ordinary text: strings such as "<|endoftext|>" inside a prompt are counted
as the characters they are, like the API does for user content.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import json
import os
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from types import ModuleType
from typing import Any, Protocol, cast

from aigateway.llm.catalog import MODELS

DEFAULT_ENCODING = "o200k_base"
SUPPORTED_ENCODINGS = frozenset({"o200k_base", "cl100k_base"})

# OpenAI's chat accounting (see the "How to count tokens with tiktoken" cookbook): every message
# is wrapped in <|start|>{role/name}\n{content}<|end|>\n, and every reply is primed with
# <|start|>assistant<|message|>.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3

_BINDINGS_MODULE = "bpe_openai._bindings"


class _Tokenizer(Protocol):
    """The Rust tokenizer object from bpe_openai (`PyTokenizer`)."""

    def encode(self, text: str) -> list[int]: ...

    def decode(self, tokens: list[int]) -> str: ...

    def count(self, text: str) -> int: ...


_lock = threading.Lock()
_tokenizers: dict[str, _Tokenizer] = {}
_load_seconds: dict[str, float] = {}
_bindings: ModuleType | None = None


def _load_bindings() -> ModuleType:
    """The bpe_openai Rust extension, without paying for the package's Python-side table parse."""
    global _bindings
    if _bindings is not None:
        return _bindings
    module = sys.modules.get(_BINDINGS_MODULE)
    if module is None:
        module = _load_extension_directly()
    if module is None:
        module = importlib.import_module(_BINDINGS_MODULE)  # slow path: imports the package
    _bindings = module
    return module


def _load_extension_directly() -> ModuleType | None:
    try:
        package = importlib.util.find_spec("bpe_openai")
        if package is None or not package.submodule_search_locations:
            return None
        for directory in package.submodule_search_locations:
            for suffix in importlib.machinery.EXTENSION_SUFFIXES:
                path = os.path.join(directory, "_bindings" + suffix)
                if not os.path.isfile(path):
                    continue
                loader = importlib.machinery.ExtensionFileLoader(_BINDINGS_MODULE, path)
                spec = importlib.util.spec_from_file_location(_BINDINGS_MODULE, path, loader=loader)
                if spec is None:
                    continue
                module = importlib.util.module_from_spec(spec)
                loader.exec_module(module)
                # Registered under its real name so a later `import bpe_openai` reuses it.
                sys.modules[_BINDINGS_MODULE] = module
                return module
    except (ImportError, OSError):
        return None
    return None


def _tokenizer(encoding: str) -> _Tokenizer:
    found = _tokenizers.get(encoding)
    if found is not None:
        return found
    if encoding not in SUPPORTED_ENCODINGS:
        raise ValueError(f"unsupported encoding {encoding!r} (known: {sorted(SUPPORTED_ENCODINGS)})")
    with _lock:
        found = _tokenizers.get(encoding)
        if found is None:
            started = time.perf_counter()
            bindings = _load_bindings()
            found = cast(_Tokenizer, bindings.tokenizer_for_encoding(encoding))
            _load_seconds[encoding] = time.perf_counter() - started
            _tokenizers[encoding] = found
        return found


def load_times() -> dict[str, float]:
    """Seconds each loaded encoding took to load (first use in this process)."""
    with _lock:
        return dict(_load_seconds)


def encoding_for(model: str) -> str:
    """The BPE table for `model`; catalog first, then OpenAI's naming, else o200k_base."""
    spec = MODELS.get(model)
    if spec is not None:
        return spec.encoding
    name = model.lower()
    if (
        name.startswith(("gpt-3.5", "gpt-35", "text-embedding-"))
        or name == "gpt-4"
        or name.startswith(("gpt-4-", "gpt-4-32k"))
    ):
        return "cl100k_base"
    return DEFAULT_ENCODING


def _clean(text: str) -> str:
    """Lone surrogates cannot be UTF-8 encoded; replace them the way bpe_openai does."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def encode(text: str, model: str) -> list[int]:
    if not text:
        return []
    return list(_tokenizer(encoding_for(model)).encode(_clean(text)))


def decode(tokens: list[int], model: str) -> str:
    if not tokens:
        return ""
    return _tokenizer(encoding_for(model)).decode(list(tokens))


def count_text(text: str, model: str) -> int:
    """Tokens in `text` as `model` counts them (unknown model: o200k_base)."""
    if not text:
        return 0
    return int(_tokenizer(encoding_for(model)).count(_clean(text)))


def truncate_text(text: str, model: str, max_tokens: int) -> str:
    """The longest prefix of `text`, on a token boundary, that counts at most `max_tokens`."""
    if max_tokens <= 0:
        return ""
    tokens = encode(text, model)
    if len(tokens) <= max_tokens:
        return text
    keep = max_tokens
    while keep > 0:
        try:
            prefix = decode(tokens[:keep], model)
        except (ValueError, UnicodeDecodeError):  # cut inside a multi-byte character
            keep -= 1
            continue
        if count_text(prefix, model) <= max_tokens:
            return prefix
        keep -= 1
    return ""


def trim_middle(text: str, model: str, max_tokens: int) -> str:
    """`text` cut to at most `max_tokens` by removing its middle: the head (usually instructions)
    and the tail (usually the question) survive, and a marker says how much was removed."""
    tokens = encode(text, model)
    if len(tokens) <= max_tokens:
        return text
    marker = f"\n[… {len(tokens) - max_tokens} tokens trimmed …]\n"
    room = max(0, max_tokens - count_text(marker, model) - 2)  # 2: tokens that merge at the seams
    head = truncate_text(text, model, room // 2)
    tail_tokens = tokens[len(tokens) - (room - room // 2) :] if room - room // 2 > 0 else []
    tail = decode(tail_tokens, model) if tail_tokens else ""
    return head + marker + tail


def _content_text(content: object) -> Iterable[str]:
    """The countable text of a message value: a string, or the text of content parts."""
    if content is None:
        return
    if isinstance(content, str):
        yield content
        return
    if isinstance(content, list):
        for part in content:
            if isinstance(part, Mapping):
                if part.get("type") == "text" and isinstance(part.get("text"), str):
                    yield part["text"]
                elif part.get("type") == "refusal" and isinstance(part.get("refusal"), str):
                    yield part["refusal"]
                # image/audio/file parts are priced by other rules; not counted here.
            elif isinstance(part, str):
                yield part
        return
    # tool_calls, function_call and other structured values: their compact JSON, as an estimate.
    yield json.dumps(content, separators=(",", ":"), ensure_ascii=False)


def count_messages(messages: Iterable[Mapping[str, Any]], model: str) -> int:
    """Prompt tokens of a chat request, using OpenAI's published accounting.

    3 tokens per message, the tokens of every value (role, content, name, ...), +1 per `name`,
    and +3 priming the assistant's reply. `content` may be a string or a list of
    {"type": "text", "text": ...} parts. Exact for text-only messages on current models; tool
    definitions, images and tool calls are outside this formula.
    """
    tokenizer = _tokenizer(encoding_for(model))
    total = 0
    for message in messages:
        total += TOKENS_PER_MESSAGE
        for key, value in message.items():
            for text in _content_text(value):
                if text:
                    total += int(tokenizer.count(_clean(text)))
            if key == "name":
                total += TOKENS_PER_NAME
    return total + REPLY_PRIMING_TOKENS
