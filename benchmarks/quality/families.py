"""Task families the small-model prompt was not written for (issue 13).

Every family builds ONE context per ``(seed, family, size)`` and asks ``count`` different
questions about it (so direct prompting reuses llama.cpp's prompt cache, as for the older
families). Ground truth is computed from the generated data, never from the text.

* ``sum``: a CSV-like order log (``order_id,date,customer,city,product,quantity,amount``);
  totals and averages of a column over the rows matching one or two conditions.
* ``argmax``: JSON lines of web events; which page / user occurs most (or least) often under
  a condition. Only questions with a unique winner are asked.
* ``distinct``: access-log lines (timestamp, ``[LEVEL]``, service, method, path, IP, status,
  user); how many distinct IPs / users / paths match a condition.
* ``records``: a list of ``{"id", "text", "metadata"}`` records (the shape ``llama_index_rlm``
  hands over); filters on metadata: counts, an average, an arg-max id.
* ``join``: two delimited tables in one text (orders, then customers after a blank line); the
  question names an order and asks for an attribute of its customer.
* ``semantic``: a list of customer messages; ten of them describe a problem in words that share
  no key word with the question (``llm_query_batched`` over chunks is the way); the question
  asks which product had that problem.
* ``paraphrase``: staff records (``;``-delimited) asked about in wording the prompts and the
  query grounding were never tuned on (added after them; held-out only).
* ``dict``: a dict of named documents (prose with a few facts each); questions look up a fact
  in a named document, or ask which document states a fact.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from benchmarks.quality.tasks import (
    CITIES,
    PROJECT_NAMES,
    Task,
    _group_rng,
    filler_text,
    size_label,
)

__all__ = ["NEW_BUILDERS", "NEW_FAMILIES"]

AVERAGE_TOLERANCE = 0.01
"""Averages are asked "rounded to two decimals"; an answer within this of the truth counts."""

FIRST_NAMES = (
    "Anna", "Bruno", "Carla", "Dmitri", "Elena", "Farid", "Greta", "Hugo", "Ines", "Jakob",
    "Kira", "Lars", "Maya", "Nils", "Olga", "Pablo", "Rosa", "Stefan", "Tara", "Viktor",
)  # fmt: skip
LAST_NAMES = (
    "Berg", "Costa", "Dahl", "Engel", "Fischer", "Gomez", "Holm", "Ivanova", "Jensen", "Keller",
    "Lopez", "Moreau", "Novak", "Olsen", "Petit", "Quinn", "Rossi", "Silva", "Toth", "Weber",
)  # fmt: skip
PRODUCTS = (
    "desk lamp", "kettle", "backpack", "headphones", "coffee grinder", "office chair",
    "blender", "monitor stand", "rain jacket", "water bottle", "keyboard", "toaster",
    "yoga mat", "bike helmet", "phone case", "table fan", "notebook set", "air purifier",
)  # fmt: skip
PAGES = (
    "/home", "/pricing", "/docs", "/blog", "/signup", "/login", "/cart", "/checkout",
    "/support", "/careers", "/about", "/search",
)  # fmt: skip
EVENTS = ("view", "click", "purchase", "share")
EVENT_WEIGHTS = (60, 25, 8, 7)
ENDPOINTS = (
    "/api/orders", "/api/users", "/api/items", "/api/cart", "/api/search", "/api/login",
    "/api/reports", "/api/invoices",
)  # fmt: skip
METHODS = ("GET", "GET", "GET", "POST", "PUT", "DELETE")
STATUSES = ((200, 70), (201, 6), (304, 6), (404, 8), (500, 5), (403, 5))
LOG_LEVELS = {200: "INFO", 201: "INFO", 304: "DEBUG", 404: "WARN", 403: "WARN", 500: "ERROR"}
SERVICES = ("gateway", "billing", "catalog", "accounts")
CATEGORIES = ("finance", "health", "travel", "science", "sports", "culture")
TAGS = ("draft", "reviewed", "archived", "urgent", "public", "internal")
TIERS = ("bronze", "silver", "gold", "platinum")
PROBLEMS = (
    (
        "arrived damaged",
        "When I opened the box the glass front of my {product} was in pieces.",
    ),
    ("is too loud", "My {product} makes such a racket that the neighbours knocked on the wall."),
    (
        "has a battery that runs out quickly",
        "The {product} needs recharging before lunch, every single day.",
    ),
    (
        "was delivered very late",
        "I ordered the {product} in spring and the courier rang my bell when summer was over.",
    ),
    (
        "was charged twice",
        "My bank statement shows the {product} payment taken two times on the same day.",
    ),
    (
        "came with parts missing",
        "The {product} box held only three of the four screws shown in the manual.",
    ),
    (
        "smells bad",
        "Since unpacking the {product} my whole flat has the odour of burnt rubber.",
    ),
    (
        "stopped working after a week",
        "Seven days from unboxing, the {product} went dark and never woke up again.",
    ),
    (
        "is the wrong colour",
        "I picked navy blue for the {product} on the website, yet a bright orange one came.",
    ),
    (
        "is hard to assemble",
        "Putting the {product} together took me a whole weekend and two borrowed tools.",
    ),
)
"""(what the question asks about, how one message says it without the question's words)."""
BENIGN_MESSAGES = (
    "The {product} does its job and looks nice on the shelf.",
    "Quick question: does the {product} come with a spare cable?",
    "Thanks for the fast reply about my {product}, all sorted now.",
    "I bought a second {product} as a present for my sister.",
    "Could you tell me whether the {product} is sold in other shops too?",
    "The {product} is exactly as described and the price was fair.",
    "I would like to change the delivery address for my {product} order.",
    "Is there a newer model of the {product} planned for next year?",
    "My {product} has been in daily use for months and I am happy with it.",
    "Please send me the invoice for the {product} again, I lost the email.",
)
DOC_TOPICS = (
    "harbour-renovation", "school-library", "river-cleanup", "night-bus-service",
    "solar-roofs", "market-hall", "bike-lanes", "museum-extension", "community-garden",
    "flood-defence", "youth-centre", "street-lighting", "public-wifi", "tree-planting",
    "swimming-pool", "recycling-depot", "town-archive", "concert-stage", "sports-field",
    "winter-shelter", "ferry-pier", "old-mill", "tram-depot", "skate-park",
)  # fmt: skip

Builder = Callable[[int, int, int], Iterator[Task]]


def _name(rng: random.Random) -> str:
    return f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"


def _people(rng: random.Random, count: int) -> list[str]:
    names = [f"{first} {last}" for first in FIRST_NAMES for last in LAST_NAMES]
    return rng.sample(names, count)


def _shuffled(rng: random.Random, items: Any) -> list[Any]:
    return rng.sample(list(items), len(items))


def _task(
    family: str, size: int, index: int, query: str, context: Any, answer: Any, **meta: Any
) -> Task:
    tolerance = meta.pop("tolerance", 0.0)
    return Task(
        task_id=f"{family}-{size_label(size)}-{index:02d}",
        family=family,
        size=size,
        query=query,
        context=context,
        answer=str(answer),
        meta=meta,
        tolerance=tolerance,
    )


def _delimited_table(
    header: str, delimiter: str, size: int, make_row: Callable[[int], dict[str, Any]]
) -> tuple[list[dict[str, Any]], str]:
    """Rows from ``make_row(number)`` until the table text reaches ``size`` characters:
    (the rows, the header and one line per row joined by ``delimiter``)."""
    rows: list[dict[str, Any]] = []
    lines = [header]
    total = len(header)
    while total < size:
        rows.append(make_row(len(rows)))
        lines.append(delimiter.join(str(value) for value in rows[-1].values()))
        total += len(lines[-1]) + 1
    return rows, "\n".join(lines)


def _pick_unique(
    candidates: list[tuple[str, Counter[str], bool]], count: int, rng: random.Random
) -> list[tuple[str, str]]:
    """``count`` (query, answer) pairs whose most (or least) common key is unique."""
    chosen: list[tuple[str, str]] = []
    rng.shuffle(candidates)
    for query, counter, want_max in candidates:
        ranked = counter.most_common()
        if len(ranked) < 2:
            continue
        best, runner = (ranked[0], ranked[1]) if want_max else (ranked[-1], ranked[-2])
        if best[1] != runner[1]:
            chosen.append((query, best[0]))
    if len(chosen) < count:
        chosen = (chosen * (count // max(1, len(chosen)) + 1))[:count]
    return chosen[:count]


# -- sum / average over delimited records ------------------------------------------------


def sum_tasks(seed: int, size: int, count: int) -> Iterator[Task]:
    """Totals and averages of a column over the CSV rows matching conditions."""
    rng = _group_rng(seed, "sum", size, "rows")
    customers = _people(rng, 40)
    cities = rng.sample(CITIES, 8)
    rows, context = _delimited_table(
        "order_id,date,customer,city,product,quantity,amount",
        ",",
        size,
        lambda number: {
            "order_id": f"A{10_000 + number}",
            "date": f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
            "customer": rng.choice(customers),
            "city": rng.choice(cities),
            "product": rng.choice(PRODUCTS),
            "quantity": rng.randint(1, 9),
            "amount": rng.randint(5, 480),
        },
    )
    qrng = _group_rng(seed, "sum", size, "questions")
    for index in range(count):
        kind = index % 4
        customer, product, city = (
            qrng.choice(customers),
            qrng.choice(PRODUCTS),
            qrng.choice(cities),
        )
        if kind == 0:
            values = [r["amount"] for r in rows if r["customer"] == customer]
            query = f"What is the total amount paid by customer {customer}?"
            answer: Any = sum(values)
        elif kind == 1:
            values = [r["quantity"] for r in rows if r["product"] == product and r["city"] == city]
            query = f"What is the total quantity of {product} ordered in {city}?"
            answer = sum(values)
        elif kind == 2:
            values = [r["amount"] for r in rows if r["product"] == product]
            query = (
                f"What is the average amount of the orders for the product {product}? "
                "Round to two decimals."
            )
            answer = f"{sum(values) / len(values):.2f}"
        else:
            values = [r["amount"] for r in rows if r["city"] == city and r["quantity"] >= 5]
            query = (
                f"What is the total amount of the orders from {city} with a quantity of 5 or more?"
            )
            answer = sum(values)
        yield _task(
            "sum",
            size,
            index,
            query + " Answer with the number only.",
            context,
            answer,
            rows=len(values),
            tolerance=AVERAGE_TOLERANCE if kind == 2 else 0.0,
        )


# -- argmax / argmin over JSON lines -----------------------------------------------------


def argmax_tasks(seed: int, size: int, count: int) -> Iterator[Task]:
    """Which page / user occurs most or least often under a condition (JSON lines)."""
    rng = _group_rng(seed, "argmax", size, "events")
    users = [f"{first.lower()}_{rng.randint(10, 99)}" for first in FIRST_NAMES[:16]]
    events: list[dict[str, Any]] = []
    lines: list[str] = []
    total, second = 0, 0
    while total < size:
        second += rng.randint(1, 40)
        event = {
            "time": f"2024-05-{1 + second // 86_400:02d}T{second // 3600 % 24:02d}:"
            f"{second // 60 % 60:02d}:{second % 60:02d}",
            "user": rng.choice(users),
            "event": rng.choices(EVENTS, EVENT_WEIGHTS)[0],
            "page": rng.choice(PAGES),
            "ms": rng.randint(20, 900),
        }
        events.append(event)
        lines.append(json.dumps(event))
        total += len(lines[-1]) + 1
    context = "\n".join(lines)
    candidates: list[tuple[str, Counter[str], bool]] = []
    for user in users:
        pages = Counter(e["page"] for e in events if e["user"] == user and e["event"] == "view")
        candidates.append((f"Which page did the user {user} view most often?", pages, True))
    for kind in EVENTS[1:]:
        people = Counter(e["user"] for e in events if e["event"] == kind)
        candidates.append((f"Which user has the most '{kind}' events?", people, True))
        candidates.append((f"Which user has the fewest '{kind}' events?", people, False))
        pages = Counter(e["page"] for e in events if e["event"] == kind)
        candidates.append((f"On which page did the most '{kind}' events happen?", pages, True))
    picked = _pick_unique(candidates, count, _group_rng(seed, "argmax", size, "questions"))
    for index, (query, answer) in enumerate(picked):
        yield _task("argmax", size, index, query + " Answer with the name only.", context, answer)


# -- distinct counts over log lines ------------------------------------------------------


def distinct_tasks(seed: int, size: int, count: int) -> Iterator[Task]:
    """How many distinct IPs / users / endpoints match a condition (access-log lines)."""
    rng = _group_rng(seed, "distinct", size, "log")
    ips = [f"10.{rng.randint(0, 9)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}" for _ in range(90)]
    users = [
        f"{first.lower()}.{last.lower()}"
        for first, last in zip(FIRST_NAMES, LAST_NAMES, strict=True)
    ]
    statuses, weights = zip(*STATUSES, strict=True)
    entries: list[dict[str, Any]] = []
    lines: list[str] = []
    total, second = 0, 0
    while total < size:
        second += rng.randint(1, 20)
        status = rng.choices(statuses, weights)[0]
        entry = {
            "service": rng.choice(SERVICES),
            "method": rng.choice(METHODS),
            "path": rng.choice(ENDPOINTS),
            "ip": rng.choice(ips),
            "status": status,
            "user": rng.choice(users),
        }
        entries.append(entry)
        stamp = f"2024-06-{1 + second // 86_400:02d} {second // 3600 % 24:02d}:{second // 60 % 60:02d}:{second % 60:02d}"
        lines.append(
            f"{stamp} [{LOG_LEVELS[status]}] {entry['service']}: {entry['method']} {entry['path']} "
            f"from {entry['ip']} status={status} user={entry['user']} {rng.randint(3, 900)}ms"
        )
        total += len(lines[-1]) + 1
    context = "\n".join(lines)
    qrng = _group_rng(seed, "distinct", size, "questions")
    paths, people = _shuffled(qrng, ENDPOINTS), _shuffled(qrng, users)
    codes = _shuffled(qrng, (404, 500, 403, 201))
    for index in range(count):
        kind, turn = index % 3, index // 3
        status = codes[turn % len(codes)]
        path, user = paths[turn % len(paths)], people[turn % len(people)]
        if kind == 0:
            answer = len({e["ip"] for e in entries if e["status"] == status})
            query = f"How many distinct IP addresses appear in the lines with status={status}?"
        elif kind == 1:
            answer = len(
                {e["user"] for e in entries if e["path"] == path and e["method"] == "POST"}
            )
            query = f"How many different users sent a POST request to {path}?"
        else:
            answer = len({e["path"] for e in entries if e["user"] == user and e["status"] >= 400})
            query = (
                f"How many distinct paths did the user {user} request that got a status of "
                "400 or higher?"
            )
        yield _task(
            "distinct", size, index, query + " Answer with the number only.", context, answer
        )


# -- filters over a list of {"id", "text", "metadata"} records ---------------------------


def records_tasks(seed: int, size: int, count: int) -> Iterator[Task]:
    """Counts, an average and an arg-max over a list of records with metadata."""
    rng = _group_rng(seed, "records", size, "records")
    authors = _people(rng, 25)
    records: list[dict[str, Any]] = []
    total = 0
    while total < size:
        text = filler_text(rng, rng.randint(150, 320))
        record = {
            "id": f"rec-{len(records):04d}",
            "text": text,
            "metadata": {
                "author": rng.choice(authors),
                "year": rng.randint(2015, 2024),
                "category": rng.choice(CATEGORIES),
                "rating": rng.randint(1, 50) / 10,
                "tags": rng.sample(TAGS, rng.randint(0, 2)),
            },
        }
        records.append(record)
        total += len(json.dumps(record))
    qrng = _group_rng(seed, "records", size, "questions")
    categories, tags = _shuffled(qrng, CATEGORIES), _shuffled(qrng, TAGS)
    for index in range(count):
        kind, turn = index % 4, index // 4
        category, year = categories[index % len(categories)], qrng.randint(2016, 2023)
        tag = tags[turn % len(tags)]
        meta = [r["metadata"] for r in records]
        tolerance = 0.0
        if kind == 0:
            answer: Any = sum(1 for m in meta if m["category"] == category and m["year"] == year)
            query = f"How many records in the category {category} are from the year {year}?"
        elif kind == 1:
            answer = sum(1 for m in meta if tag in m["tags"] and m["rating"] >= 3.0)
            query = f"How many records have the tag '{tag}' and a rating of at least 3.0?"
        elif kind == 2:
            ratings = [m["rating"] for m in meta if m["category"] == category]
            answer = f"{sum(ratings) / len(ratings):.2f}"
            tolerance = AVERAGE_TOLERANCE
            query = (
                f"What is the average rating of the records in the category {category}? "
                "Round to two decimals."
            )
        else:
            author = qrng.choice(authors)
            own = [r for r in records if r["metadata"]["author"] == author]
            best = max(r["metadata"]["rating"] for r in own)
            while sum(1 for r in own if r["metadata"]["rating"] == best) > 1:
                author = qrng.choice(authors)
                own = [r for r in records if r["metadata"]["author"] == author]
                best = max(r["metadata"]["rating"] for r in own)
            answer = next(r["id"] for r in own if r["metadata"]["rating"] == best)
            query = f"Which record by the author {author} has the highest rating? Give its id."
            yield _task("records", size, index, query, records, answer, tolerance=tolerance)
            continue
        yield _task(
            "records",
            size,
            index,
            query + " Answer with the number only.",
            records,
            answer,
            tolerance=tolerance,
        )


# -- a two-part join ---------------------------------------------------------------------


def join_tasks(seed: int, size: int, count: int) -> Iterator[Task]:
    """An order names a customer id; the customer table (further down) holds the city."""
    rng = _group_rng(seed, "join", size, "tables")
    people = _people(rng, 150)
    customers = [
        {"id": f"C{100 + i}", "name": name, "city": rng.choice(CITIES), "tier": rng.choice(TIERS)}
        for i, name in enumerate(people)
    ]
    customer_lines = ["customer_id,name,city,tier"] + [
        f"{c['id']},{c['name']},{c['city']},{c['tier']}" for c in customers
    ]
    customer_text = "\n".join(customer_lines)
    orders: list[dict[str, Any]] = []
    lines = ["order_id,customer_id,product,amount"]
    total = len(customer_text) + len(lines[0])
    while total < size:
        order: dict[str, Any] = {
            "id": f"B{50_000 + len(orders) * 7}",
            "customer": rng.choice(customers),
            "product": rng.choice(PRODUCTS),
            "amount": rng.randint(5, 480),
        }
        orders.append(order)
        lines.append(
            f"{order['id']},{order['customer']['id']},{order['product']},{order['amount']}"
        )
        total += len(lines[-1]) + 1
    context = "\n".join(lines) + "\n\n" + customer_text
    qrng = _group_rng(seed, "join", size, "questions")
    for index in range(count):
        order = qrng.choice(orders)
        if index % 2 == 0:
            query = f"In which city does the customer who placed order {order['id']} live?"
            answer = order["customer"]["city"]
        else:
            query = f"What is the tier of the customer who placed order {order['id']}?"
            answer = order["customer"]["tier"]
        yield _task(
            "join",
            size,
            index,
            query + " Answer with one word.",
            context,
            answer,
            order=order["id"],
        )


# -- a semantic question -----------------------------------------------------------------


def semantic_tasks(seed: int, size: int, count: int) -> Iterator[Task]:
    """Which product had a problem that one message describes in other words."""
    rng = _group_rng(seed, "semantic", size, "messages")
    products = rng.sample(PRODUCTS, len(PROBLEMS))
    messages: list[str] = []
    total = 0
    while total < size:
        product = rng.choice(PRODUCTS)
        message = (
            f"Message from {_name(rng)}: "
            + rng.choice(BENIGN_MESSAGES).format(product=product)
            + " "
            + filler_text(rng, rng.randint(60, 160))
        )
        messages.append(message)
        total += len(message)
    positions = rng.sample(range(len(messages)), len(PROBLEMS))
    for position, (_, text), product in zip(positions, PROBLEMS, products, strict=True):
        messages[position] = f"Message from {_name(rng)}: " + text.format(product=product)
    for index in range(count):
        slot = index % len(PROBLEMS)
        problem = PROBLEMS[slot][0]
        query = (
            f"One customer writes that their product {problem}. Which product is it? "
            "Answer with the product name only."
        )
        yield _task(
            "semantic", size, index, query, messages, products[slot], position=positions[slot]
        )


# -- a dict of documents -----------------------------------------------------------------


def dict_tasks(seed: int, size: int, count: int) -> Iterator[Task]:
    """Facts inside named documents: look one up by name, or find the document of a fact."""
    rng = _group_rng(seed, "dict", size, "documents")
    topics = rng.sample(DOC_TOPICS, len(DOC_TOPICS))
    leads = _people(rng, len(topics))
    budgets = [rng.randint(20, 990) * 1000 for _ in topics]
    per_doc = size // len(topics)
    documents: dict[str, str] = {}
    for topic, lead, budget in zip(topics, leads, budgets, strict=True):
        text = filler_text(rng, per_doc - 120)
        facts = [
            f"The plan is led by {lead}.",
            f"The approved budget is {budget} euros.",
            f"Work starts in {rng.choice(PROJECT_NAMES)} week.",
        ]
        sentences = text.split(". ")
        for fact in facts:
            sentences.insert(rng.randint(1, len(sentences) - 1), fact.rstrip("."))
        documents[f"{topic}-plan"] = ". ".join(sentences)
    qrng = _group_rng(seed, "dict", size, "questions")
    order = qrng.sample(range(len(topics)), count) if count <= len(topics) else list(range(count))
    for index in range(count):
        slot = order[index] % len(topics)
        key = f"{topics[slot]}-plan"
        if index % 2 == 0:
            query = (
                f"What is the approved budget in the document '{key}'? Answer with the number only."
            )
            answer: Any = budgets[slot]
        else:
            query = (
                f"Which document names {leads[slot]} as the person who leads the plan? "
                "Answer with the document's key."
            )
            answer = key
        yield _task("dict", size, index, query, documents, answer, key=key)


# -- paraphrase: the record questions in wording the prompts were never tuned on -----------

DEPARTMENTS = ("Sales", "Finance", "Support", "Research", "Legal", "Design", "Logistics")
LEVELS = ("junior", "senior", "principal")


def paraphrase_tasks(seed: int, size: int, count: int) -> Iterator[Task]:
    """Staff records (``;``-delimited) asked about in other words than the other families:
    "combined", "mean", "unique", "hired in", "more than"; written after the query grounding
    was tuned, and never used to tune it."""
    rng = _group_rng(seed, "paraphrase", size, "staff")
    offices = rng.sample(CITIES, 6)
    rows, context = _delimited_table(
        "name;department;office;level;hired;salary",
        ";",
        size,
        lambda number: {
            "name": f"{_name(rng)} {number}",
            "department": rng.choice(DEPARTMENTS),
            "office": rng.choice(offices),
            "level": rng.choice(LEVELS),
            "hired": rng.randint(2012, 2024),
            "salary": rng.randint(30, 160) * 500,
        },
    )
    qrng = _group_rng(seed, "paraphrase", size, "questions")
    depts, places, levels = (_shuffled(qrng, items) for items in (DEPARTMENTS, offices, LEVELS))
    for index in range(count):
        kind = index % 8
        dept, office = depts[index % len(depts)], places[index % len(places)]
        level = levels[index % len(levels)]
        year, threshold = qrng.randint(2014, 2022), qrng.randint(60, 120) * 500
        tolerance = 0.0
        if kind == 0:
            sel = [r for r in rows if r["department"] == dept]
            query = f"What is the combined salary of everyone in the {dept} department?"
            answer: Any = sum(r["salary"] for r in sel)
        elif kind == 1:
            sel = [r for r in rows if r["level"] == level and r["office"] == office]
            query = (
                f"What is the mean salary of {level} staff based in {office}? "
                "Round to two decimals."
            )
            answer = f"{sum(r['salary'] for r in sel) / len(sel):.2f}"
            tolerance = AVERAGE_TOLERANCE
        elif kind == 2:
            sel = [r for r in rows if r["department"] == dept]
            query = f"How many unique offices have {dept} staff?"
            answer = len({r["office"] for r in sel})
        elif kind == 3:
            sel = [r for r in rows if r["level"] == level]
            ranked = Counter(r["office"] for r in sel).most_common()
            if ranked[0][1] == ranked[1][1]:  # no unique winner: ask about all levels
                ranked = Counter(r["office"] for r in rows).most_common()
                query = "Which office has the most employees?"
            else:
                query = f"Which office has the most {level} employees?"
            answer = ranked[0][0]
        elif kind == 4:
            sel = [r for r in rows if r["department"] == dept and r["hired"] == year]
            query = f"How many {dept} employees were hired in {year}?"
            answer = len(sel)
        elif kind == 5:  # the first office (from the drawn one on) with a unique top salary
            for place in offices[offices.index(office) :] + offices:
                sel = [r for r in rows if r["office"] == place]
                best = max(sel, key=lambda r: r["salary"])
                if sum(r["salary"] == best["salary"] for r in sel) == 1:
                    break
            query = f"Which employee in {place} has the highest salary? Give the name."
            answer = best["name"]
        elif kind == 6:
            sel = [r for r in rows if r["office"] == office]
            query = f"What is the lowest salary paid in the {office} office?"
            answer = min(r["salary"] for r in sel)
        else:
            sel = [r for r in rows if r["department"] == dept and r["salary"] > threshold]
            query = f"How many people in {dept} earn more than {threshold}?"
            answer = len(sel)
        suffix = "" if kind in (3, 5) else " Answer with the number only."
        yield _task(
            "paraphrase",
            size,
            index,
            query + suffix,
            context,
            answer,
            rows=len(sel),
            tolerance=tolerance,
        )


NEW_BUILDERS: dict[str, Builder] = {
    "sum": sum_tasks,
    "argmax": argmax_tasks,
    "distinct": distinct_tasks,
    "records": records_tasks,
    "join": join_tasks,
    "semantic": semantic_tasks,
    "dict": dict_tasks,
    "paraphrase": paraphrase_tasks,
}
NEW_FAMILIES = tuple(NEW_BUILDERS)
