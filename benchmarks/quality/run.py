"""Run the long-context quality benchmark on the embedded local model.

Every task runs in one or both modes on ONE local llama.cpp server (slow to start):

* ``rlm``: :class:`langchain_rlm.RLM` with the local model as root and sub-model;
* ``direct``: the same model prompted with the context cut to its window (``n_ctx`` minus
  :data:`DIRECT_RESERVE_TOKENS` for the instructions, the question and the answer; the cut is
  made with the server's own tokenizer).

Results go to a JSONL file, one line per (variant, mode, task), written as each task finishes;
a rerun skips what is already there, so an interrupted run resumes. ``--report`` renders the
Markdown table from the JSONL without running anything; dev and held-out rows are separate.

``--split heldout`` builds the held-out tasks (another seed, never used for tuning).
``--prompt-rev REV`` runs the RLM with the prompts module of git revision ``REV`` (its
templates and description functions, installed for this process), to compare a previous prompt
with the current one on the same tasks. ``--rlm-kwargs JSON`` passes extra keyword arguments to
``RLM(...)`` (e.g. ``'{"samples": 3}'``) to measure options without changing the runner.

Examples::

    python -m benchmarks.quality.run --help
    python -m benchmarks.quality.run --out benchmarks/quality/results.jsonl
    python -m benchmarks.quality.run --groups needle:100000 --tasks 1 --modes rlm --show-replies
    python -m benchmarks.quality.run --groups sum:100000 --split heldout --tasks 5 \
        --variant prev --prompt-rev 44f7dfc --modes rlm
    python -m benchmarks.quality.run --report --out benchmarks/quality/results.jsonl
"""

from __future__ import annotations

import argparse
import fnmatch
import functools
import inspect
import json
import os
import subprocess
import sys
import time
import traceback
import types
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import httpx
from langchain_core.messages import HumanMessage, SystemMessage

from benchmarks.quality.tasks import (
    FAMILIES,
    SPLITS,
    Task,
    build_tasks,
    context_text,
    is_correct,
    size_label,
)
from langchain_rlm import RLM, prompts
from langchain_rlm.local import MODEL_ALIAS, LocalModelServer
from langchain_rlm.local.files import DEFAULT_MODEL, MODELS
from langchain_rlm.prompts import DEFAULT_STOP_SEQUENCES

DEFAULT_GROUPS = (
    "needle:100000",
    "needle:1000000",
    "aggregation:100000",
    "multihop:100000",
    "sum:100000",
    "argmax:100000",
    "distinct:100000",
    "records:100000",
    "join:100000",
    "semantic:100000",
    "dict:100000",
)
DEFAULT_TASKS = 10
DEFAULT_OUT = Path("benchmarks/quality/results.jsonl")
DEFAULT_N_CTX = 8192
DEFAULT_MAX_ITERATIONS = 6
DEFAULT_MAX_OUTPUT_CHARS = 2000
DEFAULT_MAX_LLM_CALLS = 24
DEFAULT_TASK_TIMEOUT_S = 300.0
DEFAULT_ROOT_MAX_TOKENS = 400
DEFAULT_SUB_PROMPT_CHARS = 16_000
"""Sub-prompts must fit the local window (about 3.5 characters per token of prose)."""
DIRECT_RESERVE_TOKENS = 256
"""Room in the window for the direct prompt's instructions, the question and the answer."""
DIRECT_MAX_TOKENS = 32
TOKENIZE_PROBE_FACTOR = 6
"""Characters per token, an upper bound used to pick a probe slice before tokenizing."""

DIRECT_SYSTEM = "You answer questions about a text. Reply with the answer only."
DIRECT_USER = "Text:\n{context}\n\nQuestion: {query}"


# -- ablations ---------------------------------------------------------------------------------


def _no_grounding() -> None:
    """No draft of the code from the query's words (nor its choice of examples)."""
    from langchain_rlm import graph

    graph.ground_query = lambda query, context, description: []  # type: ignore[assignment]


def _no_error_hints() -> None:
    """No one-line explanation after an error."""
    prompts.error_hint = lambda error, description: None  # type: ignore[assignment]


def _no_operation_examples() -> None:
    """The records example of a total whatever the question asks (no choice by operation)."""
    from langchain_rlm import grounding

    original = prompts.small_examples

    def small_examples(kind: Any, sub_prompt_chars: int, query: str = "", hints: Any = ()) -> str:
        saved, grounding.question_operation = grounding.question_operation, lambda q: None
        try:
            return original(kind, sub_prompt_chars, query, hints)
        finally:
            grounding.question_operation = saved

    prompts.small_examples = small_examples  # type: ignore[assignment]


