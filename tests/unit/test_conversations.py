"""The conversation context builder (aigateway.conversations): retention priority, the budget as a
hard limit, pinned messages, summary reuse and incremental folds, compression that changes no
meaning, and token counts that are exactly tokens.count_messages of what is sent.

No DynamoDB, no provider: the summariser-call tests give the service a scripted Completions.
"""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime
from typing import Any, cast

import pytest

from aigateway.api import Deadline
from aigateway.auth import Principal
from aigateway.completion import CallContext, CompletionResult, Usage
from aigateway.conversations import (
    FOLD_LOW_WATER,
    SUMMARY_LABEL,
    ContextBuilder,
    ConversationService,
    HistoryMessage,
    SummaryState,
    message_tokens,
    squeeze,
    summary_limit,
    summary_request,
)
from aigateway.errors import ContextBudgetExceeded, ProviderError, RateLimited
from aigateway.llm import tokens

MODEL = "gpt-4o-mini"
# Words with a number each: about 2.4 tokens per word, and no two messages alike.
WORDS = "amber basil cedar delta ember fjord garnet harbor indigo juniper kelp lumen mosaic nectar".split()  # noqa: SIM905


def prose(n_words: int, seed: int) -> str:
    """Distinct text of about n_words words (seeded, so every message differs)."""
    rng = random.Random(seed)
    return " ".join(f"{rng.choice(WORDS)}{rng.randint(0, 99)}" for _ in range(n_words))


def sized(n_tokens: int, seed: int) -> str:
    """Distinct text of exactly about `n_tokens` tokens."""
    return tokens.truncate_text(prose(n_tokens, seed), MODEL, n_tokens)


