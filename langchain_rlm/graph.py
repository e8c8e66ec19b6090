"""The RLM loop as a LangGraph state machine.

::

    START -> prepare -> generate_code -> execute -> check_final -> generate_code | finalize | END
                              \\____ (no code, no FINAL) ____/
                                                              finalize -> generate_code | END

* ``prepare`` opens a query: the system prompt and the context *description* on the
  first query of a thread, one more user message on a follow-up.
* ``generate_code`` makes one root-model call on the append-only conversation and parses
  the reply (code blocks, a prose FINAL, invented output dropped).
* ``execute`` runs the blocks in the sandbox session, records each step and appends the
  truncated output as the next user message. A prose FINAL counts only after the
  reply's code ran without error, and a bare variable name counts only if it is defined.
* ``check_final`` ends the run when an answer is set, sends it to ``finalize`` when a
  limit is hit, and loops otherwise.
* ``finalize`` turns ``max_iterations`` into one more ``generate_code -> execute`` turn
  that asks for the best answer (the same path as every turn: its code runs, its FINAL
  counts); when a budget is spent, or that turn gave nothing, the best answer comes from
  the REPL (:func:`best_effort_answer`).

Nodes are async; the sync face of each node runs the same coroutine on an event loop
(:func:`~langchain_rlm.concurrency.run_sync`), and ``RLM.invoke`` runs the whole graph on
one. The raw context, the models and the session reach the nodes through LangGraph's
runtime context (:class:`~langchain_rlm.runtime.RLMRuntime`), never through the state.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import uuid
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Literal, cast

from langchain_core.messages import AIMessage, AnyMessage, HumanMessage, SystemMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool
from langgraph._internal._runnable import RunnableCallable
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime

from langchain_rlm import prompts
from langchain_rlm.answers import is_supported, parse_structured, schema_json
from langchain_rlm.concurrency import run_sync
from langchain_rlm.grounding import ground_query
from langchain_rlm.journal import journal_key
from langchain_rlm.models import ModelCallError, acall_model, model_id
from langchain_rlm.parsing import is_variable_reference, parse_reply
from langchain_rlm.recursion import SubCallRunner
from langchain_rlm.runtime import RLMClosedError, RLMRuntime
from langchain_rlm.sandbox.base import CodeOutput, PythonExecutor, SandboxClosedError
from langchain_rlm.state import ReplStepRecord, RLMState
from langchain_rlm.usage import BudgetExceeded

__all__ = ["RLMLimitError", "RLMRootCallError", "best_effort_answer", "build_rlm_graph"]

logger = logging.getLogger("langchain_rlm.graph")

FALLBACK_VARIABLES = ("final_answer", "answer", "result", "final")
"""REPL variables taken as the best answer when a run ends without FINAL."""

FALLBACK_OUTPUT_CHARS = 2_000
"""Characters of the last REPL output used as a last-resort answer."""

ROOT_OVERFLOW = "context_overflow"
"""``finished_reason`` when the root conversation outgrew the root model's window (a
provider's 400 ``context_length_exceeded`` after the first turn): the run ends with the
best answer the REPL holds instead of crashing."""
STALLED = "stalled"
"""The root model sent the cell it had already run a third time in a row."""
FINALIZE_REASONS = {
    "max_iterations": "You have used all your turns.",
    STALLED: "You sent the same code three times.",
}
"""Reasons that get one finalizing turn (the others stop at once), with what it says."""

RESTART_NOTE = "The REPL was restarted: every variable you defined is gone."

NodeFunction = Callable[
    [RLMState, RunnableConfig, Runtime[Any]], Coroutine[Any, Any, dict[str, Any]]
]


class RLMRootCallError(RuntimeError):
    """A root-model call failed for good; the run cannot continue."""


class RLMLimitError(RuntimeError):
    """A limit or budget was hit and the RLM runs in strict mode."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# -- nodes -----------------------------------------------------------------------------
