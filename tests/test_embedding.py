"""The ways the README offers to embed rolora in an agent app, each used the way such an app uses it, on the real
parts (MiniLM + FAISS + BM25 over the sample contracts, SmolLM2 in-process):

- ``Retriever.as_langchain()`` as the retriever of an LCEL RAG chain;
- ``Agent.as_tool()`` called by another LangGraph agent through ``ToolNode``;
- ``rolora.build_graph(config)`` as a subgraph node of another LangGraph app, with the parent's checkpointer.
"""

from __future__ import annotations

import gc
import re
import threading
from pathlib import Path
from typing import Any, TypedDict

import pytest

from conftest import EXAMPLES, TEST_HOME, make_config

ON_TOPIC = "What is the effective date of the Mutual Non-Disclosure Agreement?"
OFF_TOPIC = "What is the boiling point of liquid nitrogen in degrees Kelvin?"  # refused by route, no model call
CITATION = re.compile(r"(\w+)\[(\d+):(\d+)\]")


def _config() -> Any:
    cfg = make_config(TEST_HOME, contracts={"corpus": [str(EXAMPLES)], "exclude": ["qa*.jsonl"]})
    agent = {"max_iterations": 1, "use_critic": False, "max_queries": 1, "k": 3, "checkpointer": "memory"}
    return cfg.model_copy(update={"agent": cfg.agent.model_copy(update=agent)})


def _agent_threads() -> int:
    return sum(t.name == "rolora-agent" and t.is_alive() for t in threading.enumerate())


def test_retriever_in_an_lcel_rag_chain(examples_retriever: Any) -> None:
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_core.runnables import RunnableLambda, RunnableParallel, RunnablePassthrough

    def cite(docs: list[Any]) -> str:
        return "\n".join(f"[{d.metadata['citation']}] {d.page_content}" for d in docs)

    prompt = ChatPromptTemplate.from_messages([("system", "Answer from:\n{context}"), ("human", "{question}")])
    chain = (
        RunnableParallel(
            context=examples_retriever.as_langchain(k=3) | RunnableLambda(cite), question=RunnablePassthrough()
        )
        | prompt
    )
    messages = chain.invoke("Which state's law governs the loan agreement?").to_messages()
    assert messages[1].content == "Which state's law governs the loan agreement?"
    cited = CITATION.findall(messages[0].content)
    assert len(cited) == 3
    for doc_id, start, end in cited:  # every cited span is exact source text and sits in the prompt
        span = examples_retriever.document_text(doc_id)[int(start) : int(end)]
        assert span and span in messages[0].content
    assert any(doc_id == "loan_agreement" for doc_id, _, _ in cited)


@pytest.mark.slow
def test_agent_as_a_tool_of_another_langgraph_agent(examples_retriever: Any, inprocess_backend: Any) -> None:
    """Another agent's model decides to call the tool (scripted here: that model is not what is tested); LangGraph's
    ToolNode runs it, sync and async, and the tool's reply carries the rolora answer with exact citations."""
    import asyncio

    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
    from langgraph.graph import END, START, MessagesState, StateGraph
    from langgraph.prebuilt import ToolNode

    from rolora.agents import Agent

    with Agent.from_config(_config(), backend=inprocess_backend) as agent:
        tool = agent.as_tool("contracts")
        assert tool.name == "ask_contracts" and set(tool.args) == {"question"}

        def caller(state: MessagesState) -> dict[str, Any]:
            question = state["messages"][-1].content
            call = {"name": tool.name, "args": {"question": question}, "id": "call-1", "type": "tool_call"}
            return {"messages": [AIMessage(content="", tool_calls=[call])]}

        g = StateGraph(MessagesState)
        g.add_node("caller", caller)
        g.add_node("tools", ToolNode([tool]))
        g.add_edge(START, "caller")
        g.add_edge("caller", "tools")
        g.add_edge("tools", END)
        app = g.compile()

        off = app.invoke({"messages": [HumanMessage(OFF_TOPIC)]})["messages"][-1]
        assert isinstance(off, ToolMessage) and off.tool_call_id == "call-1"
        direct = agent.ask(OFF_TOPIC, "contracts")
        assert direct.not_found
        assert off.content == f"{direct.answer}\nCitations: none"

        on = asyncio.run(app.ainvoke({"messages": [HumanMessage(ON_TOPIC)]}))["messages"][-1]
        assert isinstance(on, ToolMessage) and "\nCitations: " in on.content
        for doc_id, start, end in CITATION.findall(on.content):
            assert examples_retriever.document_text(doc_id)[int(start) : int(end)]  # a real span of a real doc


@pytest.mark.slow
def test_build_graph_as_a_subgraph_compiles_once_and_closes(
    examples_retriever: Any, inprocess_backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.graph import END, START, StateGraph

    import rolora
    from rolora.agents import Answer
    from rolora.agents import agent as agent_module

    compiles: list[int] = []
    real_compile = agent_module.compile_graph

    def counting(*args: Any, **kwargs: Any) -> Any:
        compiles.append(1)
        return real_compile(*args, **kwargs)

    monkeypatch.setattr(agent_module, "compile_graph", counting)
    before = _agent_threads()
    graph = rolora.build_graph(_config(), backend=inprocess_backend)
    assert len(compiles) == 1  # compiled once, not once for a throwaway agent and again for the caller

    class Parent(TypedDict, total=False):
        question: str
        domain: str | None
        final: dict[str, Any] | None
        report: str

    def report(state: Parent) -> dict[str, Any]:
        final = Answer.model_validate(state["final"])
        return {"report": f"{final.answer} ({len(final.citations)} citations)"}

    parent = StateGraph(Parent)
    parent.add_node("contracts_expert", graph)  # the rolora graph as a subgraph node
    parent.add_node("report", report)
    parent.add_edge(START, "contracts_expert")
    parent.add_edge("contracts_expert", "report")
    parent.add_edge("report", END)
    app = parent.compile(checkpointer=InMemorySaver())

    run = {"configurable": {"thread_id": "parent-1"}}
    out = asyncio.run(app.ainvoke({"question": ON_TOPIC, "domain": "contracts"}, run))  # its nodes are async
    answer = Answer.model_validate(out["final"])
    assert answer.question == ON_TOPIC and answer.passages
    assert answer.passages[0].doc_id == "nda_mutual"
    assert out["report"].endswith(f"({len(answer.citations)} citations)")
    assert app.get_state(run).values["report"] == out["report"]  # the parent's checkpointer holds the run

    off = asyncio.run(
        app.ainvoke({"question": OFF_TOPIC, "domain": "contracts"}, {"configurable": {"thread_id": "parent-2"}})
    )
    assert Answer.model_validate(off["final"]).not_found

    assert _agent_threads() == before + 1
    del app, parent, graph
    gc.collect()
    assert _agent_threads() == before  # the graph's agent is closed once the graph is gone


def test_readme_embedding_snippet_names_what_exists() -> None:
    """The README's embedding snippet calls these names; keep them true."""
    import rolora
    from rolora.agents import Agent
    from rolora.retrieval import Retriever

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    for name in ("agent.as_tool(", "rolora.build_graph(config)", "r.as_langchain(", "agent.subgraph("):
        assert name in readme, name
    assert callable(rolora.build_graph) and callable(Agent.as_tool) and callable(Agent.subgraph)
    assert callable(Retriever.as_langchain)
