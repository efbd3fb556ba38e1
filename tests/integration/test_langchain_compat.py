"""LangChain's `ChatOpenAI`, pointed at the embedded runtime by `base_url` and `api_key` only:
invoke, stream, structured output and tool binding, each answered and billed by the gateway."""

from __future__ import annotations

from typing import Any

from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

from tests.integration.governance_support import ledger_rows
from tests.integration.test_openai_compat import MODEL


class Verdict(BaseModel):
    correct: bool
    score: int = Field(ge=0, le=10)
    feedback: str


@tool
def get_weather(city: str, unit: str) -> str:
    """Current weather in a city; unit is c or f."""
    return f"21 {unit} in {city}"


def test_langchain_chat_openai_works_by_changing_only_base_url_and_api_key(base_url: str, demo: Any) -> None:
    llm = ChatOpenAI(model=MODEL, base_url=base_url, api_key=demo.api_key, max_retries=0, timeout=30)

    # invoke: an answer with usage
    reply = llm.invoke("Say hello to the team.")
    assert isinstance(reply, AIMessage) and str(reply.content).startswith("[simulated]")
    assert reply.usage_metadata is not None and reply.usage_metadata["input_tokens"] > 0

    # stream: chunks that add up to a whole answer (LangChain asks for stream_options.include_usage)
    chunks = list(llm.stream("Say hello to the whole company."))
    streamed = "".join(str(c.content) for c in chunks)
    assert streamed.startswith("[simulated]") and len(chunks) > 3

    # structured output (json_schema response_format): a validated Pydantic object
    verdict = llm.with_structured_output(Verdict).invoke("Grade this SQL answer as json: SELECT * FROM t")
    assert isinstance(verdict, Verdict) and 0 <= verdict.score <= 10

    # tools: LangChain's tool_calls, then the tool's result answered in words
    with_tools = llm.bind_tools([get_weather])
    question = HumanMessage("What is the weather in Paris?")
    asked = with_tools.invoke([question])
    assert isinstance(asked, AIMessage) and [c["name"] for c in asked.tool_calls] == ["get_weather"]
    call = asked.tool_calls[0]
    assert set(call["args"]) == {"city", "unit"}
    result = ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"])
    final = with_tools.invoke([question, asked, result])
    assert isinstance(final, AIMessage) and not final.tool_calls and str(final.content)

    # and every call went through the gateway's ledger
    rows = [r for r in ledger_rows(demo.tenant_id) if r["feature"] == "chat"]
    print(f"langchain: {len(rows)} chat ledger rows, outcomes {sorted({r['outcome'] for r in rows})}")
    assert [r["outcome"] for r in rows].count("success") == 5