async def prepare(state: RLMState, config: RunnableConfig, runtime: Runtime[Any]) -> dict[str, Any]:
    """Open a query: first messages, reset of the per-query fields."""
    rt = _bind(runtime, state, config, iteration=0)
    session = rt.local.session
    if session is not None and rt.local.context_changed:  # a follow-up with a new context
        await rt.in_session_thread(session.set_variable, "context", rt.context)
    rt.local.context_changed = False
    rt.local.outputs.clear()
    if session is None and not rt.run.cancelled.is_set():  # boot the worker meanwhile
        rt.start_session(SubCallRunner(rt, _child_graph).host_functions())
    description = prompts.describe_context(rt.context, rt.settings.preview_chars)
    hints = ground_query(state["query"], rt.context, description)
    messages: list[AnyMessage] = []
    if not state.get("messages"):
        messages.append(SystemMessage(_system_prompt(rt, description, state["query"], hints)))
    first = prompts.first_user_message(state["query"], description, hints)
    if rt.config.output_schema is not None:
        first += prompts.output_schema_instructions(schema_json(rt.config.output_schema))
    messages.append(HumanMessage(first))
    return {
        "context_description": description,
        "messages": messages,
        "iteration": 0,
        "pending_code": [],
        "pending_final": None,
        "answer": None,
        "finished_reason": None,
        "finalizing": False,
        "verify_asked": False,
        "output_failures": 0,
        "output": None,
        "turn": state.get("turn", 0) + 1,
        "turn_start": len(state.get("repl_history", [])),
        "usage": rt.meter.snapshot(),
    }


async def generate_code(
    state: RLMState, config: RunnableConfig, runtime: Runtime[Any]
) -> dict[str, Any]:
    """One root-model call; parse its reply."""
    iteration = state.get("iteration", 0) + (0 if state.get("finalizing") else 1)
    rt = _bind(runtime, state, config, iteration=iteration)
    try:
        reply = await _call_root(rt, state.get("messages", []), config, iteration)
    except BudgetExceeded as error:
        logger.info("budget spent at depth %d: %s", rt.depth, error)
        return {"finished_reason": error.reason, "pending_code": [], "pending_final": None}
    except ModelCallError as error:
        if error.overflow and iteration > 1:  # the conversation outgrew the root's window
            return {"finished_reason": ROOT_OVERFLOW, "pending_code": [], "pending_final": None}
        raise RLMRootCallError(f"the root model failed at depth {rt.depth}: {error}") from error
    parsed = parse_reply(reply.text)
    for code in parsed.code_blocks:
        await rt.emit({"type": "code", "code": code}, config)
    update: dict[str, Any] = {
        "messages": [reply],
        "iteration": iteration,
        "pending_code": parsed.code_blocks,
        "pending_final": (
            {"kind": parsed.final.kind, "value": parsed.final.value} if parsed.final else None
        ),
        "usage": rt.meter.snapshot(),
    }
    if not parsed.code_blocks and parsed.final is None and not state.get("finalizing"):
        nudge = prompts.no_code_nudge(iteration, rt.settings.max_iterations)
        update["messages"] = [reply, HumanMessage(nudge)]
    return update


async def execute(state: RLMState, config: RunnableConfig, runtime: Runtime[Any]) -> dict[str, Any]:
    """Run the pending blocks, then honour a prose FINAL if the code ran cleanly."""
    rt = _bind(runtime, state, config, iteration=state.get("iteration", 0))
    iteration = rt.local.iteration
    try:
        session = await _session(rt, state)
    except RLMClosedError:
        return {"finished_reason": "cancelled", "pending_code": [], "pending_final": None}
    steps: list[ReplStepRecord] = []
    outputs: list[str] = []
    notes: list[str] = []
    answer: str | None = None
    computed = False
    previous = _previous_step(state)
    for code in state.get("pending_code", []):
        if previous is not None and code.strip() == previous["code"].strip():  # sent again
            notes.append(prompts.repeated_code_note(previous["stdout"]))
            continue
        try:
            step, output = await _run_block(rt, code, iteration, config)
        except RLMClosedError:  # the RLM was closed while the cell ran
            return {
                "repl_history": steps,
                "finished_reason": "cancelled",
                "pending_code": [],
                "pending_final": None,
            }
        steps.append(step)
        outputs.append(_render_output(output))
        hint = prompts.error_hint(output.error, state.get("context_description") or {})
        if hint:
            notes.append(hint)
        if output.restarted:
            notes.append(RESTART_NOTE)
        if step["final_answer"] is not None:
            answer, computed = step["final_answer"], True  # FINAL called by the code
            break
    clean = all(step["error"] is None for step in steps)
    if answer is None and state.get("pending_final"):
        final = state["pending_final"] or {}
        history = [*state.get("repl_history", []), *steps]
        answer, note, computed = await _resolve_prose_final(rt, session, final, clean, history)
        if note:
            notes.append(note)
    update: dict[str, Any] = {
        "repl_history": steps,
        "pending_code": [],
        "pending_final": None,
        "usage": rt.meter.snapshot(),
    }
    if answer is None and not steps and _stalled(previous, iteration, state):
        update["finished_reason"] = STALLED  # the same cell a third time: finalize
    if answer is not None:
        verdict, note = _check_answer(rt, state, answer, computed=computed, steps=steps)
        update |= verdict
        if note is None:
            update.setdefault("finished_reason", state.get("finished_reason") or "final")
            await rt.emit({"type": "answer", "answer": update["answer"]}, config)
            return update
        notes.append(note)
    message = prompts.repl_output_message(
        outputs,
        limit=rt.settings.max_output_chars,
        iteration=iteration,
        max_iterations=rt.settings.max_iterations,
    )
    update["messages"] = [HumanMessage("\n".join([message, *notes]).strip())]
    return update