ABLATIONS = {
    "grounding": _no_grounding,
    "error-hints": _no_error_hints,
    "operation-examples": _no_operation_examples,
}
"""Mechanisms of issue 13 that ``--ablate`` turns off (monkeypatched for this process; the
answer guard is ``--rlm-kwargs '{"verify_answers": false}'``, self-consistency
``'{"samples": 3}'``)."""


# -- task execution ---------------------------------------------------------------------------


def _usage_totals(result: Any) -> tuple[int, int]:
    usage = result.usage.values()
    return sum(u.input_tokens for u in usage), sum(u.output_tokens for u in usage)


def run_rlm(task: Task, chat: Any, args: argparse.Namespace) -> dict[str, Any]:
    """One RLM run; the record carries the answer, tokens, calls and the root replies."""
    kwargs: dict[str, Any] = {
        "max_iterations": args.max_iterations,
        "max_output_chars": args.max_output_chars,
        "max_llm_calls": args.max_llm_calls,
        "timeout": args.task_timeout,
        "sub_prompt_chars": args.sub_prompt_chars,
        "stop": None if args.no_stop else DEFAULT_STOP_SEQUENCES,
        "prompt_style": args.prompt_style,  # explicit: the RLM's own default is "auto"
        **args.rlm_kwargs,  # last: --rlm-kwargs may override any of the above
    }
    rlm = RLM(chat, **kwargs)
    started = time.monotonic()
    result = rlm.invoke({"query": task.query, "context": task.context})
    seconds = time.monotonic() - started
    prompt_tokens, completion_tokens = _usage_totals(result)
    replies = [str(m.content) for m in result.messages if m.type == "ai"]
    return {
        "answer": result.answer,
        "seconds": round(seconds, 2),
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "iterations": result.iterations,
        "calls": result.total_calls,
        "sub_calls": result.sub_calls,
        "finished_reason": result.finished_reason,
        "replies": replies,
        "outputs": [step.stdout[:500] + (step.error or "")[:300] for step in result.repl_history],
    }


class DirectPrompter:
    """Direct prompting with the context cut to the server's window."""

    def __init__(self, server: LocalModelServer, chat: Any, n_ctx: int) -> None:
        self.server = server
        self.chat = chat
        self.budget_tokens = n_ctx - DIRECT_RESERVE_TOKENS
        self._http = httpx.Client(trust_env=False, timeout=120.0)
        self._cut_cache: dict[tuple[int, int], str] = {}

    def _count(self, text: str) -> int:
        response = self._http.post(
            f"{self.server.base_url}/extras/tokenize/count",
            json={"input": text, "model": MODEL_ALIAS},
        )
        response.raise_for_status()
        return int(response.json()["count"])

    def fit(self, context: str, overhead_tokens: int) -> str:
        """The longest prefix of ``context`` that fits the window with ``overhead_tokens``."""
        budget = self.budget_tokens - overhead_tokens
        key = (hash(context[: budget * TOKENIZE_PROBE_FACTOR]), budget)
        if key in self._cut_cache:
            return self._cut_cache[key]
        probe = context[: budget * TOKENIZE_PROBE_FACTOR]
        if self._count(probe) <= budget:
            cut = probe
        else:
            low, high = 0, len(probe)  # binary search on characters, ~15 tokenizer calls
            while high - low > 64:
                middle = (low + high) // 2
                if self._count(probe[:middle]) <= budget:
                    low = middle
                else:
                    high = middle
            cut = probe[:low]
        self._cut_cache[key] = cut
        return cut

    def run(self, task: Task) -> dict[str, Any]:
        overhead = self._count(DIRECT_SYSTEM + DIRECT_USER.format(context="", query=task.query))
        started = time.monotonic()
        context = self.fit(context_text(task.context), overhead)
        messages = [
            SystemMessage(DIRECT_SYSTEM),
            HumanMessage(DIRECT_USER.format(context=context, query=task.query)),
        ]
        reply = self.chat.invoke(messages, max_tokens=DIRECT_MAX_TOKENS)
        seconds = time.monotonic() - started
        usage = reply.usage_metadata or {}
        return {
            "answer": str(reply.content).strip(),
            "seconds": round(seconds, 2),
            "prompt_tokens": int(usage.get("input_tokens", 0)),
            "completion_tokens": int(usage.get("output_tokens", 0)),
            "iterations": 0,
            "calls": 1,
            "sub_calls": 0,
            "finished_reason": "direct",
            "context_chars_shown": len(context),
        }


