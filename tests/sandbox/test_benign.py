"""Benign suite: code real models write must behave exactly like plain CPython.

The expected stdout comes from running the same cells with ``exec`` in a plain
namespace (same REPL rule: a trailing expression's repr is printed unless None).
"""

from __future__ import annotations

import ast
import contextlib
import io
from typing import Any

import pytest

from langchain_rlm.sandbox import LocalSandbox

from .conftest import CONTEXT, TEST_LIMITS, host_functions

SNIPPETS: dict[str, list[str]] = {
    "regex": ["import re\nm = re.findall(r'qu\\w+', context)\nprint(len(m), m[:2])"],
    "regex-sub-groups": [
        "import re\np = re.compile(r'(?P<w>\\w+) (fox)')\nprint(p.search(context).group('w'), p.sub(r'\\2', 'brown fox'))"
    ],
    "json": [
        'import json\nd = json.loads(\'{"a": [1, 2, {"b": null}]}\')\nprint(json.dumps(d, indent=2, sort_keys=True))'
    ],
    "counter": ["from collections import Counter\nc = Counter(context.split())\nc.most_common(3)"],
    "class-self-x": [
        "class Acc:\n    def __init__(self, x):\n        self.x = x\n        self._hidden = [x]\n    def add(self, y):\n        self.x += y\n        self._hidden.append(y)\n        return self\na = Acc(1).add(2).add(3)\nprint(a.x, a._hidden)"
    ],
    "generators": [
        "def chunks(s, n):\n    for i in range(0, len(s), n):\n        yield s[i:i + n]\nparts = list(chunks(context, 100))\nprint(len(parts), repr(parts[-1][-10:]))"
    ],
    "decorator": [
        "import functools\ndef logged(f):\n    @functools.wraps(f)\n    def inner(*a):\n        print('call', f.__name__, a)\n        return f(*a)\n    return inner\n@logged\ndef add(a, b):\n    'adds'\n    return a + b\nprint(add(2, 3), add.__name__, add.__doc__)"
    ],
    "fstring-repr": [
        "name = 'fox'\nn = 3.14159\nprint(f'{name!r} {n:.2f} {n:>10.3f} {len(context):,}')"
    ],
    "exception-name": [
        "try:\n    int('nope')\nexcept ValueError as e:\n    print(type(e).__name__, e)\nexcept Exception as e:\n    print('other', e)"
    ],
    "private-names": [
        "_cache = {}\ndef _helper(k):\n    _cache[k] = k * 2\n    return _cache[k]\n_helper(21)"
    ],
    "strptime": [
        "from datetime import datetime, timedelta\nd = datetime.strptime('2024-03-05 10:20', '%Y-%m-%d %H:%M')\nprint(d + timedelta(days=30), d.strftime('%A %d %B'))"
    ],
    "textwrap": [
        "import textwrap\nprint(textwrap.fill(context[:200], width=40))\nprint(textwrap.shorten(context, 30))"
    ],
    "statistics": [
        "import statistics\nxs = [3, 1, 4, 1, 5, 9, 2, 6]\nprint(statistics.mean(xs), statistics.median(xs), round(statistics.stdev(xs), 4))"
    ],
    "helper-across-cells": [
        "def word_count(text):\n    return len(text.split())",
        "print(word_count(context))\ntotal = word_count('a b c')",
        "total * 2",
    ],
    "comprehensions": [
        "sq = [i * i for i in range(10) if i % 2]\ninv = {v: k for k, v in enumerate('abc')}\nprint(sq, inv, {c for c in 'hello'} == set('helo'))"
    ],
    "sorted-key": [
        "words = context.split()[:8]\nprint(sorted(set(words), key=lambda w: (-len(w), w)))"
    ],
    "string-methods": [
        "s = '  Hello, World  '\nprint(s.strip().lower().replace('world', 'fox').split(', '), s.count('l'), 'x'.join('abc'), s.startswith('  H'))"
    ],
    "enumerate-zip": [
        "for i, (a, b) in enumerate(zip('abc', [1, 2, 3]), start=1):\n    print(i, a, b)"
    ],
    "defaultdict": [
        "from collections import defaultdict\ng = defaultdict(list)\nfor w in context.split()[:20]:\n    g[w[0]].append(w)\ndict(sorted(g.items()))"
    ],
    "groupby": [
        "import itertools\nfor k, grp in itertools.groupby(sorted('mississippi')):\n    print(k, len(list(grp)))\nprint(list(itertools.islice(itertools.count(5, 2), 3)))"
    ],
    "heapq": [
        "import heapq\nh = []\nfor x in [5, 1, 8, 3]:\n    heapq.heappush(h, x)\nprint(heapq.heappop(h), heapq.nlargest(2, [5, 1, 8, 3]))"
    ],
    "math": [
        "import math\nprint(math.sqrt(2), math.floor(2.7), math.gcd(12, 18), math.isclose(0.1 + 0.2, 0.3))"
    ],
    "dunder-methods": [
        "class Point:\n    def __init__(self, x, y):\n        self.x, self.y = x, y\n    def __repr__(self):\n        return f'{self.__class__.__name__}({self.x}, {self.y})'\n    def __eq__(self, other):\n        return (self.x, self.y) == (other.x, other.y)\n    def __add__(self, other):\n        return Point(self.x + other.x, self.y + other.y)\nprint(Point(1, 2) + Point(3, 4), Point(1, 1) == Point(1, 1))\nPoint(0, 0)"
    ],
    "super-init": [
        "class Base:\n    def __init__(self, name):\n        self.name = name\nclass Child(Base):\n    def __init__(self, name, age):\n        super().__init__(name)\n        self.age = age\nc = Child('a', 3)\nprint(c.name, c.age, isinstance(c, Base))"
    ],
    "custom-exception": [
        "class MyErr(Exception):\n    pass\ntry:\n    raise MyErr('bad thing')\nexcept MyErr as e:\n    print(repr(e), str(e))"
    ],
    "context-slicing": [
        "print(len(context))\nprint(context[:30])\nprint(context[-25:])\ncontext.count('fox')"
    ],
    "no-trailing-expression": ["x = 5\ny = x * 2"],
    "trailing-none": ["print('side effect')\nNone"],
    "trailing-call-returning-none": ["items = []\nitems.append(1)"],
    "random-seeded": [
        "import random\nrandom.seed(42)\nprint(random.randint(1, 100), random.choice('abcdef'))"
    ],
    "hashlib-base64": [
        "import hashlib, base64\nprint(hashlib.sha256(b'abc').hexdigest()[:16], base64.b64encode(b'hi').decode())"
    ],
    "difflib-bisect": [
        "import difflib, bisect\nprint(difflib.get_close_matches('appel', ['ape', 'apple', 'peach']), bisect.bisect([1, 3, 5], 4))"
    ],
    "fractions-decimal": [
        "from fractions import Fraction\nfrom decimal import Decimal\nprint(Fraction(1, 3) + Fraction(1, 6), Decimal('0.1') + Decimal('0.2'))"
    ],
    "typing-annotations": [
        "from typing import List, Dict, Optional\ndef f(xs: List[int], d: Optional[Dict[str, int]] = None) -> int:\n    return sum(xs)\nf([1, 2, 3])"
    ],
    "format-method": [
        "print('{} has {:>5} items, {name}'.format('list', 3, name='ok'))\nprint('{a[0]}-{b}'.format_map({'a': [1], 'b': 2}))"
    ],
    "unicode": [
        "import unicodedata\ns = 'café naïve'\nprint(unicodedata.normalize('NFKD', s).encode('ascii', 'ignore').decode(), s.upper(), len(s))"
    ],
    "while-break-else": [
        "n = 0\nwhile True:\n    n += 1\n    if n > 4:\n        break\nfor i in range(3):\n    pass\nelse:\n    print('done', n, i)"
    ],
    "lambda-map-filter": [
        "print(list(map(lambda x: x * 2, filter(lambda x: x > 1, [1, 2, 3]))), any(x > 2 for x in [1, 3]))"
    ],
    "nested-functions-closures": [
        "def make_counter():\n    count = 0\n    def inc():\n        nonlocal count\n        count += 1\n        return count\n    return inc\nc = make_counter()\nc(); c()\nc()"
    ],
    "namedtuple-dataclass-free": [
        "from collections import namedtuple, OrderedDict, deque\nP = namedtuple('P', 'x y')\nd = deque([1, 2, 3], maxlen=2)\nprint(P(1, 2), P(1, 2)._asdict(), d, OrderedDict(a=1))"
    ],
    "name-main": ["if __name__ == '__main__':\n    print('main')"],
    "match-statements": [
        "from collections import namedtuple\nP = namedtuple('P', 'x y')\n"
        "class Box:\n    __match_args__ = ('w', 'h')\n    def __init__(self, w, h):\n        self.w, self.h = w, h\n"
        "def kind(v):\n    match v:\n        case P(0, y):\n            return f'on y axis at {y}'\n"
        "        case P(x, y) if x == y:\n            return 'diagonal'\n        case Box(w, h=2):\n            return f'box {w}x2'\n"
        "        case [int(a), *rest]:\n            return f'list from {a} ({len(rest)} more)'\n"
        "        case {'k': str(s)}:\n            return 'mapping ' + s\n        case str() | bytes():\n            return 'text'\n"
        "        case _:\n            return 'other'\n"
        "print([kind(v) for v in (P(0, 3), P(2, 2), Box(5, 2), [1, 2, 3], {'k': 'v'}, 'abc', 4.5)])"
    ],
    "super-explicit-args": [
        "class Base:\n    def hello(self):\n        return 'base'\nclass Child(Base):\n    def hello(self):\n"
        "        return 'child+' + super(Child, self).hello()\nprint(Child().hello())"
    ],
    "string-formatter": [
        "import string\nf = string.Formatter()\nprint(f.format('{0}-{name}-{1:>4}', 'a', 7, name='n'))\n"
        "print([t[1] for t in f.parse('x{a}y{b}')])"
    ],
    "getattr-normal": [
        "class A:\n    value = 3\nprint(getattr(A, 'value'), getattr(A, 'missing', 'dflt'), hasattr(A, 'value'))\nsetattr(A, 'other', 4)\nA.other"
    ],
}