async def check_final(
    state: RLMState, config: RunnableConfig, runtime: Runtime[Any]
) -> dict[str, Any]:
    """Decide how the run goes on; record why it stops."""
    rt = _bind(runtime, state, config, iteration=state.get("iteration", 0))
    if state.get("answer") is not None:
        return {}
    if state.get("finalizing"):  # the extra turn gave no FINAL: take what it gave
        answer = await _finalizing_answer(rt, state)
        await _emit_answer(rt, state, answer, config)
        return {"answer": answer}
    reason = state.get("finished_reason")
    if reason is None and rt.meter.exceeded is not None:
        reason = rt.meter.exceeded.reason
    if reason is None:
        try:
            rt.meter.check()
        except BudgetExceeded as error:
            reason = error.reason
    if reason is None and rt.run.cancelled.is_set():
        reason = "cancelled"
    if reason is None and state.get("iteration", 0) >= rt.settings.max_iterations:
        reason = "max_iterations"
    return {"finished_reason": reason} if reason else {}


async def finalize(
    state: RLMState, config: RunnableConfig, runtime: Runtime[Any]
) -> dict[str, Any]:
    """After a limit: one more turn asking for the best answer, or the REPL's best answer."""
    rt = _bind(runtime, state, config, iteration=state.get("iteration", 0))
    reason = state.get("finished_reason") or "max_iterations"
    if rt.settings.strict:
        raise RLMLimitError(reason, f"the RLM stopped without an answer: {reason}")
    logger.info("depth %d stops without FINAL: %s", rt.depth, reason)
    if reason in FINALIZE_REASONS and rt.meter.exceeded is None:
        request = prompts.finalize_prompt(state["query"], FINALIZE_REASONS[reason])
        return {
            "finalizing": True,
            "finalize_start": len(state.get("repl_history", [])),
            "messages": [HumanMessage(request)],
        }
    answer = await best_effort_answer(rt, state)
    await _emit_answer(rt, state, answer, config)
    return {"answer": answer, "usage": rt.meter.snapshot()}


# -- routing ---------------------------------------------------------------------------
def route_after_generate(state: RLMState) -> Literal["execute", "check_final"]:
    if state.get("pending_code") or state.get("pending_final"):
        return "execute"
    return "check_final"


def route_after_check(state: RLMState) -> Literal["generate_code", "finalize", "__end__"]:
    if state.get("answer") is not None:
        return "__end__"  # END, spelled as the Literal the graph drawing reads
    if state.get("finished_reason"):
        return "finalize"
    return "generate_code"


def route_after_finalize(state: RLMState) -> Literal["generate_code", "__end__"]:
    return "__end__" if state.get("answer") is not None else "generate_code"