def turns(count: int, words: int, *, start: int = 1) -> list[HistoryMessage]:
    """`count` whole turns (user message + reply) numbered from `start`."""
    out = []
    for i in range(count):
        seq = start + 2 * i
        out.append(HistoryMessage(seq, "user", prose(words, seq), seq))
        out.append(HistoryMessage(seq + 1, "assistant", prose(words // 4 + 5, seq + 1), seq))
    return out


def builder(budget: int) -> ContextBuilder:
    return ContextBuilder(MODEL, budget, summary_limit(budget))


def kinds(messages: list[dict[str, str]], pinned: list[HistoryMessage], history: list[HistoryMessage]) -> list[str]:
    """Labels each sent message by where it came from, to check the order."""
    by_text = {m.content: f"pinned#{m.seq}" for m in pinned} | {m.content: f"turn#{m.seq}" for m in history}
    labels = []
    for m in messages:
        if m["content"].startswith(SUMMARY_LABEL):
            labels.append("summary")
        else:
            labels.append(by_text.get(m["content"], m["role"]))
    return labels


# --- compression ---------------------------------------------------------------------------------


def test_squeeze_collapses_whitespace_outside_code_and_leaves_fences_byte_for_byte() -> None:
    # Given prose with trailing spaces, runs of spaces and five blank lines around a fenced code block
    code = "```python\ndef f(x):    \n\n\n\n\n    return  x   # two  spaces\n```"
    text = f"Hello   world.   \n\n\n\n\n\nSecond  paragraph.\t\n{code}\n\n\n\n\nEnd ."
    # When squeezed
    out = squeeze(text)
    # Then the prose is compact (at most two blank lines, single spaces, no trailing whitespace) …
    assert out.startswith("Hello world.\n\n\nSecond paragraph.\n")
    assert out.endswith("\n\n\nEnd .")
    # … and the fenced block is byte for byte what was written, trailing spaces and blank lines included
    assert code in out
    # And the compressed text costs fewer tokens
    assert tokens.count_text(out, MODEL) < tokens.count_text(text, MODEL)


def test_squeeze_keeps_indentation_inline_code_tildes_and_tab_separators() -> None:
    # Given nested list indentation, inline code with double spaces, a ~~~ fence and TSV columns
    text = "- item\n    - nested   item\nUse `a  b` here.\nname\t\tscore\n~~~\n  x  =  1\n~~~\nok"
    # When squeezed
    out = squeeze(text)
    # Then indentation, inline code and the tilde fence are untouched; a tab run stays a tab
    assert "    - nested item" in out
    assert "`a  b`" in out
    assert "~~~\n  x  =  1\n~~~" in out
    assert "name\tscore" in out
    # And squeezing is idempotent
    assert squeeze(out) == out


def test_an_unclosed_fence_protects_everything_after_it() -> None:
    text = "intro   text\n```\ncode   with   spaces   \n\n\n\n\nmore"
    out = squeeze(text)
    assert out == "intro text\n```\ncode   with   spaces   \n\n\n\n\nmore"


def test_a_repeated_long_document_is_sent_once_and_referenced_after() -> None:
    # Given a long document pinned at the start and pasted again in the new message
    document = prose(400, 7)
    pinned = [HistoryMessage(1, "user", document, 1)]
    b = builder(20_000)
    # When the context is built
    plan = b.plan(system="Be helpful.", pinned=pinned, history=[], new=document, summary=None)
    built = b.assemble(plan, None)
    # Then the document is sent once, and the repeat is a short reference that names its opening
    contents = [m["content"] for m in built.messages]
    assert contents.count(document) == 1
    assert contents[-1].startswith("[This message repeats, word for word") and document[:30] in contents[-1]
    # And the saving is reported exactly: the verbatim messages minus what was sent
    verbatim = [{"role": "system", "content": "Be helpful."}] + [{"role": "user", "content": document}] * 2
    assert built.raw_tokens == tokens.count_messages(verbatim, MODEL)
    assert built.compression_saved == built.raw_tokens - built.tokens_used
    assert built.compression_saved > 300
    print(f"repeat of a {message_tokens('user', document, MODEL)}-token document: {built.compression_saved} saved")


def test_short_repeats_are_sent_again() -> None:
    b = builder(4_000)
    pinned = [HistoryMessage(1, "user", "Thanks, that helps.", 1)]
    built = b.assemble(b.plan(system="s", pinned=pinned, history=[], new="Thanks, that helps.", summary=None), None)
    assert [m["content"] for m in built.messages][-2:] == ["Thanks, that helps.", "Thanks, that helps."]


# --- retention priority and the budget ------------------------------------------------------------


def test_order_is_system_pinned_summary_latest_turns_then_the_new_message() -> None:
    # Given a pinned message, a stored summary and more history than the budget holds
    pinned = [HistoryMessage(1, "user", "Remember: the codename is BLUEFIN.", 1)]
    history = turns(12, 150, start=3)
    summary = SummaryState("Earlier: the user set up the project.", covers_through=0, covered=0)
    b = builder(2_500)
    # When the context is planned and assembled with the summary
    plan = b.plan(system="You help.", pinned=pinned, history=history, new="What is the codename?", summary=summary)
    built = b.assemble(plan, summary)
    # Then the order is system, pinned, summary, the latest turns in order, the new message
    labels = kinds(built.messages, pinned, history)
    kept = [int(label.split("#")[1]) for label in labels if label.startswith("turn#")]
    assert labels[:3] == ["system", "pinned#1", "summary"] and labels[-1] == "user"
    assert kept == sorted(kept) and kept[-1] == history[-1].seq, "the latest turns, in order"
    assert kept == [m.seq for m in history[-len(kept) :]], "a contiguous run of the newest turns"
    assert kept[0] % 2 == 1, "whole turns only: the oldest kept message is a user message"
    # And what was left out is exactly the older prefix, to be folded
    assert [m.seq for m in plan.fold] == [m.seq for m in history[: len(history) - len(kept)]]
    assert built.tokens_used <= 2_500


def test_the_budget_is_never_exceeded_and_tokens_used_is_count_messages() -> None:
    # Given 150 random conversations: budgets, pinned messages, history, summaries and repeats
    rng = random.Random(42)
    worst = 0.0
    refused = 0
    for case in range(150):
        budget = rng.choice([300, 800, 2_000, 5_000, 16_000])
        history = turns(rng.randint(0, 14), rng.choice([5, 40, 200, 600]), start=10)
        pinned = [HistoryMessage(s, "user", prose(rng.choice([3, 30, 120]), s), s) for s in (2, 4)[: rng.randint(0, 2)]]
        summary = SummaryState(prose(rng.choice([10, 200, 900]), case), 1, 1) if rng.random() < 0.5 else None
        new = rng.choice([prose(rng.choice([2, 50, 400]), case + 1000), history[0].content if history else "hi"])
        b = builder(budget)
        try:
            plan = b.plan(
                system=prose(rng.choice([5, 60]), case), pinned=pinned, history=history, new=new, summary=summary
            )
        except ContextBudgetExceeded as exc:
            refused += 1
            assert exc.details["needed_tokens"] > budget
            continue
        # A fold's new summary may be up to the conversation's summary limit long
        applied = summary
        if plan.fold:
            applied = SummaryState(sized(b.summary_limit - 30, case + 7), plan.fold[-1].seq, len(plan.fold))
        built = b.assemble(plan, applied)
        # Then nothing exceeds the budget, and the count is exactly what the tokenizer says
        assert built.tokens_used <= budget, (case, built.tokens_used, budget)
        assert built.tokens_used == tokens.count_messages(built.messages, MODEL)
        assert built.raw_tokens >= built.tokens_used
        worst = max(worst, built.tokens_used / budget)
    print(f"150 random contexts: {refused} refused (must-send part over budget), highest use {worst:.1%} of budget")
    assert refused < 150


def test_pinned_messages_survive_any_amount_of_history() -> None:
    # Given two pinned messages among 40 turns of long history
    pinned = [
        HistoryMessage(1, "user", "Pinned fact one: the budget is 42k.", 1),
        HistoryMessage(7, "assistant", "Pinned fact two.", 5),
    ]
    history = turns(40, 300, start=100)
    b = builder(3_000)
    # When the context is built
    built = b.assemble(b.plan(system="sys", pinned=pinned, history=history, new="next?", summary=None), None)
    # Then both pinned messages are sent, right after the system prompt, while most history is not
    assert [m["content"] for m in built.messages[1:3]] == [p.content for p in pinned]
    assert len(built.history_sent) < len(history) / 4


def test_must_send_part_over_budget_is_refused_with_the_numbers() -> None:
    b = builder(300)
    pinned = [HistoryMessage(1, "user", prose(200, 1), 1)]
    with pytest.raises(ContextBudgetExceeded) as refused:
        b.plan(system="sys", pinned=pinned, history=[], new=prose(100, 2), summary=None)
    assert refused.value.code == "context_budget_exceeded" and refused.value.status == 400
    expected = tokens.count_messages(
        [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": pinned[0].content},
            {"role": "user", "content": prose(100, 2)},
        ],
        MODEL,
    )
    assert refused.value.details == {"needed_tokens": expected, "token_budget": 300}


# --- summaries ----------------------------------------------------------------------------------


def test_history_that_fits_is_sent_whole_and_nothing_is_folded() -> None:
    history = turns(5, 50)
    b = builder(16_000)
    plan = b.plan(system="sys", pinned=[], history=history, new="q", summary=None)
    built = b.assemble(plan, None)
    assert plan.fold == () and built.history_sent == tuple(m.seq for m in history)
    assert not built.summary_applied


def test_overflow_folds_the_oldest_whole_turns_down_to_the_low_water_mark() -> None:
    # Given history just over the room
    history = turns(20, 200)
    b = builder(6_000)
    plan = b.plan(system="sys", pinned=[], history=history, new="q", summary=None)
    # Then whole turns are kept within the low-water share of the turns' room, the rest folded
    kept_tokens = sum(p.tokens for p in plan.kept)
    assert plan.fold and kept_tokens <= (plan.room - plan.summary_room) * FOLD_LOW_WATER
    assert plan.fold[-1].role == "assistant" and plan.kept[0].role == "user"
    # And the next turn (one more turn of history, the new summary stored) folds nothing: headroom
    # (the summariser's max_tokens keeps a new summary under the conversation's summary limit)
    summary = SummaryState(sized(b.summary_limit - 60, 1), plan.fold[-1].seq, len(plan.fold))
    later = [m for m in history if m.seq > plan.fold[-1].seq] + turns(1, 200, start=41)
    again = b.plan(system="sys", pinned=[], history=later, new="q2", summary=summary)
    assert again.fold == ()
    built = b.assemble(again, summary)
    assert built.summary_applied and not built.summary_truncated
    print(f"fold: {len(plan.fold)} messages folded, {len(plan.kept)} kept; next turn folds {len(again.fold)}")


def test_the_summariser_sees_the_previous_summary_and_only_newly_dropped_turns() -> None:
    previous = SummaryState("The user is planning a trip to Lisbon in May.", covers_through=20, covered=18)
    fold = turns(2, 20, start=21)
    messages = summary_request(previous, fold, max_tokens=500)
    user = messages[1]["content"]
    assert previous.content in user
    assert [f"#{m.seq}]" in user for m in fold] == [True] * 4
    assert "#19]" not in user and "#20]" not in user, "already summarised turns are not sent again"
    assert messages[0]["role"] == "system" and "350 words" in messages[0]["content"]


def test_a_summary_longer_than_its_room_is_cut_and_one_without_room_is_left_out() -> None:
    # Given a stored summary near the summary limit and a new message that leaves little room
    b = builder(2_000)
    summary = SummaryState(sized(b.summary_limit - 30, 3), covers_through=9, covered=9)
    plan = b.plan(system="sys", pinned=[], history=[], new=sized(1_700, 4), summary=summary)
    built = b.assemble(plan, summary)
    # Then the summary is cut in the middle to what is left, and the budget holds
    assert built.summary_applied and built.summary_truncated and built.tokens_used <= 2_000
    # And with no room at all it is left out rather than cut to nothing
    tight = b.plan(system="sys", pinned=[], history=[], new=sized(1_960, 4), summary=summary)
    assert not b.assemble(tight, summary).summary_applied


def test_message_tokens_are_the_per_message_share_of_count_messages() -> None:
    messages = [{"role": "system", "content": "a b c"}, {"role": "user", "content": prose(50, 1)}]
    assert (
        tokens.count_messages(messages, MODEL)
        == sum(message_tokens(m["role"], m["content"], MODEL) for m in messages) + tokens.REPLY_PRIMING_TOKENS
    )


# --- the summariser call (service level, with a scripted Completions) -----------------------------


class ScriptedCompletions:
    """Stands in for Completions: records each spec, answers with `answer` or raises `error`."""

    def __init__(self, *, answer: str = "", error: Exception | None = None):
        self.answer, self.error = answer, error
        self.specs: list[Any] = []
        self.contexts: list[Any] = []

    def complete(self, ctx: Any, spec: Any, **_: Any) -> CompletionResult:
        self.contexts.append(ctx)
        self.specs.append(spec)
        if self.error is not None:
            raise self.error
        return CompletionResult(
            output=self.answer,
            model=spec.calls[0].model,
            provider="simulated",
            cached=False,
            fallback=False,
            usage=Usage(100, 0, 20),
            cost_micros=7,
            cost_saved_micros=0,
            latency_ms=1,
        )


def fold_once(completions: ScriptedCompletions, budget: int, history: list[HistoryMessage], previous: Any) -> Any:
    service = ConversationService(store=cast(Any, None), completions=cast(Any, completions), templates=cast(Any, None))
    principal = Principal(tenant_id="t", user_id="u", key_id="k", role="member")
    ctx = CallContext("req-1", principal, "conversations", Deadline(time.monotonic() + 20))
    b = builder(budget)
    plan = b.plan(system="sys", pinned=[], history=history, new="next", summary=previous)
    assert plan.fold, "the scenario must overflow"
    now = datetime(2026, 1, 1, tzinfo=UTC)
    return plan, service._fold(ctx, b, plan, previous, budget, now)


def test_a_fold_asks_the_cheap_model_with_the_previous_summary_and_counts_what_it_covers() -> None:
    previous = SummaryState("Earlier: budget approved.", covers_through=8, covered=6, updates=2)
    completions = ScriptedCompletions(answer="  Budget approved; venue chosen.  ")
    plan, fold = fold_once(completions, 2_000, turns(12, 100, start=9), previous)
    # Then one call to the summariser chain, its own ledger request id; it takes the turn's rate-limit token
    (ctx,), (spec,) = completions.contexts, completions.specs
    assert [c.model for c in spec.calls] == ["gpt-4.1-nano", "gpt-4o-mini"] and spec.cache_ttl_s == 0
    assert ctx.request_id == "req-1-summary" and ctx.template == "conversation_summary@1" and ctx.rate_limited
    assert previous.content in spec.messages[1]["content"]
    # And the new summary covers the previous one's messages plus exactly the folded ones
    assert fold.updated and fold.summary.content == "Budget approved; venue chosen."
    assert fold.summary.covers_through == plan.fold[-1].seq and fold.summary.covered == 6 + len(plan.fold)
    assert fold.summary_item["updates"] == 3 and fold.summary_item["model"] == "gpt-4.1-nano"


def test_a_caller_over_its_rate_limit_is_refused_at_the_fold_before_anything_is_paid() -> None:
    limited = ScriptedCompletions(error=RateLimited("slow down", limit="key:*", headers={"Retry-After": "3"}))
    with pytest.raises(RateLimited):
        fold_once(limited, 1_000, turns(30, 200), None)
    assert len(limited.contexts) == 1  # the summariser's attempt only; the turn goes no further


def test_a_failed_fold_stays_pending_unless_its_backlog_exceeds_the_budget() -> None:
    down = ScriptedCompletions(error=ProviderError("the provider is down"))
    # Given a small overflow: the dropped turns stay pending for a later fold
    _, pending = fold_once(down, 4_000, turns(8, 200), None)
    assert pending.error == "provider_error" and not pending.updated and pending.given_up == ()
    # Given dropped turns that alone exceed the budget: they are given up (bounded reads per turn)
    plan, given_up = fold_once(down, 1_000, turns(30, 200), None)
    assert given_up.error == "provider_error" and given_up.given_up == plan.fold
