"""Export an RLM run as JSONL, read it back, and render it as a self-contained HTML page.

One record per line, each with ``id``, ``parent_id`` and ``type``:

* ``run`` (first line, ``parent_id`` null): the query, the context *description* (type,
  sizes, a short preview: the context itself is never copied), the answer, why the run
  stopped, totals and usage per model and per depth;
* ``iteration``: one root turn (``depth``, ``iteration``, the root model's reply,
  execution seconds, number of steps);
* ``step``: one executed code block (code, whole stdout, error, seconds, FINAL answer);
* ``subcall``: one ``llm_query`` / ``recursive_lm`` call (model, prompt size and preview,
  response, error, seconds, ``usage`` tokens, cached);
* ``child_run``: the child RLM a ``recursive_lm`` sub-call started (at ``max_depth`` >= 2);
  its iterations, steps and sub-calls follow with ids prefixed by the child's id.

Timings are wall seconds as measured by the run (``seconds``; a step's seconds include
its sub-calls). Usage is the models' reported token counts (or the documented estimate).

:func:`render_html` turns the records into one HTML page with inline CSS and JS and no
network access: the run header, an iteration timeline, each iteration's code and output
(HTML-escaped), and the sub-call tree as collapsible ``<details>``. ``rlm view`` writes it.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from langchain_rlm.result import ReplStep, RLMResult, SubCall

__all__ = [
    "SCHEMA_VERSION",
    "read_trajectory",
    "render_html",
    "trajectory_records",
    "write_trajectory",
]

SCHEMA_VERSION = 1
"""Version of the record layout, in the ``run`` record."""

RUN_ID = "run"
"""Id of the top-level run record."""

PREVIEW_CHARS = 200
"""Characters of a prompt preview kept in ``child_run`` records."""

OUTPUT_PREVIEW_CHARS = 120
"""Characters of output shown in a collapsed summary line of the viewer."""

NO_OUTPUT = '<span class="muted">(no output)</span>'
"""Shown for a step that printed nothing."""

MIN_BAR_PERCENT = 2.0
"""Narrowest timeline bar, in percent of the widest, so fast iterations stay visible."""


# -- records ---------------------------------------------------------------------------
def trajectory_records(
    result: RLMResult,
    *,
    query: str | None = None,
    context_description: Any = None,
) -> list[dict[str, Any]]:
    """The run as a list of JSON-able records (see the module docstring)."""
    header: dict[str, Any] = {
        "type": "run",
        "id": RUN_ID,
        "parent_id": None,
        "schema_version": SCHEMA_VERSION,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "query": query,
        "context_description": context_description,
        "answer": result.answer,
        "finished_reason": result.finished_reason,
        "depth": result.depth,
        "iterations": result.iterations,
        "total_calls": result.total_calls,
        "root_calls": result.root_calls,
        "sub_calls": result.sub_calls,
        "total_tokens": result.total_tokens,
        "total_cost": result.total_cost,
        "seconds": round(sum(step.seconds for step in result.repl_history), 6),
        "usage": {name: usage.model_dump() for name, usage in result.usage.items()},
        "usage_by_depth": {
            str(depth): usage.model_dump() for depth, usage in result.usage_by_depth.items()
        },
        "thread_id": result.thread_id,
    }
    records = [header]
    replies = _root_replies(result)
    records.extend(_iteration_records(result, RUN_ID, replies))
    return records


def _root_replies(result: RLMResult) -> list[str]:
    """The root model's reply text of each iteration (of the latest query)."""
    texts = [_message_text(m) for m in result.messages if getattr(m, "type", "") == "ai"]
    return texts[-result.iterations :] if result.iterations else []


def _message_text(message: Any) -> str:
    content = getattr(message, "content", "")
    if isinstance(content, str):
        return content
    return "".join(p if isinstance(p, str) else str(p.get("text", "")) for p in content)


