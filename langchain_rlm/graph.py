"""The RLM loop as a LangGraph state machine.

::

    START -> prepare -> generate_code -> execute -> check_final -> generate_code | finalize | END
                              \\____ (no code, no FINAL) ____/

* ``prepare`` opens a query: the system prompt and the context *description* on the
  first query of a thread, one more user message on a follow-up.
* ``generate_code`` makes one root-model call on the append-only conversation and parses
  the reply (code blocks, a prose FINAL, invented output dropped).
* ``execute`` runs the blocks in the sandbox session, records each step and appends the
  truncated output as the next user message. A prose FINAL counts only after the
  reply's code ran without error.
* ``check_final`` ends the run when an answer is set, sends it to ``finalize`` when a
  limit is hit, and loops otherwise.
* ``finalize`` asks the root model for its best answer (after ``max_iterations``), or,
  when a budget is spent, takes the best answer the REPL already holds.

The raw context, the models and the session reach the nodes through LangGraph's runtime
context (:class:`~langchain_rlm.state.RLMRuntime`), never through the state.
"""

from __future__ import annotations

from typing import Any, Literal

from langchain_core.messages import AIMessage, AnyMessage, HumanMessage, SystemMessage
from langchain_core.runnables import RunnableConfig, ensure_config
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime

from langchain_rlm import prompts
from langchain_rlm.models import ModelCallError, call_model
from langchain_rlm.parsing import parse_reply
from langchain_rlm.recursion import SubCallRunner
from langchain_rlm.sandbox.base import CodeOutput, PythonExecutor
from langchain_rlm.sandbox.policy import ALLOWED_MODULES
from langchain_rlm.state import ReplStepRecord, RLMRuntime, RLMState
from langchain_rlm.usage import BudgetExceeded

__all__ = ["RLMLimitError", "RLMRootCallError", "build_rlm_graph"]

FALLBACK_VARIABLES = ("final_answer", "answer", "result", "final")
"""REPL variables taken as the best answer when a budget ends a run without FINAL."""

FALLBACK_OUTPUT_CHARS = 2_000
"""Characters of the last REPL output used as a last-resort answer."""

ROOT_OVERFLOW = "context_overflow"
"""``finished_reason`` when the root conversation outgrew the root model's window (a
provider's 400 ``context_length_exceeded`` after the first turn): the run ends with the
best answer the REPL holds instead of crashing."""


class RLMRootCallError(RuntimeError):
    """A root-model call failed for good; the run cannot continue."""