def build_rlm_graph(
    *,
    checkpointer: BaseCheckpointSaver[Any] | bool | None = None,
    name: str = "RLM",
    context_schema: type[Any] = RLMRuntime,
) -> CompiledStateGraph[RLMState, Any, Any, Any]:
    """Build and compile the RLM graph.

    The graph expects an :class:`~langchain_rlm.runtime.RLMRuntime` as its runtime
    context (``await graph.ainvoke({"query": ...}, context=runtime)``, with a runtime
    from :func:`~langchain_rlm.runtime.new_runtime`); :class:`~langchain_rlm.RLM` builds
    one for you. Child RLMs are compiled by this same factory.

    Args:
        checkpointer: a LangGraph checkpointer (``InMemorySaver``, ``SqliteSaver``...) to
            persist the state per step; ``False`` never inherits a parent graph's;
            ``None`` inherits it when the graph runs inside another graph.
        name: the run name of the graph in traces.
        context_schema: the runtime context's type: :class:`RLMRuntime`, or a JSON-able
            provider with ``rlm_runtime(state)`` (see :func:`_rlm_runtime`) for servers.
    """
    builder: StateGraph[RLMState, Any, RLMState, RLMState] = StateGraph(
        RLMState, context_schema=context_schema
    )
    for node in (prepare, generate_code, execute, check_final, finalize):
        builder.add_node(node.__name__, _node(node))
    builder.add_edge(START, "prepare")
    builder.add_edge("prepare", "generate_code")
    builder.add_conditional_edges("generate_code", route_after_generate)
    builder.add_edge("execute", "check_final")
    builder.add_conditional_edges("check_final", route_after_check)
    builder.add_conditional_edges("finalize", route_after_finalize)
    return builder.compile(checkpointer=checkpointer, name=name)


def _node(function: NodeFunction) -> RunnableCallable:
    """A node with a native async implementation and a sync face running the same code."""

    @functools.wraps(function)
    def sync(state: RLMState, config: RunnableConfig, runtime: Runtime[Any]) -> dict[str, Any]:
        return run_sync(function(state, config, runtime))

    return RunnableCallable(sync, function, name=function.__name__, trace=False)


@functools.cache
def _child_graph() -> CompiledStateGraph[RLMState, Any, Any, Any]:
    """Child RLMs: the same graph, never checkpointed on their own."""
    return build_rlm_graph(checkpointer=False)


# -- helpers ---------------------------------------------------------------------------
def _rlm_runtime(runtime: Runtime[Any], state: RLMState) -> RLMRuntime:
    """The run's RLMRuntime: the runtime context itself, or one a provider builds.

    A provider is any runtime context with a method ``rlm_runtime(state) -> RLMRuntime``
    that returns the same runtime for every node of one run (the LangGraph Server entry
    point, :mod:`langchain_rlm.server`, passes a JSON-able one and builds the models there).
    """
    context = runtime.context
    if isinstance(context, RLMRuntime):
        return context
    build = getattr(context, "rlm_runtime", None)
    if build is None:
        raise TypeError(
            "the RLM graph needs an RLMRuntime as its runtime context: "
            "graph.ainvoke({'query': ...}, context=new_runtime(...)), or use RLM(...).invoke"
        )
    rt: RLMRuntime = build(state)
    return rt


def _bind(
    runtime: Runtime[Any], state: RLMState, config: RunnableConfig, *, iteration: int
) -> RLMRuntime:
    """The run's runtime, bound to the running node: loop, stream writer, iteration."""
    rt = _rlm_runtime(runtime, state)
    rt.run.loop = asyncio.get_running_loop()
    if rt.depth == 0:
        rt.run.writer = runtime.stream_writer
        rt.run.journal.config = _checkpoint_config(runtime)
    rt.local.iteration = iteration
    _annotate_run(config, iteration=iteration)
    return rt


def _checkpoint_config(runtime: Runtime[Any]) -> RunnableConfig | None:
    """The checkpoint the running step started from (journal entries attach to it)."""
    info = getattr(runtime, "execution_info", None)
    if info is None or not getattr(info, "checkpoint_id", None):
        return None
    task_ns = str(getattr(info, "checkpoint_ns", "") or "")
    graph_ns = task_ns.rsplit("|", 1)[0] if "|" in task_ns else ""
    return {
        "configurable": {
            "thread_id": info.thread_id,
            "checkpoint_ns": graph_ns,
            "checkpoint_id": info.checkpoint_id,
        }
    }