def _iteration_records(
    result: RLMResult, parent_id: str, replies: Sequence[str]
) -> list[dict[str, Any]]:
    """Iterations of one RLM (top level or child), with their steps and sub-calls."""
    by_iteration: dict[int, list[ReplStep]] = {}
    for step in result.repl_history:
        by_iteration.setdefault(step.iteration, []).append(step)
    count = max([result.iterations, *by_iteration.keys()], default=0)
    prefix = "" if parent_id == RUN_ID else f"{parent_id}/"
    records: list[dict[str, Any]] = []
    for number in range(1, count + 1):
        steps = by_iteration.get(number, [])
        iteration_id = f"{prefix}it{number}"
        records.append(
            {
                "type": "iteration",
                "id": iteration_id,
                "parent_id": parent_id,
                "depth": result.depth,
                "iteration": number,
                "reply": replies[number - 1] if number <= len(replies) else None,
                "steps": len(steps),
                "sub_calls": sum(len(step.sub_calls) for step in steps),
                "seconds": round(sum(step.seconds for step in steps), 6),
            }
        )
        for index, step in enumerate(steps, start=1):
            records.extend(_step_records(step, f"{iteration_id}.s{index}", iteration_id, result))
    return records


def _step_records(
    step: ReplStep, step_id: str, parent_id: str, owner: RLMResult
) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = [
        {
            "type": "step",
            "id": step_id,
            "parent_id": parent_id,
            "depth": owner.depth,
            "iteration": step.iteration,
            "code": step.code,
            "stdout": step.stdout,
            "error": step.error,
            "final_answer": step.final_answer,
            "seconds": step.seconds,
            "sub_calls": len(step.sub_calls),
        }
    ]
    for call in step.sub_calls:
        records.extend(_subcall_records(call, step_id, step.iteration))
    return records


def _subcall_records(call: SubCall, parent_id: str, iteration: int) -> list[dict[str, Any]]:
    record: dict[str, Any] = {
        "type": "subcall",
        "id": call.id,
        "parent_id": parent_id,
        "depth": call.depth,
        "iteration": iteration,
        "kind": call.kind,
        "model": call.model,
        "prompt_chars": call.prompt_chars,
        "prompt_preview": call.prompt_preview,
        "response": call.response,
        "error": call.error,
        "seconds": call.seconds,
        "cached": call.cached,
        "usage": {
            "input_tokens": call.input_tokens,
            "output_tokens": call.output_tokens,
            "total_tokens": call.input_tokens + call.output_tokens,
        },
        "has_child": call.child is not None,
    }
    records = [record]
    child = call.child
    if child is not None:
        child_id = f"{call.id}/run"
        records.append(
            {
                "type": "child_run",
                "id": child_id,
                "parent_id": call.id,
                "depth": child.depth,
                "query_preview": call.prompt_preview[:PREVIEW_CHARS],
                "answer": child.answer,
                "finished_reason": child.finished_reason,
                "iterations": child.iterations,
                "total_calls": child.total_calls,
                "seconds": round(sum(step.seconds for step in child.repl_history), 6),
            }
        )
        records.extend(_iteration_records(child, child_id, []))
    return records


def write_trajectory(
    result: RLMResult,
    path: str | Path,
    *,
    query: str | None = None,
    context_description: Any = None,
) -> Path:
    """Write the run's records to ``path`` as JSONL (UTF-8, one record per line)."""
    target = Path(path)
    records = trajectory_records(result, query=query, context_description=context_description)
    with target.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False, default=str))
            handle.write("\n")
    return target