class RLMLimitError(RuntimeError):
    """A limit or budget was hit and the RLM runs in strict mode."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# -- nodes -----------------------------------------------------------------------------
def prepare(
    state: RLMState, config: RunnableConfig, runtime: Runtime[RLMRuntime]
) -> dict[str, Any]:
    """Open a query: first messages, reset of the per-query fields."""
    rt = _rlm_runtime(runtime, state)
    _annotate_run(config, iteration=0)
    description = prompts.describe_context(rt.context, rt.settings.preview_chars)
    messages: list[AnyMessage] = []
    if not state.get("messages"):
        messages.append(SystemMessage(_system_prompt(rt, description)))
    messages.append(HumanMessage(prompts.first_user_message(state["query"], description)))
    return {
        "context_description": description,
        "messages": messages,
        "iteration": 0,
        "pending_code": [],
        "pending_final": None,
        "answer": None,
        "finished_reason": None,
        "turn": state.get("turn", 0) + 1,
        "turn_start": len(state.get("repl_history", [])),
        "usage": rt.meter.snapshot(),
    }


def generate_code(
    state: RLMState, config: RunnableConfig, runtime: Runtime[RLMRuntime]
) -> dict[str, Any]:
    """One root-model call; parse its reply."""
    rt = _bind(runtime, state)
    iteration = state.get("iteration", 0) + 1
    rt.iteration = iteration
    _annotate_run(config, iteration=iteration)
    try:
        reply = _call_root(rt, state.get("messages", []), config, iteration)
    except BudgetExceeded as error:
        return {"finished_reason": error.reason, "pending_code": [], "pending_final": None}
    except ModelCallError as error:
        if error.overflow and iteration > 1:  # the conversation outgrew the root's window
            return {"finished_reason": ROOT_OVERFLOW, "pending_code": [], "pending_final": None}
        raise RLMRootCallError(f"the root model failed at depth {rt.depth}: {error}") from error
    text = reply.text if isinstance(reply.text, str) else str(reply.content)
    parsed = parse_reply(text)
    for code in parsed.code_blocks:
        rt.emit({"type": "code", "iteration": iteration, "code": code})
    update: dict[str, Any] = {
        "messages": [reply],
        "iteration": iteration,
        "pending_code": parsed.code_blocks,
        "pending_final": (
            {"kind": parsed.final.kind, "value": parsed.final.value} if parsed.final else None
        ),
        "usage": rt.meter.snapshot(),
    }
    if not parsed.code_blocks and parsed.final is None:
        update["messages"] = [
            reply,
            HumanMessage(prompts.no_code_nudge(iteration, rt.settings.max_iterations)),
        ]
    return update


def execute(
    state: RLMState, config: RunnableConfig, runtime: Runtime[RLMRuntime]
) -> dict[str, Any]:
    """Run the pending blocks, then honour a prose FINAL if the code ran cleanly."""
    rt = _bind(runtime, state)
    rt.iteration = iteration = state.get("iteration", 0)
    _annotate_run(config, iteration=iteration)
    session = _session(rt, state)
    steps: list[ReplStepRecord] = []
    outputs: list[str] = []
    notes: list[str] = []
    answer: str | None = None
    for code in state.get("pending_code", []):
        step, output = _run_block(rt, session, code, iteration)
        steps.append(step)
        outputs.append(_render_output(output))
        if output.restarted:
            notes.append("The REPL was restarted: every variable you defined is gone.")
        if step["final_answer"] is not None:
            answer = step["final_answer"]
            break
    clean = all(step["error"] is None for step in steps)
    if answer is None and state.get("pending_final"):
        answer, note = _resolve_prose_final(session, state["pending_final"] or {}, clean)
        if note:
            notes.append(note)
    update: dict[str, Any] = {
        "repl_history": steps,
        "pending_code": [],
        "pending_final": None,
        "usage": rt.meter.snapshot(),
    }
    if answer is not None:
        update["answer"] = answer
        update["finished_reason"] = "final"
        rt.emit({"type": "answer", "iteration": iteration, "answer": answer})
        return update
    message = prompts.repl_output_message(
        outputs,
        limit=rt.settings.max_output_chars,
        iteration=iteration,
        max_iterations=rt.settings.max_iterations,
    )
    update["messages"] = [HumanMessage("\n".join([message, *notes]).strip())]
    return update


def check_final(
    state: RLMState, config: RunnableConfig, runtime: Runtime[RLMRuntime]
) -> dict[str, Any]:
    """Decide how the run goes on; record why it stops."""
    rt = _rlm_runtime(runtime, state)
    _annotate_run(config, iteration=state.get("iteration", 0))
    if state.get("answer") is not None:
        return {}
    reason = state.get("finished_reason")
    if reason is None and rt.meter.exceeded is not None:
        reason = rt.meter.exceeded.reason
    if reason is None:
        try:
            rt.meter.check()
        except BudgetExceeded as error:
            reason = error.reason
    if reason is None and rt.cancelled.is_set():
        reason = "cancelled"
    if reason is None and state.get("iteration", 0) >= rt.settings.max_iterations:
        reason = "max_iterations"
    return {"finished_reason": reason} if reason else {}


def finalize(
    state: RLMState, config: RunnableConfig, runtime: Runtime[RLMRuntime]
) -> dict[str, Any]:
    """Best answer after a limit: one more root call after max_iterations, else the REPL's."""
    rt = _bind(runtime, state)
    _annotate_run(config, iteration=state.get("iteration", 0))
    reason = state.get("finished_reason") or "max_iterations"
    if rt.settings.strict:
        raise RLMLimitError(reason, f"the RLM stopped without an answer: {reason}")
    update: dict[str, Any] = {"finished_reason": reason}
    if reason == "max_iterations":
        answer, messages, steps = _ask_for_final(state, config, rt)
        update["messages"] = messages
        update["repl_history"] = steps
    else:
        answer = _best_effort_answer(rt, state)
    update["answer"] = answer
    update["usage"] = rt.meter.snapshot()
    rt.emit(
        {
            "type": "answer",
            "iteration": state.get("iteration", 0),
            "answer": answer,
            "finished_reason": reason,
        }
    )
    return update


# -- routing ---------------------------------------------------------------------------
def route_after_generate(state: RLMState) -> Literal["execute", "check_final"]:
    _annotate_run(ensure_config(), iteration=state.get("iteration", 0))
    if state.get("pending_code") or state.get("pending_final"):
        return "execute"
    return "check_final"


def route_after_check(state: RLMState) -> Literal["generate_code", "finalize", "__end__"]:
    _annotate_run(ensure_config(), iteration=state.get("iteration", 0))
    if state.get("answer") is not None:
        return "__end__"  # END, spelled as the Literal the graph drawing reads
    if state.get("finished_reason"):
        return "finalize"
    return "generate_code"