def _annotate_run(config: RunnableConfig, **metadata: Any) -> None:
    """Add metadata (the iteration) to the run LangGraph opened for this node.

    LangGraph starts a node's run before the node can know its iteration, so the node
    writes it into its own run object, found in the tracers' ``run_map`` the way
    LangGraph itself finds it. Tracers send metadata with the run's end (LangSmith
    patches it), so the trace shows ``depth`` and ``iteration`` on every run.
    """
    manager = config.get("callbacks")
    run_id = getattr(manager, "parent_run_id", None)
    if run_id is None:
        return
    for handler in getattr(manager, "handlers", ()):
        run = getattr(handler, "run_map", {}).get(str(run_id))
        if run is not None and isinstance(getattr(run, "extra", None), dict):
            run.extra["metadata"] = {**run.extra.get("metadata", {}), **metadata}


def _system_prompt(
    rt: RLMRuntime, description: dict[str, Any], query: str, hints: Sequence[str] = ()
) -> str:
    runner = SubCallRunner(rt)
    return prompts.render_system_prompt(
        context_type=str(description.get("type")),
        max_iterations=rt.settings.max_iterations,
        max_output_chars=rt.settings.max_output_chars,
        sub_prompt_chars=runner.max_prompt_chars(),
        can_recurse=rt.depth + 1 < rt.settings.max_depth,
        modules=sorted(_allowed_modules(rt)),
        tools={name: _describable(tool) for name, tool in rt.config.tools.items()},
        style=rt.settings.prompt_style,
        description=description,
        query=query,
        hints=hints,
    )


def _describable(tool: BaseTool) -> Callable[..., Any]:
    """The function behind a tool (its signature reads best), else the tool itself."""
    function = getattr(tool, "func", None)
    return function if callable(function) else cast(Callable[..., Any], tool)


def _allowed_modules(rt: RLMRuntime) -> tuple[str, ...]:
    """What ``import`` may load, as the sandbox describes it."""
    modules = getattr(rt.config.sandbox, "allowed_modules", None)
    if modules is None:  # a user sandbox that does not say: the default policy's list
        from langchain_rlm.sandbox.policy import ALLOWED_MODULES

        modules = ALLOWED_MODULES
    return tuple(modules)


def _with_metadata(config: RunnableConfig, rt: RLMRuntime, iteration: int) -> RunnableConfig:
    metadata = {**config.get("metadata", {}), "depth": rt.depth, "iteration": iteration}
    return {**config, "metadata": metadata}


async def _session(rt: RLMRuntime, state: RLMState) -> PythonExecutor:
    """The REPL session, started on first use; a fresh one replays the recorded cells."""
    session = rt.local.session
    if session is None:
        session = await rt.open_session(SubCallRunner(rt, _child_graph).host_functions())
    history = state.get("repl_history", [])
    if not rt.local.replayed and history:
        await _replay(rt, history)
    rt.local.replayed = True
    return session


async def _replay(rt: RLMRuntime, history: list[ReplStepRecord]) -> None:
    """Rebuild REPL variables after a restart or resume, serving recorded sub-call results."""
    for step in history:
        with rt.local.lock:
            rt.local.replay_queue = [dict(record) for record in step["sub_calls"]]  # type: ignore[misc]
        try:
            await rt.run_cell(step["code"])
        finally:
            with rt.local.lock:
                rt.local.replay_queue = None
                rt.local.cell_records = []


async def _run_block(
    rt: RLMRuntime, code: str, iteration: int, config: RunnableConfig
) -> tuple[ReplStepRecord, CodeOutput]:
    with rt.local.lock:
        rt.local.cell_records = []
    output = await rt.run_cell(code)
    with rt.local.lock:
        records, rt.local.cell_records = rt.local.cell_records, []
    host_errors = output.extra.get("host_errors")
    if host_errors:
        logger.error("host function errors at depth %d: %s", rt.depth, host_errors)
    step_id = str(uuid.uuid4())
    rt.local.outputs[step_id] = output.stdout
    step = ReplStepRecord(
        id=step_id,
        iteration=iteration,
        code=code,
        stdout=prompts.truncate_output(output.stdout, rt.settings.max_output_chars),
        stdout_chars=len(output.stdout),
        stdout_sha256=hashlib.sha256(output.stdout.encode("utf-8", "replace")).hexdigest(),
        error=output.error,
        seconds=round(output.seconds, 6),
        sub_calls=records,
        final_answer=output.final_answer,
    )
    await rt.emit(
        {
            "type": "output",
            "stdout": output.stdout,
            "error": output.error,
            "seconds": step["seconds"],
            "sub_calls": len(records),
        },
        config,
    )
    return step, output