# -- results file -------------------------------------------------------------------------


def record_key(record: dict[str, Any]) -> tuple[str, str, str]:
    return (record["variant"], record["mode"], record["task_id"])


def install_prompt_revision(revision: str) -> None:
    """Replace this process's prompt texts and functions by those of git ``revision``.

    The graph reads every prompt through ``langchain_rlm.prompts`` attributes, so the old
    module's public names (templates, ``describe_context``, ``format_description``, the
    message builders) installed there make the RLM run with the previous prompt.
    """
    if Path(revision).is_file():  # a prompts.py saved from that revision
        source = Path(revision).read_text(encoding="utf-8")
    else:
        source = subprocess.run(
            ["git", "show", f"{revision}:langchain_rlm/prompts.py"],
            check=True,
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parents[2],
        ).stdout
    old = types.ModuleType(f"prompts_at_{revision}")
    exec(compile(source, f"prompts.py@{revision}", "exec"), old.__dict__)  # our own git history
    for name, value in vars(old).items():
        if not name.startswith("__") and hasattr(prompts, name) and name not in KEEP_CURRENT:
            setattr(prompts, name, _accepting_new_keywords(value))


def _accepting_new_keywords(value: Any) -> Any:
    """An old prompt function that ignores keyword arguments it did not have yet (the
    current graph may pass e.g. ``description=`` to ``render_system_prompt``)."""
    if not callable(value) or isinstance(value, type):
        return value
    try:
        parameters = inspect.signature(value).parameters
    except (TypeError, ValueError):
        return value
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return value

    @functools.wraps(value)
    def call(*args: Any, **kwargs: Any) -> Any:
        return value(*args, **{k: v for k, v in kwargs.items() if k in parameters})

    return call


KEEP_CURRENT = frozenset({"PROMPT_STYLES", "SMALL_MODEL_PREFIXES", "prompt_style_for"})
"""Names that select a prompt rather than being one: the current ones stay."""


def load_records(path: Path) -> list[dict[str, Any]]:
    """Every record in the JSONL file (a torn last line from a crash is ignored)."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def append_record(path: Path, record: dict[str, Any]) -> None:
    """One ``write`` on an ``O_APPEND`` descriptor, so concurrent runners never interleave."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(record) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


# -- report -------------------------------------------------------------------------------


def _group_order(group: str) -> tuple[int, int]:
    family, _, size = group.partition("/")
    order = FAMILIES.index(family) if family in FAMILIES else len(FAMILIES)
    number = float(size.rstrip("kM")) * (1_000_000 if size.endswith("M") else 1000)
    return order, int(number)


