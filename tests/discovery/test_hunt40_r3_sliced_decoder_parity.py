"""Review of fb34eefd/8e34c6a8: the watches' JSON decoder that lets the loop run between
an answer's elements (``decoded_in_slices``) answers as ``json.loads`` does.

The Consul watch decodes a health answer (a top-level array) and the etcd watch a range
answer (a top-level object whose ``kvs`` is an array) one element at a time with
``JSONDecoder.raw_decode``, the top-level brackets, commas, colons and whitespace parsed
by meshkit. Here every element boundary is a slice boundary (``SLICE_S`` 0: the loop let
run after each element), and the decoder is compared with ``json.loads`` on adversarial
texts: unicode escapes, surrogate pairs (also split ones), nested arrays and objects,
numbers (big, negative zero, exponents, over the int digit limit), NaN/Infinity,
JSON's whitespace and what is not (form feed, NBSP, a BOM), control characters in
strings, truncations at every position of a body, trailing data and commas, duplicate
keys, huge strings; plus a seeded fuzz of generated values with random whitespace and
random one-character mutations. Same value (and key order, and float sign) or both a
``ValueError``. A cancellation while slicing ends the decode at once.
"""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import pytest

from meshkit.discovery import _shared
from meshkit.discovery._shared import decoded_in_slices

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def _every_element_a_slice(monkeypatch: pytest.MonkeyPatch) -> None:
    # every element's end is a slice's: the loop is let run after each
    monkeypatch.setattr(_shared, "SLICE_S", 0.0)


def _same(a: Any, b: Any) -> bool:
    """Equal with key order, types (1 vs 1.0 vs True) and -0.0/NaN told apart."""
    return (
        type(a) is type(b)
        and json.dumps(a) == json.dumps(b)
        and (not isinstance(a, list | dict) or repr(a) == repr(b))
    )


async def _check(text: str) -> None:
    try:
        expected: Any = json.loads(text)
    except ValueError:
        with pytest.raises(ValueError):
            await decoded_in_slices(text)
        return
    got = await decoded_in_slices(text)
    assert _same(got, expected), (text[:200], got, expected)


ADVERSARIAL = [
    '["\\u00e9", "\\ud83d\\ude00", "\\ud83d", "\\ude00", "\\u0000", "\\"", "\\\\"]',
    '[{"\\ud83d\\ude00": ["\\u005d", "]", "[", ",", "{"]}]',
    '["\U0001f600", "é", "\u2028\u2029"]',
    '["\\ud83d\\u0041"]',
    '["\\uZZZZ"]',
    '["\\u12"]',
    '["\\x41"]',
    '["a\tb"]',
    '["a\nb"]',
    '["a\x00b"]',
    "[[[[[[[]]]]]]]",
    '[[1, [2, [3, {}]]], {}, [], {"a": {"b": [{}]}}]',
    '{"kvs": [[1], [2, [3]]], "header": {"revision": "7"}, "more": true}',
    '{"kvs": [{"key": "a2V5", "mod_revision": "3"}], "count": "1"}',
    "[0, -0, -0.0, 1e400, -1e400, 1E+2, 1e-2, 0.1, 123456789012345678901234567890]",
    "[01]",
    "[-]",
    "[1.]",
    "[.5]",
    "[+1]",
    "[0x10]",
    "[NaN, Infinity, -Infinity]",
    "[nan]",
    "[true, false, null, True]",
    "[" + "1" * 5000 + "]",
    '{"a": ' + "1" * 5000 + "}",
    " \t\n\r[ \t\n\r1 \t\n\r, \t\n\r2 \t\n\r] \t\n\r",
    "[1,\f2]",
    "\f[1]",
    "[1,\u00a02]",
    "\u00a0[1]",
    "\ufeff[1]",
    "\ufeff{}",
    "[1,,2]",
    "[,1]",
    "[1,]",
    "[1]]",
    "[1][2]",
    "{}{}",
    "{} x",
    '{"a": 1 "b": 2}',
    '{"a": 1, "a": [2], "b": 3, "a": 4}',
    '{"kvs": [1], "kvs": [2, 3]}',
    '{"a": [1,]}',
    '{"a": [1 2]}',
    '{"a":}',
    '{"a"}',
    "{,}",
    '{"a": 1}}',
    "{'a': 1}",
    "['a']",
    '{"\\u0000": [1]}',
    '"[1, 2]"',
    "  42  ",
    "null",
    "",
    "   ",
    "[",
    "{",
    '["' + "x" * 300_000 + '", "' + "\\u00e9" * 50_000 + '"]',
    '{"kvs": ["' + "y" * 300_000 + '"]}',
]