def reference_run(cells: list[str], context: Any) -> list[str]:
    """Plain CPython: exec each cell in one namespace, REPL rule for a trailing expression."""
    namespace: dict[str, Any] = {"context": context, "__name__": "__main__"}
    outputs = []
    for cell in cells:
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            tree = ast.parse(cell)
            last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
            exec(compile(tree, "<ref>", "exec"), namespace)
            if last is not None:
                value = eval(compile(ast.Expression(last.value), "<ref>", "eval"), namespace)
                if value is not None:
                    print(repr(value))
        outputs.append(buffer.getvalue())
    return outputs


def test_snippet_count() -> None:
    assert len(SNIPPETS) >= 25


@pytest.mark.parametrize("name", list(SNIPPETS))
def test_benign_snippet_matches_cpython(session: Any, name: str) -> None:
    cells = SNIPPETS[name]
    expected = reference_run(cells, CONTEXT)
    for cell, want in zip(cells, expected, strict=True):
        out = session(cell)
        assert out.error is None, out.error
        assert out.stdout == want


@pytest.mark.parametrize(
    "name", ["regex", "class-self-x", "helper-across-cells", "super-init", "decorator"]
)
def test_benign_snippet_local_sandbox(name: str) -> None:
    ex = LocalSandbox(trust_model_code=True).start(CONTEXT, host_functions(), TEST_LIMITS)
    try:
        cells = SNIPPETS[name]
        for cell, want in zip(cells, reference_run(cells, CONTEXT), strict=True):
            out = ex(cell)
            assert out.error is None, out.error
            assert out.stdout == want
    finally:
        ex.close()