def read_trajectory(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSONL trajectory; raises ValueError naming a bad line."""
    records: list[dict[str, Any]] = []
    with Path(path).open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}: line {number} is not JSON: {error.msg}") from error
            if not isinstance(record, dict) or "type" not in record or "id" not in record:
                raise ValueError(f"{path}: line {number} is not a trajectory record")
            records.append(record)
    if not records or records[0].get("type") != "run":
        raise ValueError(f"{path}: not an RLM trajectory (the first record must be the run)")
    return records


# -- HTML ------------------------------------------------------------------------------
_CSS = """
:root{--bg:#f7f7f8;--fg:#1d1d1f;--muted:#6b6b76;--card:#fff;--line:#dcdce3;--accent:#2f6fde;
--err:#c62828;--ok:#2e7d32;--code:#f1f1f4;--mono:ui-monospace,SFMono-Regular,Menlo,Consolas,
"DejaVu Sans Mono",monospace}
*{box-sizing:border-box}body{margin:0;background:var(--bg);color:var(--fg);
font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif}
header{background:var(--card);border-bottom:1px solid var(--line);padding:16px 24px}
main{padding:16px 24px;max-width:1200px}h1{font-size:18px;margin:0 0 8px}
h2{font-size:15px;margin:20px 0 8px}.muted{color:var(--muted)}
.query{font-size:16px;font-weight:600;margin:4px 0 10px;white-space:pre-wrap}
.answer{background:#eef5ff;border-left:4px solid var(--accent);padding:8px 12px;
white-space:pre-wrap;margin:8px 0}
.stats{display:flex;flex-wrap:wrap;gap:8px;margin:8px 0}
.stat{background:var(--code);border-radius:6px;padding:4px 10px}.stat b{font-weight:600}
.timeline{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:10px}
.tl-row{display:flex;align-items:center;gap:8px;margin:3px 0;cursor:pointer}
.tl-label{width:110px;flex:none;color:var(--muted);font-variant-numeric:tabular-nums}
.tl-track{flex:1;background:var(--code);border-radius:4px;height:16px}
.tl-bar{background:var(--accent);height:16px;border-radius:4px;min-width:3px}
.tl-bar.err{background:var(--err)}.tl-bar.final{background:var(--ok)}
.tl-meta{width:240px;flex:none;text-align:right;color:var(--muted);font-size:12px}
details{background:var(--card);border:1px solid var(--line);border-radius:8px;margin:8px 0}
details>summary{cursor:pointer;padding:8px 12px;list-style-position:inside}
details>.body{padding:0 12px 10px}details details{margin-left:8px}
pre{background:var(--code);border-radius:6px;padding:8px 10px;overflow:auto;margin:6px 0;
font:12.5px/1.4 var(--mono);white-space:pre-wrap;word-break:break-word}
pre.out{border-left:3px solid var(--ok)}pre.error{border-left:3px solid var(--err);color:var(--err)}
.label{font-size:12px;text-transform:uppercase;letter-spacing:.04em;color:var(--muted)}
.badge{display:inline-block;font-size:11px;border-radius:10px;padding:1px 8px;margin-left:6px;
background:var(--code);color:var(--muted)}.badge.err{background:#fdecea;color:var(--err)}
.badge.kind{background:#e8f0fe;color:var(--accent)}
.toolbar button{font:inherit;border:1px solid var(--line);background:var(--card);
border-radius:6px;padding:3px 10px;cursor:pointer;margin-right:6px}
"""

_JS = """
function setAll(open){document.querySelectorAll('details').forEach(function(d){d.open=open;});}
document.querySelectorAll('.tl-row').forEach(function(row){row.addEventListener('click',
function(){var el=document.getElementById(row.dataset.target);if(el){el.open=true;
el.scrollIntoView({behavior:'smooth',block:'start'});}});});
document.body.dataset.ready='1';
"""


def _e(value: Any) -> str:
    """HTML-escape any value (``None`` becomes an empty string)."""
    return html.escape("" if value is None else str(value), quote=True)


def _fmt_seconds(value: Any) -> str:
    try:
        return f"{float(value):.2f}s"
    except (TypeError, ValueError):
        return "-"


def _one_line(text: Any, limit: int = OUTPUT_PREVIEW_CHARS) -> str:
    flat = " ".join(str(text or "").split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def render_html(records: Sequence[Mapping[str, Any]]) -> str:
    """A self-contained HTML page for a trajectory (inline CSS/JS, no network, escaped)."""
    if not records or records[0].get("type") != "run":
        raise ValueError("render_html needs trajectory records starting with the run record")
    run = records[0]
    children: dict[str | None, list[Mapping[str, Any]]] = {}
    for record in records[1:]:
        children.setdefault(record.get("parent_id"), []).append(record)
    iterations = children.get(RUN_ID, [])
    title = f"RLM run: {_one_line(run.get('query') or '(no query)', 80)}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">",
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        _render_header(run, records),
        "<main>",
        _render_timeline(iterations, children),
        '<h2>Iterations <span class="toolbar">'
        '<button type="button" onclick="setAll(true)">Expand all</button>'
        '<button type="button" onclick="setAll(false)">Collapse all</button></span></h2>',
        '<section id="iterations">',
        *(_render_iteration(it, children, open_=True) for it in iterations),
        "</section></main>",
        f"<script>{_JS}</script></body></html>",
    ]
    return "\n".join(parts)


def _render_header(run: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> str:
    subcalls = sum(1 for r in records if r.get("type") == "subcall")
    children = sum(1 for r in records if r.get("type") == "child_run")
    cost = run.get("total_cost")
    stats = [
        ("iterations", run.get("iterations")),
        ("model calls", run.get("total_calls")),
        ("sub-calls", subcalls),
        ("child RLMs", children),
        ("tokens", f"{int(run.get('total_tokens') or 0):,}"),
        ("cost", f"${float(cost):.4f}" if cost is not None else "-"),
        ("execution", _fmt_seconds(run.get("seconds"))),
        ("finished", run.get("finished_reason")),
    ]
    stat_html = "".join(
        f'<span class="stat" data-stat="{_e(name)}">{_e(name)}: <b>{_e(value)}</b></span>'
        for name, value in stats
    )
    description = run.get("context_description")
    context_html = (
        f'<details><summary>Context (description only)</summary><div class="body">'
        f"<pre>{_e(json.dumps(description, indent=2, ensure_ascii=False, default=str))}</pre>"
        f"</div></details>"
        if description is not None
        else ""
    )
    usage = run.get("usage") or {}
    usage_rows = "".join(
        f"<tr><td>{_e(name)}</td><td>{_e(u.get('calls'))}</td><td>{_e(u.get('input_tokens'))}"
        f"</td><td>{_e(u.get('output_tokens'))}</td></tr>"
        for name, u in usage.items()
        if isinstance(u, Mapping)
    )
    usage_html = (
        '<details><summary>Usage per model</summary><div class="body"><table>'
        "<tr><th>model</th><th>calls</th><th>input</th><th>output</th></tr>"
        f"{usage_rows}</table></div></details>"
        if usage_rows
        else ""
    )
    return (
        "<header><h1>RLM trajectory</h1>"
        f'<div class="label">Query</div><div class="query" id="query">{_e(run.get("query"))}</div>'
        '<div class="label">Answer</div>'
        f'<div class="answer" id="answer">{_e(run.get("answer"))}</div>'
        f'<div class="stats" id="stats">{stat_html}</div>{context_html}{usage_html}</header>'
    )


def _render_timeline(
    iterations: Sequence[Mapping[str, Any]], children: Mapping[str | None, list[Mapping[str, Any]]]
) -> str:
    if not iterations:
        return '<h2>Timeline</h2><p class="muted">No iterations.</p>'
    longest = max((float(it.get("seconds") or 0.0) for it in iterations), default=0.0) or 1.0
    rows = []
    for it in iterations:
        steps = children.get(str(it.get("id")), [])
        state = ""
        if any(step.get("error") for step in steps):
            state = " err"
        elif any(step.get("final_answer") is not None for step in steps):
            state = " final"
        width = max(MIN_BAR_PERCENT, 100.0 * float(it.get("seconds") or 0.0) / longest)
        rows.append(
            f'<div class="tl-row" data-target="{_e(it.get("id"))}">'
            f'<span class="tl-label">iteration {_e(it.get("iteration"))}</span>'
            f'<span class="tl-track"><div class="tl-bar{state}" style="width:{width:.1f}%">'
            "</div></span>"
            f'<span class="tl-meta">{_e(it.get("steps"))} step(s) · {_e(it.get("sub_calls"))} '
            f"sub-call(s) · {_fmt_seconds(it.get('seconds'))}</span></div>"
        )
    return f'<h2>Timeline</h2><div class="timeline" id="timeline">{"".join(rows)}</div>'


def _render_iteration(
    it: Mapping[str, Any],
    children: Mapping[str | None, list[Mapping[str, Any]]],
    *,
    open_: bool,
) -> str:
    steps = children.get(str(it.get("id")), [])
    reply = it.get("reply")
    reply_html = (
        f'<details class="reply"><summary class="muted">Root model reply</summary>'
        f'<div class="body"><pre>{_e(reply)}</pre></div></details>'
        if reply
        else ""
    )
    body = "".join(_render_step(step, children) for step in steps) or (
        '<p class="muted">No code ran in this iteration.</p>'
    )
    return (
        f'<details class="iteration" id="{_e(it.get("id"))}"{" open" if open_ else ""}>'
        f"<summary><b>Iteration {_e(it.get('iteration'))}</b>"
        f'<span class="badge">depth {_e(it.get("depth"))}</span>'
        f'<span class="badge">{_e(it.get("steps"))} step(s)</span>'
        f'<span class="badge">{_e(it.get("sub_calls"))} sub-call(s)</span>'
        f'<span class="badge">{_fmt_seconds(it.get("seconds"))}</span></summary>'
        f'<div class="body">{reply_html}{body}</div></details>'
    )


def _render_step(
    step: Mapping[str, Any], children: Mapping[str | None, list[Mapping[str, Any]]]
) -> str:
    parts = [
        f'<div class="step" id="{_e(step.get("id"))}">',
        '<div class="label">Code</div>',
        f'<pre class="code">{_e(step.get("code"))}</pre>',
        '<div class="label">Output</div>',
        f'<pre class="out">{_e(step.get("stdout")) or NO_OUTPUT}</pre>',
    ]
    if step.get("error"):
        parts.append(f'<pre class="error">{_e(step.get("error"))}</pre>')
    if step.get("final_answer") is not None:
        parts.append(f'<div class="answer">FINAL: {_e(step.get("final_answer"))}</div>')
    calls = children.get(str(step.get("id")), [])
    if calls:
        parts.append(f'<div class="label">Sub-calls ({len(calls)})</div>')
        parts.extend(_render_subcall(call, children) for call in calls)
    parts.append(f'<div class="muted">{_fmt_seconds(step.get("seconds"))}</div></div>')
    return "".join(parts)


def _render_subcall(
    call: Mapping[str, Any], children: Mapping[str | None, list[Mapping[str, Any]]]
) -> str:
    usage = call.get("usage") or {}
    error_badge = '<span class="badge err">error</span>' if call.get("error") else ""
    cached = '<span class="badge">cached</span>' if call.get("cached") else ""
    summary = (
        f'<summary><span class="badge kind">{_e(call.get("kind"))}</span> '
        f'<span class="badge">{_e(call.get("model"))}</span>{error_badge}{cached}'
        f'<span class="badge">{_fmt_seconds(call.get("seconds"))}</span>'
        f'<span class="badge">{_e(usage.get("total_tokens", 0))} tok</span> '
        f'<span class="preview">{_e(_one_line(call.get("prompt_preview")))}</span></summary>'
    )
    body = [
        f'<div class="label">Prompt ({_e(call.get("prompt_chars"))} chars, preview)</div>',
        f"<pre>{_e(call.get('prompt_preview'))}</pre>",
    ]
    if call.get("error"):
        body.append(f'<pre class="error">{_e(call.get("error"))}</pre>')
    else:
        body.append(
            f'<div class="label">Response</div><pre class="out">{_e(call.get("response"))}</pre>'
        )
    for child in children.get(str(call.get("id")), []):
        if child.get("type") == "child_run":
            body.append(_render_child(child, children))
    return (
        f'<details class="subcall" id="{_e(call.get("id"))}">{summary}'
        f'<div class="body">{"".join(body)}</div></details>'
    )


def _render_child(
    child: Mapping[str, Any], children: Mapping[str | None, list[Mapping[str, Any]]]
) -> str:
    iterations: Iterable[Mapping[str, Any]] = children.get(str(child.get("id")), [])
    inner = "".join(_render_iteration(it, children, open_=False) for it in iterations)
    return (
        f'<details class="child-run" open><summary><b>Child RLM</b>'
        f'<span class="badge">depth {_e(child.get("depth"))}</span>'
        f'<span class="badge">{_e(child.get("iterations"))} iteration(s)</span>'
        f'<span class="badge">{_e(child.get("finished_reason"))}</span></summary>'
        f'<div class="body"><div class="answer">{_e(child.get("answer"))}</div>{inner}'
        "</div></details>"
    )