def build_rlm_graph(
    *,
    checkpointer: BaseCheckpointSaver[Any] | bool | None = None,
    name: str = "RLM",
    context_schema: type[Any] = RLMRuntime,
) -> CompiledStateGraph[RLMState, RLMRuntime, Any, Any]:
    """Build and compile the RLM graph.

    The graph expects an :class:`~langchain_rlm.state.RLMRuntime` as its runtime context
    (``graph.invoke({"query": ...}, context=runtime)``); :class:`~langchain_rlm.RLM`
    builds one for you. Child RLMs are compiled by this same factory.

    Args:
        checkpointer: a LangGraph checkpointer (``InMemorySaver``, ``SqliteSaver``...) to
            persist the state per step; ``False`` disables inheriting the parent's.
        name: the run name of the graph in traces.
        context_schema: the runtime context's type: :class:`RLMRuntime`, or a JSON-able
            provider with ``rlm_runtime(state)`` (see :func:`_rlm_runtime`) for servers.
    """
    builder: StateGraph[RLMState, RLMRuntime, RLMState, RLMState] = StateGraph(
        RLMState, context_schema=context_schema
    )
    builder.add_node("prepare", prepare)  # type: ignore[call-overload]
    builder.add_node("generate_code", generate_code)  # type: ignore[call-overload]
    builder.add_node("execute", execute)  # type: ignore[call-overload]
    builder.add_node("check_final", check_final)  # type: ignore[call-overload]
    builder.add_node("finalize", finalize)  # type: ignore[call-overload]
    builder.add_edge(START, "prepare")
    builder.add_edge("prepare", "generate_code")
    builder.add_conditional_edges("generate_code", route_after_generate)
    builder.add_edge("execute", "check_final")
    builder.add_conditional_edges("check_final", route_after_check)
    builder.add_edge("finalize", END)
    return builder.compile(checkpointer=checkpointer, name=name)


def _child_graph_factory() -> CompiledStateGraph[RLMState, RLMRuntime, Any, Any]:
    """Child RLMs: same graph, never checkpointed on their own."""
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
            "graph.invoke({'query': ...}, context=RLMRuntime(...)), or use RLM(...).invoke"
        )
    rt: RLMRuntime = build(state)
    return rt


def _bind(runtime: Runtime[RLMRuntime], state: RLMState) -> RLMRuntime:
    """The run's runtime, with the top level's stream writer attached (children inherit it)."""
    rt = _rlm_runtime(runtime, state)
    if rt.depth == 0:
        rt.writer = runtime.stream_writer
    return rt