def _stalled(previous: ReplStepRecord | None, iteration: int, state: RLMState) -> bool:
    """This turn and the one before only resent ``previous`` (nothing new ran since)."""
    return (
        previous is not None
        and bool(state.get("pending_code"))
        and previous["iteration"] < iteration - 1
        and not state.get("finalizing")
    )


def _previous_step(state: RLMState) -> ReplStepRecord | None:
    """The previous turn's last cell in this query, if it ran cleanly (to catch a model
    that sends the same cell again instead of answering)."""
    turn = state.get("repl_history", [])[state.get("turn_start", 0) :]
    if not turn:
        return None
    last = turn[-1]
    if last["iteration"] >= state.get("iteration", 0) or last["error"] is not None:
        return None
    return last


def _render_output(output: CodeOutput) -> str:
    text = output.stdout
    if output.error:
        text = f"{text}\n{output.error}" if text else output.error
    return text


async def _resolve_prose_final(
    rt: RLMRuntime,
    session: PythonExecutor,
    final: dict[str, str],
    clean: bool,
    history: list[ReplStepRecord],
) -> tuple[str | None, str | None, bool]:
    """``(answer, note, computed)`` for a prose FINAL / FINAL_VAR: the answer it stands for
    (``computed`` when it is a variable's value), or a note saying why it does not.

    ``FINAL_VAR(name)``, and ``FINAL(name)`` with a name the model's code uses (or a
    conventional result name, see :func:`~langchain_rlm.parsing.is_variable_reference`),
    mean the variable's value; when no such variable exists the model is told, and the
    name is never the answer.
    """
    kind, value = final.get("kind", "FINAL"), final.get("value", "")
    if not clean:
        return None, prompts.final_after_error(kind), False
    name = value.strip().strip("\"'") if kind == "FINAL_VAR" else value.strip()
    code = "\n".join(step["code"] for step in history)
    if kind == "FINAL" and not is_variable_reference(name, code):
        return value, None, False
    resolved = await _get_variable(rt, session, name)
    if resolved is not None:
        return resolved, None, True
    names = await _variable_names(rt, session)
    return None, prompts.final_of_undefined(kind, name, names), False


def _check_answer(
    rt: RLMRuntime,
    state: RLMState,
    answer: str,
    *,
    computed: bool,
    steps: list[ReplStepRecord],
) -> tuple[dict[str, Any], str | None]:
    """``(state update, note)``: a note means the answer is refused and the model is told.

    See :mod:`langchain_rlm.answers`: a short literal answer found in no output gets one
    "verify it" turn; with ``output_schema`` the answer must validate (a refused answer
    gets up to ``output_retries`` turns, then it ends the run as ``invalid_output``).
    """
    finalizing = bool(state.get("finalizing"))
    checked = rt.settings.verify_answers and not (
        computed or finalizing or state.get("verify_asked")
    )
    if checked and not is_supported(answer, _evidence(rt, state, steps)):
        return {"verify_asked": True}, prompts.verify_answer_note(answer)
    schema = rt.config.output_schema
    if schema is None:
        return {"answer": answer}, None
    value, error = parse_structured(answer, schema)
    if error is None:
        return {"answer": json.dumps(value, ensure_ascii=False), "output": value}, None
    failures = state.get("output_failures", 0) + 1
    if failures <= rt.settings.output_retries and not finalizing:
        note = prompts.output_schema_note(error, schema_json(schema))
        return {"output_failures": failures}, note
    if rt.settings.strict:
        raise RLMLimitError("invalid_output", f"the answer does not match output_schema: {error}")
    logger.warning("depth %d: the answer does not match output_schema: %s", rt.depth, error)
    update = {"answer": answer, "output": None, "output_failures": failures}
    return update | {"finished_reason": "invalid_output"}, None


def _evidence(rt: RLMRuntime, state: RLMState, steps: list[ReplStepRecord]) -> list[str]:
    """What the current query produced: outputs, errors and sub-call responses."""
    turn = [*state.get("repl_history", [])[state.get("turn_start", 0) :], *steps]
    texts = [_full_stdout(rt, step) for step in turn]
    texts += [step["error"] or "" for step in turn]
    texts += [call["response"] or "" for step in turn for call in step["sub_calls"]]
    return texts