def render_table(records: Iterable[dict[str, Any]], variants: Sequence[str] | None = None) -> str:
    """Markdown table: per variant, mode and group — accuracy, wall time, tokens, calls."""
    latest = {record_key(record): record for record in records}  # a rerun's record wins
    buckets: dict[tuple[str, str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for record in latest.values():
        if variants and record["variant"] not in variants:
            continue
        split = record.get("split", "dev")
        buckets[(record["variant"], record["mode"], split, record["group"])].append(record)
    lines = [
        "| variant | mode | split | family/size | correct | accuracy | mean wall s | total wall s "
        "| mean prompt tok | mean completion tok | mean calls | mean sub-calls | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key in sorted(buckets, key=lambda k: (k[0], k[1] != "rlm", k[2], _group_order(k[3]))):
        rows = buckets[key]
        n = len(rows)
        correct = sum(1 for r in rows if r["correct"])
        errors = sum(1 for r in rows if r.get("error"))
        total_s = sum(r.get("seconds", 0.0) for r in rows)

        def mean(field: str, rows: list[dict[str, Any]] = rows) -> float:
            return sum(r.get(field, 0) or 0 for r in rows) / max(1, len(rows))

        lines.append(
            f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {correct}/{n} | {correct / n:.0%} "
            f"| {total_s / n:.1f} | {total_s:.0f} | {mean('prompt_tokens'):,.0f} "
            f"| {mean('completion_tokens'):,.0f} | {mean('calls'):.1f} "
            f"| {mean('sub_calls'):.1f} | {errors} |"
        )
    return "\n".join(lines)


def render_comparison(records: Iterable[dict[str, Any]], columns: Sequence[str], split: str) -> str:
    """Markdown: one row per group, one cell per ``variant:mode`` column, side by side.

    A cell reads ``correct/n · mean calls · mean prompt+completion tokens · mean wall s``;
    only tasks that every column with data for the group ran are counted, so the columns
    compare the same tasks; a column without data for the group shows ``-``.
    """
    latest = {record_key(record): record for record in records}
    wanted = [tuple(column.split(":", 1)) for column in columns]
    by_cell: dict[tuple[str, str, str], dict[str, dict[str, Any]]] = defaultdict(dict)
    for record in latest.values():
        if record.get("split", "dev") != split:
            continue
        by_cell[(record["variant"], record["mode"], record["group"])][record["task_id"]] = record
    groups = sorted({group for (_, _, group) in by_cell}, key=_group_order)
    header = "| family/size | n | " + " | ".join(columns) + " |"
    lines = [header, "|---|---|" + "---|" * len(columns)]
    for group in groups:
        cells = [by_cell.get((variant, mode, group), {}) for variant, mode in wanted]
        present = [set(cell) for cell in cells if cell]
        common = set.intersection(*present) if present else set()
        if not common:
            continue
        texts = []
        for cell in cells:
            if not cell:
                texts.append("-")
                continue
            rows = [cell[task_id] for task_id in sorted(common)]
            correct = sum(1 for r in rows if r["correct"])
            calls = sum(r.get("calls") or 0 for r in rows) / len(rows)
            tokens = sum(
                (r.get("prompt_tokens") or 0) + (r.get("completion_tokens") or 0) for r in rows
            ) / len(rows)
            wall = sum(r.get("seconds") or 0 for r in rows) / len(rows)
            texts.append(
                f"**{correct}/{len(rows)}** · {calls:.1f} calls · {tokens:,.0f} tok · {wall:.0f} s"
            )
        lines.append(f"| {group} | {len(common)} | " + " | ".join(texts) + " |")
    return "\n".join(lines)


# -- main ---------------------------------------------------------------------------------


def parse_groups(specs: Sequence[str]) -> list[tuple[str, int]]:
    groups = []
    for spec in specs:
        family, _, size = spec.partition(":")
        groups.append((family, int(size.replace("_", ""))))
    return groups


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not JSON ({error}): {text!r}") from error
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"expected a JSON object like '{{\"samples\": 3}}', got {text!r}"
        )
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.quality.run",
        description="Long-context quality benchmark (needle, aggregation, multi-hop and the "
        "issue-13 families) of the RLM vs direct prompting on the embedded "
        "Qwen2.5-Coder-0.5B (llama.cpp).",
    )
    parser.add_argument(
        "--groups",
        nargs="+",
        default=list(DEFAULT_GROUPS),
        help="family:size pairs (default: %(default)s)",
    )
    parser.add_argument("--tasks", type=int, default=DEFAULT_TASKS, help="tasks per group")
    parser.add_argument(
        "--split",
        default="dev",
        choices=sorted(SPLITS),
        help="dev (tuned on) or heldout (another seed, never tuned on); default %(default)s",
    )
    parser.add_argument("--seed", type=int, default=None, help="override the split's seed")
    parser.add_argument("--modes", nargs="+", default=["rlm", "direct"], choices=["rlm", "direct"])
    parser.add_argument("--only", default="*", help="glob on task ids, e.g. 'needle-1M-*'")
    parser.add_argument("--variant", default="default", help="label of this configuration")
    parser.add_argument("--max-iterations", type=int, default=DEFAULT_MAX_ITERATIONS)
    parser.add_argument("--max-output-chars", type=int, default=DEFAULT_MAX_OUTPUT_CHARS)
    parser.add_argument("--max-llm-calls", type=int, default=DEFAULT_MAX_LLM_CALLS)
    parser.add_argument("--sub-prompt-chars", type=int, default=DEFAULT_SUB_PROMPT_CHARS)
    parser.add_argument("--task-timeout", type=float, default=DEFAULT_TASK_TIMEOUT_S)
    parser.add_argument("--root-max-tokens", type=int, default=DEFAULT_ROOT_MAX_TOKENS)
    parser.add_argument("--no-stop", action="store_true", help="no stop sequences")
    parser.add_argument(
        "--prompt-style",
        default="small",
        choices=["default", "small"],
        help="RLM prompt_style ('small': the worked-example prompt; default %(default)s)",
    )
    parser.add_argument(
        "--prompt-rev",
        help="git revision (or a saved prompts.py file) whose prompts the RLM uses",
    )
    parser.add_argument(
        "--rlm-kwargs",
        type=_json_object,
        default={},
        help="JSON object of extra RLM(...) keyword arguments, e.g. '{\"samples\": 3}'",
    )
    parser.add_argument(
        "--small-prompt-file",
        type=Path,
        help="experiment hook: a file replacing prompts.SYSTEM_PROMPT_SMALL for this run",
    )
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL.alias,
        choices=sorted(MODELS),
        help="the embedded model to serve (default %(default)s)",
    )
    parser.add_argument(
        "--ablate",
        nargs="+",
        default=[],
        choices=sorted(ABLATIONS),
        help="turn mechanisms off for this run (the ablation rows of RESULTS.md)",
    )
    parser.add_argument("--n-ctx", type=int, default=DEFAULT_N_CTX, help="server window")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSONL of results")
    parser.add_argument("--rerun", action="store_true", help="ignore finished tasks in --out")
    parser.add_argument("--show-replies", action="store_true", help="print the root replies")
    parser.add_argument("--report", action="store_true", help="only print the table")
    parser.add_argument(
        "--compare",
        nargs="+",
        metavar="VARIANT:MODE",
        help="with --report: side-by-side table of these columns (e.g. prev:rlm new:rlm "
        "new:direct) for --split, over the tasks every column ran",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.report:
        records = load_records(args.out)
        if args.compare:
            print(render_comparison(records, args.compare, args.split))
        else:
            print(render_table(records))
        return 0
    if args.prompt_rev:
        install_prompt_revision(args.prompt_rev)
    if args.small_prompt_file is not None:
        prompts.SYSTEM_PROMPT_SMALL = args.small_prompt_file.read_text(encoding="utf-8")
    tasks = [
        t
        for t in build_tasks(parse_groups(args.groups), args.tasks, args.seed, args.split)
        if fnmatch.fnmatch(t.task_id, args.only)
    ]
    seed = SPLITS[args.split] if args.seed is None else args.seed
    done = set() if args.rerun else {record_key(r) for r in load_records(args.out)}
    todo = [
        (mode, task)
        for mode in args.modes
        for task in tasks
        if (args.variant, mode, task.task_id) not in done
    ]
    print(f"{len(todo)} runs to do ({len(tasks)} tasks x {args.modes}), results -> {args.out}")
    if not todo:
        print(render_table(load_records(args.out), [args.variant]))
        return 0
    for name in args.ablate:
        ABLATIONS[name]()
    with LocalModelServer(n_ctx=args.n_ctx, spec=MODELS[args.model]) as server:
        print(f"server up in {server.startup_seconds:.1f} s (n_ctx {args.n_ctx})", flush=True)
        chat = server.chat_model(max_tokens=args.root_max_tokens, seed=seed)
        direct = DirectPrompter(server, server.chat_model(seed=seed), args.n_ctx)
        for mode, task in todo:
            record: dict[str, Any] = {
                "variant": args.variant,
                "mode": mode,
                "task_id": task.task_id,
                "group": f"{task.family}/{size_label(task.size)}",
                "split": task.split,
                "query": task.query,
                "truth": task.answer,
                "settings": {
                    "max_iterations": args.max_iterations,
                    "max_output_chars": args.max_output_chars,
                    "stop": not args.no_stop,
                    "prompt_style": args.prompt_style,
                    "prompt_rev": args.prompt_rev,
                    "rlm_kwargs": args.rlm_kwargs,
                    "n_ctx": args.n_ctx,
                    "model": args.model,
                    "ablate": args.ablate,
                    "seed": seed,
                    "load_average": os.getloadavg()[0],
                },
            }
            started = time.monotonic()
            try:
                record |= run_rlm(task, chat, args) if mode == "rlm" else direct.run(task)
            except Exception as error:  # a crashed task counts as wrong, and is recorded
                record |= {
                    "answer": None,
                    "seconds": round(time.monotonic() - started, 2),
                    "error": f"{type(error).__name__}: {error}",
                }
                traceback.print_exc()
            record["correct"] = is_correct(record.get("answer"), task.answer, task.tolerance)
            append_record(args.out, record)
            mark = "OK " if record["correct"] else "BAD"
            print(
                f"{mark} {mode:6} {task.task_id:22} truth={task.answer!r:10} "
                f"answer={str(record.get('answer'))[:60]!r} {record.get('seconds')} s "
                f"calls={record.get('calls')} {record.get('finished_reason', record.get('error'))}",
                flush=True,
            )
            if args.show_replies and mode == "rlm":
                for index, reply in enumerate(record.get("replies", [])):
                    print(f"----- reply {index + 1}:\n{reply}")
                    outputs = record.get("outputs", [])
                    if index < len(outputs):
                        print(f"----- output:\n{outputs[index]}")
                print("=====", flush=True)
    print(render_table(load_records(args.out), [args.variant]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
