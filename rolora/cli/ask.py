"""``rolora ask``: run the agent graph on one question, streaming each step (node, adapter) and the answer."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import typer
from rich.markup import escape

from rolora.cli.common import ConfigOpt, console, load

__all__ = ["ask_command"]


def _step_line(step: dict[str, Any]) -> str:
    node = step.get("node", "?")
    parts = [f"[bold cyan]{node:<9}[/]"]
    if step.get("role"):
        parts.append(f"{step['role']} on [magenta]{escape(str(step.get('adapter')))}[/] ({step.get('backend')})")
        parts.append(f"{step.get('tokens_in', 0)}→{step.get('tokens_out', 0)} tok")
    d = step.get("detail", {})
    if node == "route":
        parts.append(f"domain {d.get('domain')} (confidence {d.get('confidence')})")
        if d.get("base_model_roles"):
            parts.append("base model for: " + ", ".join(d["base_model_roles"]))
    elif node == "retrieve" and "queries" in d:
        parts.append(f"{len(d['queries'])} queries → {len(d.get('passages', []))} passages")
        if d.get("scope") == "resolved":
            names = ", ".join(f"{r['doc_id']} ({r['confidence']:.2f})" for r in d.get("resolution", []))
            parts.append(f"in {escape(names)}")
        elif d.get("scope") == "explicit":
            parts.append(f"in {escape(', '.join(d.get('doc_ids', [])))} (--doc)")
    elif node == "analyse" and not step.get("role"):  # decided without a model call
        if "typed_reader" in d:
            parts.append(f"typed reader: the {d['typed_reader']['kind']} its nearest sentence states (no model call)")
        elif "yes_no" in d:
            parts.append(f"yes/no verdict {d['yes_no']['verdict']} (no model call)")
        elif d.get("evidence_gate", {}).get("refused"):
            parts.append("refused: no sentence of the passages is near the question (no model call)")
    elif node == "critique" and "verdict" in d:
        parts.append(f"verdict {d['verdict']}, next {d.get('next')}")
    parts.append(f"[dim]{step.get('latency_s', 0):.2f}s[/]")
    return "  ".join(parts)


def ask_command(
    question: Annotated[str | None, typer.Argument(help="the question (none with --resume)")] = None,
    domain: Annotated[str | None, typer.Option("--domain", "-d", help="domain (default: routed)")] = None,
    thread_id: Annotated[
        str | None, typer.Option("--thread", help="checkpoint thread id (to resume: --resume)")
    ] = None,
    resume: Annotated[bool, typer.Option(help="continue the run --thread from its last checkpoint")] = False,
    doc: Annotated[list[str] | None, typer.Option("--doc", help="retrieve from this doc_id only (repeatable)")] = None,
    base: Annotated[bool, typer.Option(help="every role on the base model (no adapters)")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="print the answer as JSON (no step lines)")] = False,
    config: ConfigOpt = None,
) -> None:
    """Answer a question from the domain's corpus, with citations to exact source spans."""
    from rolora.hardware import spin_openmp_between_ops

    spin_openmp_between_ops()  # before torch loads: its threads keep spinning between a decoding step's products
    from rolora.agents import ADAPTERS_BASE, Agent, Answer
    from rolora.errors import UserError

    if resume and not thread_id:
        raise UserError("--resume needs --thread ID (the thread id printed by the run to continue)")
    if resume and question:
        raise UserError("--resume continues the thread's own question; give no QUESTION with it")
    if not resume and not question:
        raise UserError("give a QUESTION, or --resume --thread ID to continue a paused or interrupted run")
    cfg = load(config)
    agent = Agent.from_config(cfg, adapters=ADAPTERS_BASE if base else None)

    async def run() -> Answer | None:
        answer: Answer | None = None
        async for ev in agent.astream(None if resume else question, domain, thread_id=thread_id, doc_ids=doc):
            kind = ev["type"]
            if kind == "step" and not json_out:
                console.print(_step_line(ev["step"]))
            elif kind == "answer":
                answer = Answer.model_validate(ev["answer"])
            elif kind == "interrupt":
                console.print(
                    f"paused before {', '.join(ev['next'])}: continue with --resume --thread {ev['thread_id']}"
                )
        return answer

    try:
        answer = asyncio.run(run())
    finally:
        agent.close()
    if answer is None:
        return
    if json_out:
        typer.echo(json.dumps(answer.model_dump(exclude={"passages"}), indent=2, ensure_ascii=False))
        return
    console.print()
    console.print(f"[bold]{escape(answer.answer)}[/]")
    for i, c in enumerate(answer.citations, start=1):
        console.print(f"  [{i}] [green]{escape(c.citation)}[/] “{escape(c.quote)}”")
    if answer.not_found and answer.critique:
        console.print(f"[dim]{escape('; '.join(answer.critique[-2:]))}[/]")
    used = ", ".join(f"{r}={a}" for r, a in answer.adapters.items())
    console.print(
        f"[dim]thread {answer.thread_id} · {answer.iterations} round(s) · verdict {answer.verdict} · "
        f"{answer.latency_s:.1f}s · {used}[/]"
    )