def _annotate_run(config: RunnableConfig, **metadata: Any) -> None:
    """Add metadata (the iteration) to the run LangGraph opened for this node or route.

    ``config`` is the node's own config (its callbacks' parent is the node's run); a
    route passes ``ensure_config()``, since LangGraph hands routes the node's config.

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


def _system_prompt(rt: RLMRuntime, description: dict[str, Any]) -> str:
    runner = SubCallRunner(rt)
    return prompts.render_system_prompt(
        context_type=str(description.get("type")),
        max_iterations=rt.settings.max_iterations,
        max_output_chars=rt.settings.max_output_chars,
        sub_prompt_chars=runner.max_prompt_chars(),
        can_recurse=rt.depth + 1 < rt.settings.max_depth,
        modules=sorted(ALLOWED_MODULES),
        tools=rt.tools,
        style=rt.settings.prompt_style,
    )


def _with_metadata(config: RunnableConfig, rt: RLMRuntime, iteration: int) -> RunnableConfig:
    metadata = {**config.get("metadata", {}), "depth": rt.depth, "iteration": iteration}
    return {**config, "metadata": metadata}


def _session(rt: RLMRuntime, state: RLMState) -> PythonExecutor:
    """The REPL session, started on first use; a fresh one replays the recorded cells."""
    if rt.graph_factory is None:
        rt.graph_factory = _child_graph_factory
    if rt.session is None:
        rt.session = rt.sandbox.start(
            rt.context, SubCallRunner(rt).host_functions(), rt.settings.sandbox_limits
        )
        rt.replayed = False
    history = state.get("repl_history", [])
    if not rt.replayed and history:
        _replay(rt, rt.session, history)
    rt.replayed = True
    return rt.session


def _replay(rt: RLMRuntime, session: PythonExecutor, history: list[ReplStepRecord]) -> None:
    """Rebuild REPL variables after a restart or resume, serving recorded sub-call results."""
    for step in history:
        rt.replay_queue = [dict(record) for record in step["sub_calls"]]  # type: ignore[misc]
        try:
            session(step["code"])
        finally:
            rt.replay_queue = None
            rt.cell_records = []


def _run_block(
    rt: RLMRuntime, session: PythonExecutor, code: str, iteration: int
) -> tuple[ReplStepRecord, CodeOutput]:
    with rt.lock:
        rt.cell_records = []
    output = session(code)
    with rt.lock:
        records, rt.cell_records = rt.cell_records, []
    step = ReplStepRecord(
        iteration=iteration,
        code=code,
        stdout=output.stdout,
        error=output.error,
        seconds=round(output.seconds, 6),
        sub_calls=records,
        final_answer=output.final_answer,
    )
    rt.emit(
        {
            "type": "output",
            "iteration": iteration,
            "stdout": output.stdout,
            "error": output.error,
            "seconds": step["seconds"],
            "sub_calls": len(records),
        }
    )
    return step, output


def _render_output(output: CodeOutput) -> str:
    text = output.stdout
    if output.error:
        text = f"{text}\n{output.error}" if text else output.error
    return text


def _resolve_prose_final(
    session: PythonExecutor, final: dict[str, str], clean: bool
) -> tuple[str | None, str | None]:
    """The answer a prose FINAL / FINAL_VAR stands for, or a note saying why it does not."""
    kind, value = final.get("kind", "FINAL"), final.get("value", "")
    if not clean:
        return None, (
            f"Your {kind}(...) was not accepted because your code raised an error. "
            "Fix the code first; answer only from output you have seen."
        )
    if kind == "FINAL_VAR":
        name = value.strip().strip("\"'")
        resolved = session.get_variable(name)
        if resolved is None:
            names = ", ".join(session.variable_names()) or "none"
            return None, (
                f"FINAL_VAR({name!r}) failed: there is no variable named {name!r}. "
                f"Defined variables: {names}. Use FINAL(answer) to answer with text."
            )
        return resolved, None
    if value and value.isidentifier():
        resolved = session.get_variable(value)
        if resolved is not None:
            return resolved, None
    return value, None


def _call_root(
    rt: RLMRuntime, messages: list[AnyMessage], config: RunnableConfig, iteration: int
) -> AIMessage:
    """One budgeted, retried root-model call with this depth's trace metadata."""
    return call_model(
        rt.root_model,
        messages,
        _with_metadata(config, rt, iteration),
        meter=rt.meter,
        depth=rt.depth,
        root=True,
        max_retries=rt.settings.max_retries,
        backoff=rt.settings.retry_backoff,
        stop=rt.settings.stop,
    )


def _ask_for_final(
    state: RLMState, config: RunnableConfig, rt: RLMRuntime
) -> tuple[str, list[AnyMessage], list[ReplStepRecord]]:
    """One root call asking for the best answer from the conversation so far.

    Small models often answer this with code instead of ``FINAL``: the code then runs
    (recorded like any step), and its ``FINAL`` or its output is the answer.
    """
    iteration = state.get("iteration", 0)
    request = HumanMessage(prompts.finalize_prompt(state["query"], "You have used all your turns."))
    try:
        reply = _call_root(rt, [*state.get("messages", []), request], config, iteration)
    except (BudgetExceeded, ModelCallError):
        return _best_effort_answer(rt, state), [request], []
    text = reply.text if isinstance(reply.text, str) else str(reply.content)
    parsed = parse_reply(text)
    steps: list[ReplStepRecord] = []
    answer: str | None = None
    if parsed.code_blocks and rt.session is not None:
        for code in parsed.code_blocks:
            step, _ = _run_block(rt, rt.session, code, iteration)
            steps.append(step)
            answer = step["final_answer"]
            if answer is not None:
                break
    if answer is None and parsed.final is not None:
        answer = parsed.final.value
        if rt.session is not None:  # a variable name means its value, as in execute
            final = {"kind": parsed.final.kind, "value": parsed.final.value}
            answer = _resolve_prose_final(rt.session, final, clean=True)[0] or answer
    if answer is None and steps:
        answer = next(
            (st["stdout"].strip() for st in reversed(steps) if st["stdout"].strip()), None
        )
    if answer is None:
        answer = text.strip()
    return answer, [request, reply], steps


def _best_effort_answer(rt: RLMRuntime, state: RLMState) -> str:
    """The best answer without another model call: a conventional variable, else output."""
    session = rt.session
    if session is not None:
        for name in FALLBACK_VARIABLES:
            value = session.get_variable(name)
            if value:
                return value
    for step in reversed(state.get("repl_history", [])[state.get("turn_start", 0) :]):
        if step["stdout"].strip():
            return step["stdout"].strip()[-FALLBACK_OUTPUT_CHARS:]
    return ""
