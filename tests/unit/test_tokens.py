"""Offline token counting (aigateway.llm.tokens) against OpenAI's published numbers."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aigateway.llm import tokens

ROOT = Path(__file__).resolve().parents[2]

# The OpenAI cookbook ("How to count tokens with tiktoken", section 6) sends these messages to the
# API and prints usage.prompt_tokens: 124 for gpt-4o / gpt-4o-mini (o200k_base), 129 for gpt-4.
COOKBOOK_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate jargon "
        "into plain English.",
    },
    {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
    {"role": "system", "name": "example_assistant", "content": "Things working well together will increase revenue."},
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on opportunities "
        "for increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client deliverable.",
    },
]

SAMPLES = [
    "hello world, how are you?",
    "Résumé naïve café — 日本語のテキスト, 한국어, العربية 🎉🎉",
    "def f(x):\n    return x ** 2  # squares\n\n\n\tTabs\tand   spaces   ",
    '{"key": [1, 2, 3], "nested": {"a": null}}',
    "1234567890 3.14159 -42 1e10",
    "<|endoftext|> is just text here",
    "A" * 5000,
]


def test_o200k_encodes_the_known_ids() -> None:
    # Given a catalog model that uses o200k_base
    # When a short sentence is encoded and counted
    ids = tokens.encode("hello world, how are you?", "gpt-4o-mini")
    count = tokens.count_text("hello world, how are you?", "gpt-4o-mini")
    # Then the ids are exactly tiktoken's o200k_base ids
    assert ids == [24912, 2375, 11, 1495, 553, 481, 30]
    assert count == 7
    assert tokens.decode(ids, "gpt-4o-mini") == "hello world, how are you?"


def test_legacy_models_use_cl100k_and_unknown_models_fall_back_to_o200k() -> None:
    # Given models outside the catalog
    # When their encoding is resolved
    # Then gpt-4 / gpt-3.5 use cl100k_base, anything unknown uses o200k_base
    assert tokens.encoding_for("gpt-4") == "cl100k_base"
    assert tokens.encoding_for("gpt-3.5-turbo") == "cl100k_base"
    assert tokens.encoding_for("gpt-4o") == "o200k_base"
    assert tokens.encoding_for("some-future-model") == "o200k_base"
    assert tokens.encode("hello world, how are you?", "gpt-4") == [15339, 1917, 11, 1268, 527, 499, 30]
    assert tokens.count_text("hello world, how are you?", "some-future-model") == 7
    assert tokens.count_text("", "gpt-4o") == 0


@pytest.mark.parametrize(("model", "expected"), [("gpt-4o", 124), ("gpt-4o-mini", 124), ("gpt-4", 129)])
def test_count_messages_matches_the_prompt_tokens_openai_reported(model: str, expected: int) -> None:
    # Given the cookbook's messages (system, named examples, user)
    # When they are counted with OpenAI's chat accounting
    # Then the total equals the usage.prompt_tokens the API reported
    assert tokens.count_messages(COOKBOOK_MESSAGES, model) == expected


def test_message_accounting_per_message_name_and_priming() -> None:
    # Given one user message of 7 content tokens ("user" is 1 token)
    one = [{"role": "user", "content": "hello world, how are you?"}]
    # When counted
    # Then 3 per message + 1 role + 7 content + 3 priming = 14
    assert tokens.count_messages(one, "gpt-4o") == 14
    # And a `name` adds its own tokens plus 1
    named = [{"role": "user", "name": "bob", "content": "hello world, how are you?"}]
    assert tokens.count_messages(named, "gpt-4o") == 14 + tokens.count_text("bob", "gpt-4o") + 1
    # And content parts count like the equivalent string
    parts = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "hello world,"}, {"type": "text", "text": " how are you?"}],
        }
    ]
    expected = 3 + 1 + tokens.count_text("hello world,", "gpt-4o") + tokens.count_text(" how are you?", "gpt-4o") + 3
    assert tokens.count_messages(parts, "gpt-4o") == expected
    # And an empty conversation is just the priming
    assert tokens.count_messages([], "gpt-4o") == 3


@pytest.mark.filterwarnings("ignore:open_binary is deprecated:DeprecationWarning")
def test_fast_loader_counts_exactly_like_the_public_bpe_openai_api() -> None:
    # Given the public bpe_openai API (slow to import; used here only as the reference)
    import bpe_openai

    for encoding, model in (("o200k_base", "gpt-4o"), ("cl100k_base", "gpt-4")):
        reference = bpe_openai.get_encoding(encoding)
        for text in SAMPLES:
            # When the same text is counted by both
            # Then ids and counts are identical
            assert tokens.encode(text, model) == reference.encode_ordinary(text), (encoding, text[:30])
            assert tokens.count_text(text, model) == len(reference.encode_ordinary(text))


def test_truncate_text_cuts_on_a_token_boundary_within_the_limit() -> None:
    # Given a multilingual text longer than the limit
    text = SAMPLES[1] + " " + SAMPLES[0]
    for limit in range(1, tokens.count_text(text, "gpt-4o") + 2):
        # When truncated to `limit` tokens
        cut = tokens.truncate_text(text, "gpt-4o", limit)
        # Then it is a prefix that counts at most `limit` (never splits a character)
        assert text.startswith(cut)
        assert tokens.count_text(cut, "gpt-4o") <= limit
    assert tokens.truncate_text(text, "gpt-4o", 10_000) == text
    assert tokens.truncate_text(text, "gpt-4o", 0) == ""


def test_import_is_cheap_and_the_first_load_is_fast() -> None:
    # Given a fresh interpreter
    code = (
        "import sys, time, json\n"
        "t0 = time.perf_counter()\n"
        "from aigateway.llm import tokens\n"
        "t1 = time.perf_counter()\n"
        "loaded_at_import = 'bpe_openai._bindings' in sys.modules\n"
        "n = tokens.count_text('hello world, how are you?', 'gpt-4o')\n"
        "t2 = time.perf_counter()\n"
        "tokens.count_text('again', 'gpt-4o')\n"
        "t3 = time.perf_counter()\n"
        "print(json.dumps({'import_s': t1 - t0, 'first_count_s': t2 - t1, 'second_count_s': t3 - t2,\n"
        "  'loaded_at_import': loaded_at_import, 'n': n, 'load_times': tokens.load_times(),\n"
        "  'package_imported': 'bpe_openai.compat' in sys.modules}))\n"
    )
    # When tokens is imported, then used twice
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT / "layers/shared/python"), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    figures = json.loads(out.stdout)
    print(f"\ntokens figures: {figures}")
    # Then nothing is loaded at import, the first load is well under a second, later calls are instant
    assert figures["loaded_at_import"] is False
    assert figures["package_imported"] is False  # fast path: the Rust extension only
    assert figures["n"] == 7
    assert figures["first_count_s"] < 1.0
    assert figures["second_count_s"] < 0.01


def test_counting_is_fast_once_loaded() -> None:
    # Given a loaded tokenizer and a ~10k-token text
    text = " ".join(SAMPLES[:5]) * 100
    tokens.count_text("warm up", "gpt-4o")
    # When it is counted
    started = time.perf_counter()
    count = tokens.count_text(text, "gpt-4o")
    elapsed = time.perf_counter() - started
    print(f"\ncounted {count} tokens in {elapsed * 1000:.2f} ms")
    # Then it takes milliseconds
    assert count > 5_000
    assert elapsed < 0.5
