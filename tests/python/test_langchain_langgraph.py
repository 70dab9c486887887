"""LangChain's ChatOpenAI and a LangGraph ReAct-style graph against `state-pack serve`."""

from typing import Annotated, TypedDict

from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages

CLAUSES = {
    "14.5": "Liability is capped at the fees paid in the last 12 months.",
    "9.2": "Either party may terminate with 30 days' written notice.",
}


@tool
def lookup_clause(clause: str) -> str:
    """Look up the text of a contract clause by its number, e.g. 14.5."""
    return CLAUSES.get(clause.strip(), f"No clause {clause} in this contract.")


def chat(server, **kw):
    return ChatOpenAI(
        base_url=server.url + "/v1",
        api_key=server.token,
        model=server.model,
        temperature=0,
        max_retries=0,
        timeout=300,
        **kw,
    )


def test_langchain_bind_tools_gets_parsed_tool_calls(server):
    model = chat(server, max_tokens=60).bind_tools(
        [lookup_clause], tool_choice="required", parallel_tool_calls=False
    )
    reply = model.invoke(
        [
            SystemMessage("You are a legal assistant. Use the tools."),
            HumanMessage("What does clause 14.5 say?"),
        ]
    )
    assert isinstance(reply, AIMessage)
    assert reply.tool_calls, reply
    assert reply.tool_calls[0]["name"] == "lookup_clause"
    assert isinstance(reply.tool_calls[0]["args"], dict)
    usage = reply.usage_metadata
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0


class AgentState(TypedDict):
    messages: Annotated[list, add_messages]


# Tool results the agent may see before it must answer: a small model would otherwise keep
# calling tools for ever.
TOOL_BUDGET = 2


def test_a_langgraph_react_agent_completes_and_every_model_call_is_receipted(server):
    calls = []
    model = chat(server, max_tokens=60)
    with_tools = model.bind_tools([lookup_clause], tool_choice="auto", parallel_tool_calls=False)
    answer_only = model.bind_tools([lookup_clause], tool_choice="none")

    def agent(state: AgentState):
        results = sum(isinstance(m, ToolMessage) for m in state["messages"])
        reply = (with_tools if results < TOOL_BUDGET else answer_only).invoke(state["messages"])
        calls.append(reply)
        return {"messages": [reply]}

    def tools(state: AgentState):
        out = []
        for call in state["messages"][-1].tool_calls:
            out.append(ToolMessage(lookup_clause.invoke(call["args"]), tool_call_id=call["id"]))
        return {"messages": out}

    def route(state: AgentState):
        return "tools" if state["messages"][-1].tool_calls else END

    graph = StateGraph(AgentState)
    graph.add_node("agent", agent)
    graph.add_node("tools", tools)
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", route, ["tools", END])
    graph.add_edge("tools", "agent")
    app = graph.compile()

    before = server.receipts()
    final = app.invoke(
        {
            "messages": [
                SystemMessage("You are a legal assistant. Use lookup_clause to read clauses, then answer."),
                HumanMessage("Is our liability capped? Check clause 14.5."),
            ]
        },
        {"recursion_limit": 12},
    )
    after = server.receipts()
    last = final["messages"][-1]
    assert isinstance(last, AIMessage) and not last.tool_calls and last.content
    assert len(calls) >= 2, "several steps: at least one tool call and the answer"
    assert any(isinstance(m, ToolMessage) for m in final["messages"])
    # Every model call is one signed infer in the server's log (plus a base state the first
    # time a conversation's beginning is seen); nothing else was written.
    ops = server.receipt_ops(before, after)
    assert ops.count("infer") == len(calls), ops
    assert set(ops) <= {"infer", "create"}, ops