@pytest.mark.parametrize("n", range(len(ADVERSARIAL)), ids=lambda n: f"text{n}")
async def test_adversarial_text_as_json_loads(n: int) -> None:
    await _check(ADVERSARIAL[n])


BODIES = [
    '[{"Node": {"Node": "n1", "Address": "10.0.0.1"}, "Service": {"ID": "a\\u00e9",'
    ' "Port": 8080, "Meta": {"k": "\\ud83d\\ude00"}, "Weights": {"Passing": 1}}},'
    ' {"Node": {"Node": "n2"}, "Service": {"ID": "b", "Port": 8081, "Tags": []}}]',
    '{"header": {"cluster_id": "14841639068965178418", "revision": "42"}, "kvs":'
    ' [{"key": "L21lc2hraXQv", "value": "eyJhIjogMX0=", "mod_revision": "40"},'
    ' {"key": "L21lc2hraXQvMg==", "value": "", "mod_revision": "41"}], "count": "2"}',
]


@pytest.mark.parametrize("n", range(len(BODIES)), ids=lambda n: f"body{n}")
async def test_every_truncation_of_a_body_as_json_loads(n: int) -> None:
    # a body cut at any point (a connection closed mid-answer): an error, never a
    # shorter listing; and every one-character cut out of it too
    body = BODIES[n]
    for end in range(len(body) + 1):
        await _check(body[:end])
    for pos in range(len(body)):
        await _check(body[:pos] + body[pos + 1 :])


def _value(rng: random.Random, depth: int) -> Any:
    kind = rng.randrange(9 if depth < 4 else 6)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.randint(-(10**20), 10**20)
    if kind == 2:
        return rng.choice([0.0, -0.0, 1.5e-300, 2.5e300, rng.uniform(-1e6, 1e6)])
    if kind in (3, 4, 5):
        alphabet = 'ab"\\/\b\f\n\r\t\x00\x1f é\u2028\ud800\udc00\U0001f600[]{},:'
        return "".join(rng.choice(alphabet) for _ in range(rng.randrange(8)))
    if kind in (6, 7):
        return [_value(rng, depth + 1) for _ in range(rng.randrange(5))]
    return {
        "".join(rng.choice('ab"é[') for _ in range(rng.randrange(3))): _value(rng, depth + 1)
        for _ in range(rng.randrange(5))
    }


def _spaced(rng: random.Random, text: str) -> str:
    # JSON's whitespace put between tokens: after structural characters outside strings
    out: list[str] = []
    in_string = escaped = False
    for c in text:
        out.append(c)
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
            continue
        if c == '"':
            in_string = True
        elif c in "[]{},:" and rng.random() < 0.5:
            out.append("".join(rng.choice(" \t\n\r") for _ in range(rng.randrange(3))))
    return "".join(out)


async def test_seeded_fuzz_as_json_loads() -> None:
    rng = random.Random(20261207)
    for _ in range(400):
        top = rng.randrange(3)
        items = [_value(rng, 1) for _ in range(rng.randrange(6))]
        value: Any = (
            items
            if top == 0
            else (
                {"kvs": items, "header": {"revision": str(rng.randrange(99))}}
                if top == 1
                else {"a": items, "b": items[:1], "c": 1}
            )
        )
        text = _spaced(rng, json.dumps(value, ensure_ascii=rng.random() < 0.5))
        if rng.random() < 0.3:
            text = rng.choice(" \t\n\r") + text + rng.choice(" \t\n\r")
        await _check(text)
        for _ in range(3):  # a character cut, doubled or replaced
            if not text:
                break
            pos = rng.randrange(len(text))
            op = rng.randrange(3)
            if op == 0:
                mutated = text[:pos] + text[pos + 1 :]
            elif op == 1:
                mutated = text[:pos] + text[pos] + text[pos:]
            else:
                mutated = text[:pos] + rng.choice('[]{},:" 0e-\\') + text[pos + 1 :]
            await _check(mutated)


async def test_the_loop_runs_between_elements_and_a_cancel_ends_the_decode() -> None:
    text = json.dumps([{"n": n} for n in range(2000)])
    turns = 0
    stop = False

    async def ticker() -> None:
        nonlocal turns
        while not stop:
            turns += 1
            await asyncio.sleep(0)

    tick = asyncio.ensure_future(ticker())
    try:
        await asyncio.sleep(0)
        before = turns
        assert await decoded_in_slices(text) == json.loads(text)
        assert turns - before >= 1000  # (one slice per element: about 2,000)
        decode = asyncio.ensure_future(decoded_in_slices(text))
        for _ in range(50):
            await asyncio.sleep(0)
        assert not decode.done()
        decode.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(decode, 10)
    finally:
        stop = True
        await asyncio.wait_for(tick, 10)