async def _call_root(
    rt: RLMRuntime, messages: list[AnyMessage], config: RunnableConfig, iteration: int
) -> AIMessage:
    """One budgeted, retried root-model call with this depth's trace metadata.

    Journaled like every model call of the tree (a reply that arrived before a kill, at
    any depth, is replayed on resume instead of bought again).
    """
    model = model_id(rt.config.root_model)
    key = ""
    if rt.run.journal.active:  # the key hashes the whole conversation: only when needed
        conversation = "\n".join(f"{m.type}:{m.text}" for m in messages)
        key = journal_key("root", model, str(rt.depth), conversation)
    entry = rt.run.journal.take(key)
    if entry is not None:
        return AIMessage(content=str(entry.get("value") or ""))
    stub: dict[str, Any] = {"model": model, "depth": rt.depth, "root": True}
    call = await rt.run.journal.start(key, stub)
    reply = await acall_model(
        rt.config.root_model,
        messages,
        _with_metadata(config, rt, iteration),
        meter=rt.meter,
        depth=rt.depth,
        root=True,
        max_retries=rt.settings.max_retries,
        backoff=rt.settings.retry_backoff,
        stop=rt.settings.stop,
    )
    usage: dict[str, Any] = dict(reply.usage_metadata or {})
    stub |= {
        "input_tokens": usage.get("input_tokens", 0),
        "output_tokens": usage.get("output_tokens", 0),
    }
    await rt.run.journal.add(key, reply.text, stub, call)
    return reply


async def _finalizing_answer(rt: RLMRuntime, state: RLMState) -> str:
    """The answer of a finalize turn without an accepted FINAL.

    Code in the reply ran: its last output is the answer. A reply in prose is the answer
    itself. Otherwise (an empty reply, a rejected FINAL, no model call possible) the REPL's
    best answer.
    """
    steps = state.get("repl_history", [])[state.get("finalize_start", 0) :]
    messages = state.get("messages", [])
    reply = messages[-2] if len(messages) >= 2 and steps else (messages[-1] if messages else None)
    if steps:
        outputs = [_full_stdout(rt, step).strip() for step in steps]
        output = next((text for text in reversed(outputs) if text), "")
        if output:
            return output
    elif isinstance(reply, AIMessage) and not parse_reply(reply.text).final:
        text = reply.text.strip()
        if text:
            return text
    return await best_effort_answer(rt, state)


async def best_effort_answer(rt: RLMRuntime, state: RLMState) -> str:
    """The best answer without another model call (documented in the README).

    The first non-empty REPL variable of :data:`FALLBACK_VARIABLES`, else the end of the
    current query's last non-empty output, else ``""``.
    """
    session = rt.local.session
    if session is None and state.get("repl_history") and not rt.run.cancelled.is_set():
        with contextlib.suppress(RLMClosedError):  # a resumed run: rebuild the variables
            session = await _session(rt, state)
    if session is not None:
        for name in FALLBACK_VARIABLES:
            value = await _get_variable(rt, session, name)
            if value:
                return str(value)
    for step in reversed(state.get("repl_history", [])[state.get("turn_start", 0) :]):
        output = _full_stdout(rt, step).strip()
        if output:
            return output[-FALLBACK_OUTPUT_CHARS:]
    return ""


async def _get_variable(rt: RLMRuntime, session: PythonExecutor, name: str) -> str | None:
    """``str()`` of a REPL variable, ``None`` when undefined or the session is closed."""
    try:
        value: str | None = await rt.in_session_thread(session.get_variable, name)
    except (SandboxClosedError, RuntimeError):  # closed meanwhile (a cancelled run)
        return None
    return value


async def _variable_names(rt: RLMRuntime, session: PythonExecutor) -> list[str]:
    try:
        names: list[str] = await rt.in_session_thread(session.variable_names)
    except (SandboxClosedError, RuntimeError):
        return []
    return names


def _full_stdout(rt: RLMRuntime, step: ReplStepRecord) -> str:
    """A step's whole output while this process holds it, else what the model saw."""
    return rt.local.outputs.get(step.get("id", ""), step["stdout"])


async def _emit_answer(
    rt: RLMRuntime, state: RLMState, answer: str, config: RunnableConfig
) -> None:
    await rt.emit(
        {"type": "answer", "answer": answer, "finished_reason": state.get("finished_reason")},
        config,
    )
