"""JSON Schema to GBNF, the grammar format of llama.cpp's grammar sampler.

:func:`schema_to_gbnf` turns a JSON Schema into a grammar whose every sentence is JSON that the
schema accepts, so a model sampled under it can only write valid output (``response_format`` of
type ``json_schema``, tool-call arguments). :data:`JSON_OBJECT_GRAMMAR` accepts any JSON object
(``response_format={"type": "json_object"}``). Pass either to ``llama_sampler_init_grammar(vocab,
grammar, "root")``::

    >>> print(schema_to_gbnf({"type": "object", "properties": {"ok": {"type": "boolean"}},
    ...                       "required": ["ok"], "additionalProperties": False}), end="")
    root ::= "{" ws "\\"ok\\"" ws ":" ws boolean ws "}"
    boolean ::= "true" | "false"
    ws ::= | " " | "\\n" [ \\t]{0,40}

What the grammar enforces (beyond that, it is stricter than the schema, never looser):

- ``type`` (one or a list, so ``["string", "null"]`` is nullable; OpenAPI's ``nullable`` is
  ignored), ``enum``, ``const``, ``anyOf``/``oneOf`` (``oneOf`` as ``anyOf``: alternatives that
  overlap are not excluded), ``$ref`` to ``#/$defs/…``, ``#/definitions/…`` or any other pointer
  into the same document, recursion included. ``allOf`` is merged into one schema (properties and
  ``required`` combined), so an ``additionalProperties`` beside it covers the properties of every
  part, as its authors mean (JSON Schema itself would count them as additional: use
  ``unevaluatedProperties``, which the merge reads the same way).
- objects: ``properties`` in the schema's order, ``required``; ``additionalProperties``: when it
  is absent or false only the listed properties are written (an object schema with no
  ``properties`` accepts any object); true or a schema allows other keys (of plain characters,
  never one of the listed names) after the listed ones.
- arrays: ``items``, ``prefixItems`` (and ``items`` as a list; every prefix item is written),
  ``minItems``, ``maxItems``.
- strings: ``minLength``, ``maxLength``, ``pattern`` (a regular-expression subset: literals,
  classes, ``.``, groups, alternation, quantifiers; it must match the whole string, and classes
  never produce control characters other than tab, newline and carriage return), ``format``
  ``date`` (no 29 February), ``time``, ``date-time``, ``uuid``, ``email`` (plain ASCII addresses)
  and ``ipv4``; other formats are annotations (any string).
- integers: ``minimum``, ``maximum``, ``exclusiveMinimum``, ``exclusiveMaximum``, exactly.
  Numbers: only the sign (no ``-`` when ``minimum >= 0``); other bounds of non-integer numbers
  are not enforced, so check such values afterwards.

Repetition counts above :data:`MAX_REPETITION` (``maxLength``, ``maxItems``, ``{n,m}``) are not
enforced, as llama.cpp's grammar parser does not expand them; at most 16 digits are written for
an unbounded number. Keywords the grammar cannot express (``not``, ``if``, ``patternProperties``,
``uniqueItems``, ``multipleOf``, …) raise :class:`~llcuda.errors.ConfigError` naming the keyword
and where it is; unknown keywords and annotations (``title``, ``description``, ``default``,
``examples``) are ignored, as JSON Schema says.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from llcuda.errors import ConfigError

MAX_REPETITION = 2000  # llama.cpp's grammar parser leaves larger {m,n} bounds open
MAX_DIGITS = 16  # digits of an unbounded integer part, as llama.cpp's own converter writes

# Shared rules, by name: (body, the shared rules it uses). Rule names derived from the schema never
# take these names (they get a "-" suffix instead).
_PRIMITIVES: dict[str, tuple[str, tuple[str, ...]]] = {
    "ws": ('| " " | "\\n" [ \\t]{0,40}', ()),
    "boolean": ('"true" | "false"', ()),
    "null": ('"null"', ()),
    "digits": (f"[0-9]{{1,{MAX_DIGITS}}}", ()),
    "integer": (f'"-"? ("0" | [1-9] [0-9]{{0,{MAX_DIGITS - 1}}})', ()),
    "number": ('integer ("." digits)? ([eE] [-+]? digits)?', ("integer", "digits")),
    "char": ('[^"\\\\\\x00-\\x1F] | "\\\\" (["\\\\/bfnrt] | "u" [0-9a-fA-F]{4})', ()),
    "string": ('"\\"" char* "\\""', ("char",)),
    "value": (
        "object | array | string | number | boolean | null",
        ("object", "array", "string", "number", "boolean", "null"),
    ),
    "object": (
        '"{" ws (string ws ":" ws value ws ("," ws string ws ":" ws value ws)*)? "}"',
        ("ws", "string", "value"),
    ),
    "array": ('"[" ws (value ws ("," ws value ws)*)? "]"', ("ws", "value")),
    # a real calendar date of years 0001-9999 (February never has a 29th: leap years are not worked out)
    "date": (
        '([1-9] [0-9]{3} | "0" ([1-9] [0-9]{2} | "0" ([1-9] [0-9] | "0" [1-9]))) "-" '
        '(("0" [13578] | "1" [02]) "-" ("0" [1-9] | [12] [0-9] | "3" [01]) | '
        '("0" [469] | "11") "-" ("0" [1-9] | [12] [0-9] | "30") | "02-" ("0" [1-9] | "1" [0-9] | "2" [0-8]))',
        (),
    ),
    "time": (
        '([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9] ":" ([0-5] [0-9] | "60") ("." [0-9]{1,9})? '
        '([zZ] | [-+] ([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9])',
        (),
    ),
    "date-string": ('"\\"" date "\\""', ("date",)),
    "time-string": ('"\\"" time "\\""', ("time",)),
    "date-time-string": ('"\\"" date [tT] time "\\""', ("date", "time")),
    "email-string": ('"\\"" [a-zA-Z0-9._%+-]{1,64} "@" [a-zA-Z0-9-]{1,63} ("." [a-zA-Z0-9-]{1,63}){1,8} "\\""', ()),
    "ipv4-string": ('"\\"" octet "." octet "." octet "." octet "\\""', ("octet",)),
    "octet": ('[0-9] | [1-9] [0-9] | "1" [0-9] [0-9] | "2" [0-4] [0-9] | "25" [0-5]', ()),
    "uuid-string": (
        '"\\"" [0-9a-fA-F]{8} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{12} "\\""',
        (),
    ),
}
_FORMATS = {
    "date": "date-string",
    "time": "time-string",
    "date-time": "date-time-string",
    "uuid": "uuid-string",
    "email": "email-string",
    "ipv4": "ipv4-string",
}

# Keywords that only describe, or that are handled where their parent keyword is.
_ANNOTATIONS = frozenset(
    {
        "title",
        "description",
        "default",
        "examples",
        "example",
        "$schema",
        "$id",
        "$anchor",
        "$comment",
        "deprecated",
        "readOnly",
        "writeOnly",
        "contentEncoding",
        "contentMediaType",
        "contentSchema",
        "$defs",
        "definitions",
        "discriminator",
        "xml",
        "externalDocs",
        "strict",
        "nullable",  # OpenAPI's, not JSON Schema's: null is written only where "type" lists "null"
    }
)
_UNSUPPORTED = frozenset(
    {
        "not",
        "if",
        "then",
        "else",
        "patternProperties",
        "propertyNames",
        "minProperties",
        "maxProperties",
        "dependentRequired",
        "dependentSchemas",
        "dependencies",
        "contains",
        "minContains",
        "maxContains",
        "multipleOf",
        "$dynamicRef",
        "$recursiveRef",
        "additionalItems",
    }
)
_TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")

_NAME_INVALID = re.compile(r"[^a-zA-Z0-9-]+")


def _unsupported(keyword: str, path: str, why: str = "the grammar cannot express it") -> ConfigError:
    return ConfigError(
        f"JSON Schema keyword {keyword!r} at {path} is not supported ({why}); remove it or "
        "simplify the schema (the output is plain JSON text: check such constraints after "
        "generation)."
    )


def _literal(text: str) -> str:
    """``text`` as a GBNF string literal."""
    out = []
    for ch in text:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _constant(value: Any) -> str:
    """A literal matching exactly the compact JSON text of ``value``."""
    return _literal(_json_text(value))


_CLASS_ESCAPES_GBNF = {"\\": "\\\\", "]": "\\]", "[": "\\[", "-": "\\-", '"': '\\"', "^": "\\x5E"}


def _class_char(code: int) -> str:
    """One code point inside a GBNF character class."""
    if chr(code) in _CLASS_ESCAPES_GBNF:
        return _CLASS_ESCAPES_GBNF[chr(code)]
    if code < 0x20 or code == 0x7F:
        return f"\\x{code:02X}"
    if 0x80 <= code < 0xA0 or 0xD800 <= code <= 0xDFFF:
        return f"\\u{code:04X}"
    if code > 0xFFFF and not chr(code).isprintable():
        return f"\\U{code:08X}"
    return chr(code)


Ranges = list[tuple[int, int]]  # sorted, disjoint, inclusive code point ranges
MAX_CODE = 0x10FFFF


def _normalize(ranges: Sequence[tuple[int, int]]) -> Ranges:
    merged: Ranges = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    return merged


def _complement(ranges: Ranges) -> Ranges:
    out: Ranges = []
    start = 0
    for lo, hi in ranges:
        if lo > start:
            out.append((start, lo - 1))
        start = hi + 1
    if start <= MAX_CODE:
        out.append((start, MAX_CODE))
    return out


def _subtract(ranges: Ranges, remove: Ranges) -> Ranges:
    return _intersect(ranges, _complement(_normalize(remove)))


def _intersect(a: Ranges, b: Ranges) -> Ranges:
    out: Ranges = []
    i = j = 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if lo <= hi:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def _contains(ranges: Ranges, code: int) -> bool:
    return any(lo <= code <= hi for lo, hi in ranges)


# Characters a JSON string holds only escaped: quote, backslash, control characters.
_NEEDS_ESCAPE: Ranges = [(0x00, 0x1F), (0x22, 0x22), (0x5C, 0x5C)]
_ESCAPED_IN_PATTERNS = (0x22, 0x5C, 0x09, 0x0A, 0x0D)  # written as \" \\ \t \n \r when a class allows them


def _class_expr(ranges: Ranges) -> str | None:
    """A GBNF expression for one character of a JSON string (as written in the JSON text) whose
    decoded value is in ``ranges``; None when no such character can be written."""
    plain = _subtract(ranges, _NEEDS_ESCAPE)
    parts = []
    if plain:
        listed = "[" + "".join(_class_range(lo, hi) for lo, hi in plain) + "]"
        negated = "[^" + "".join(_class_range(lo, hi) for lo, hi in _complement(plain)) + "]"
        parts.append(min(listed, negated, key=len))
    parts += [_literal(json.dumps(chr(c))[1:-1]) for c in _ESCAPED_IN_PATTERNS if _contains(ranges, c)]
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else "(" + " | ".join(parts) + ")"


def _class_range(lo: int, hi: int) -> str:
    if lo == hi:
        return _class_char(lo)
    if hi == lo + 1:
        return _class_char(lo) + _class_char(hi)
    return _class_char(lo) + "-" + _class_char(hi)


def _repeat(item: str, low: int, high: int | None) -> str:
    """``item`` (a rule name, literal or group) repeated ``low`` to ``high`` (None: unbounded) times."""
    if high is not None and high > MAX_REPETITION:
        high = None
    if low > MAX_REPETITION:
        raise ConfigError(
            f"a schema asks for at least {low} repetitions, more than llama.cpp's grammar parser "
            f"allows ({MAX_REPETITION}); lower minLength/minItems or the pattern's count."
        )
    if high == 0:
        return ""
    if (low, high) == (0, None):
        return item + "*"
    if (low, high) == (1, None):
        return item + "+"
    if (low, high) == (0, 1):
        return item + "?"
    if low == high:
        return item if low == 1 else f"{item}{{{low}}}"
    return f"{item}{{{low},{'' if high is None else high}}}"


# -- integers in a range -----------------------------------------------------------------------


def _same_length(lo: str, hi: str) -> str:
    """Decimal strings of one length from ``lo`` to ``hi`` (equal length, lo <= hi)."""
    if lo == hi:
        return _literal(lo)
    prefix = 0
    while lo[prefix] == hi[prefix]:
        prefix += 1
    if prefix:
        return _literal(lo[:prefix]) + " " + _group(_same_length(lo[prefix:], hi[prefix:]))
    rest = len(lo) - 1
    if rest == 0:
        return _digit_class(lo, hi)
    parts = []
    first, last = int(lo[0]), int(hi[0])
    if lo[1:] != "0" * rest:
        parts.append(_literal(lo[0]) + " " + _group(_same_length(lo[1:], "9" * rest)))
        first += 1
    tail = None
    if hi[1:] != "9" * rest:
        tail = _literal(hi[0]) + " " + _group(_same_length("0" * rest, hi[1:]))
        last -= 1
    if first <= last:
        parts.append(_digit_class(str(first), str(last)) + " " + _repeat("[0-9]", rest, rest))
    if tail:
        parts.append(tail)
    return " | ".join(parts)


def _digit_class(lo: str, hi: str) -> str:
    return f"[{lo}]" if lo == hi else f"[{lo}-{hi}]"


def _group(expr: str) -> str:
    return expr if re.fullmatch(r'[\w-]+|"(?:[^"\\]|\\.)*"|\[(?:[^\]\\]|\\.)*\]', expr) else f"({expr})"


def _naturals(lo: int, hi: int | None) -> str:
    """Decimal numbers without leading zeros from ``lo`` (>= 0) to ``hi`` (None: up to MAX_DIGITS digits)."""
    top_len = max(MAX_DIGITS, len(str(lo))) if hi is None else len(str(hi))
    parts = []
    for length in range(len(str(lo)), top_len + 1):
        low = lo if length == len(str(lo)) else 10 ** (length - 1)
        high = hi if hi is not None and length == len(str(hi)) else 10**length - 1
        if hi is None and length > len(str(lo)):  # every longer number: one expression for all lengths
            parts.append("[1-9] " + _repeat("[0-9]", length - 1, top_len - 1))
            break
        parts.append(_same_length(str(low), str(high)))
    return " | ".join(_group(p) if " | " in p else p for p in parts)


def _integer_range(lo: int | None, hi: int | None) -> str | None:
    """Integers from ``lo`` to ``hi`` (None: unbounded); None when the range is empty."""
    parts = []
    neg_hi = -1 if hi is None else min(hi, -1)
    if lo is None or lo <= neg_hi:
        parts.append('"-" ' + _group(_naturals(-neg_hi, None if lo is None else -lo)))
    pos_lo = 0 if lo is None else max(lo, 0)
    if hi is None or pos_lo <= hi:
        parts.append(_naturals(pos_lo, hi))
    if not parts:
        return None
    return " | ".join(_group(p) if " | " in p and len(parts) > 1 else p for p in parts)


# -- regular expressions (the pattern keyword) ----------------------------------------------------

_CLASS_ESCAPES: dict[str, Ranges] = {
    "d": [(0x30, 0x39)],
    "w": _normalize([(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)]),
    "s": _normalize([(0x09, 0x0D), (0x20, 0x20)]),
}
_CHAR_ESCAPES = {"t": 0x09, "n": 0x0A, "r": 0x0D, "f": 0x0C, "v": 0x0B, "0": 0x00}


class _Pattern:
    """A recursive-descent reader of a regular expression that writes GBNF for the JSON text of the
    strings it matches (whole-string matches)."""

    def __init__(self, converter: _Converter, pattern: str, name: str, path: str) -> None:
        self.c, self.src, self.name, self.path = converter, pattern, name, path
        self.pos = 0

    def fail(self, why: str) -> ConfigError:
        return _unsupported("pattern", self.path, f"{why} at position {self.pos} of {self.src!r}")

    def convert(self) -> str:
        if self.src.startswith("^"):
            self.pos = 1
        expr = self.alternation()
        if self.pos < len(self.src) and self.src[self.pos] == "$" and self.pos == len(self.src) - 1:
            self.pos += 1
        if self.pos != len(self.src):
            raise self.fail("an unexpected character" if self.src[self.pos] != ")" else "an unbalanced ')'")
        return expr

    def peek(self) -> str:
        return self.src[self.pos] if self.pos < len(self.src) else ""

    def alternation(self) -> str:
        alts = [self.sequence()]
        while self.peek() == "|":
            self.pos += 1
            alts.append(self.sequence())
        return " | ".join(a if a else '""' for a in alts)

    def sequence(self) -> str:
        items = []
        while self.pos < len(self.src) and self.peek() not in "|)":
            if self.peek() == "$" and self.pos == len(self.src) - 1:
                break
            atom = self.atom()
            items.append(self.quantified(atom) if atom else "")
        return " ".join(i for i in items if i)

    def quantified(self, atom: str) -> str:
        q = self.peek()
        if q not in ("*", "+", "?", "{"):
            return atom
        if q == "{":
            m = re.compile(r"\{(\d*)(,?)(\d*)\}").match(self.src, self.pos)
            if not m or not (m.group(1) or m.group(3)):
                return atom  # a literal "{", as Python's re reads it
            low = int(m.group(1) or 0)
            high = int(m.group(3)) if m.group(3) else (None if m.group(2) else low)
            self.pos = m.end()
        else:
            low, high = {"*": (0, None), "+": (1, None), "?": (0, 1)}[q]
            self.pos += 1
        if self.peek() == "?":  # lazy: the same strings
            self.pos += 1
        elif self.peek() == "+":
            raise self.fail("a possessive quantifier")
        if self.peek() in ("*", "+", "{"):
            raise self.fail("a repeated quantifier")
        if high is not None and high < low:
            raise self.fail(f"the count {{{low},{high}}} (max below min)")
        item = atom if _group(atom) == atom else self.c.rule(f"{self.name}-part", atom)
        return _repeat(item, low, high)

    def atom(self) -> str:
        ch = self.peek()
        if ch == "(":
            self.pos += 1
            if self.src.startswith("?:", self.pos):
                self.pos += 2
            elif self.peek() == "?":
                raise self.fail("a lookaround, named group or inline flag")
            inner = self.alternation()
            if self.peek() != ")":
                raise self.fail("an unclosed '('")
            self.pos += 1
            return f"({inner})" if inner else ""
        if ch == "[":
            return self.char_class()
        if ch == ".":
            self.pos += 1
            return self.chars([(0, 0x09), (0x0B, MAX_CODE)])
        if ch in ("*", "+", "?"):
            raise self.fail("nothing to repeat")
        if ch == "^" or ch == "$":
            raise self.fail("an anchor inside the pattern")
        if ch == "\\":
            ranges = self.escape(in_class=False)
            return self.chars(ranges)
        self.pos += 1
        return self.chars([(ord(ch), ord(ch))])

    def chars(self, ranges: Ranges) -> str:
        ranges = _normalize(ranges)
        if len(ranges) == 1 and ranges[0][0] == ranges[0][1]:
            return _literal(json.dumps(chr(ranges[0][0]), ensure_ascii=False)[1:-1])
        expr = _class_expr(ranges)
        if expr is None:
            raise self.fail("a class of characters that a JSON string cannot hold unescaped")
        return expr

    def escape(self, *, in_class: bool) -> Ranges:
        self.pos += 1
        if self.pos >= len(self.src):
            raise self.fail("a trailing backslash")
        ch = self.src[self.pos]
        self.pos += 1
        if ch.lower() in _CLASS_ESCAPES:
            ranges = _CLASS_ESCAPES[ch.lower()]
            return _complement(ranges) if ch.isupper() else ranges
        if ch in _CHAR_ESCAPES and not (ch == "0" and self.peek().isdigit()):
            return [(_CHAR_ESCAPES[ch], _CHAR_ESCAPES[ch])]
        if ch in "xuU":
            width = {"x": 2, "u": 4, "U": 8}[ch]
            digits = self.src[self.pos : self.pos + width]
            if len(digits) != width or not all(d in "0123456789abcdefABCDEF" for d in digits):
                raise self.fail(f"a malformed \\{ch} escape")
            self.pos += width
            return [(int(digits, 16), int(digits, 16))]
        if ch.isalnum():
            what = "a backreference" if ch.isdigit() else f"the escape \\{ch}"
            if ch == "b" and in_class:
                return [(0x08, 0x08)]
            raise self.fail(what)
        return [(ord(ch), ord(ch))]

    def char_class(self) -> str:
        self.pos += 1
        negate = self.peek() == "^"
        if negate:
            self.pos += 1
        ranges: Ranges = []
        first = True
        while True:
            if self.pos >= len(self.src):
                raise self.fail("an unclosed '['")
            ch = self.src[self.pos]
            if ch == "]" and not first:
                self.pos += 1
                break
            first = False
            if ch == "[" and self.src.startswith("[:", self.pos):
                raise self.fail("a POSIX class")
            if ch == "\\":
                lo_ranges = self.escape(in_class=True)
            else:
                self.pos += 1
                lo_ranges = [(ord(ch), ord(ch))]
            if (
                self.peek() == "-"
                and self.pos + 1 < len(self.src)
                and self.src[self.pos + 1] != "]"
                and len(lo_ranges) == 1
                and lo_ranges[0][0] == lo_ranges[0][1]
            ):
                self.pos += 1
                if self.peek() == "\\":
                    hi_ranges = self.escape(in_class=True)
                    if len(hi_ranges) != 1 or hi_ranges[0][0] != hi_ranges[0][1]:
                        raise self.fail("a range ending in a class")
                else:
                    hi_ranges = [(ord(self.peek()), ord(self.peek()))]
                    self.pos += 1
                lo, hi = lo_ranges[0][0], hi_ranges[0][0]
                if hi < lo:
                    raise self.fail("a range out of order")
                ranges.append((lo, hi))
            else:
                ranges.extend(lo_ranges)
        merged = _normalize(ranges)
        if negate:
            merged = _complement(merged)
        expr = _class_expr(merged)
        if expr is None:
            raise self.fail("a class of characters that a JSON string cannot hold unescaped")
        return expr


# -- the converter ------------------------------------------------------------------------------


def _pointer_get(document: Any, pointer: str, path: str) -> Any:
    node = document
    for raw in pointer.split("/")[1:] if pointer else []:
        key = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, Mapping) and key in node:
            node = node[key]
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            raise ConfigError(
                f"$ref '#{pointer}' at {path} points to nothing in the schema; fix the reference "
                "(e.g. '#/$defs/Name' with the definition under \"$defs\")."
            )
    return node


_PY_TYPES: dict[str, Any] = {"object": Mapping, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _matches_type(value: Any, type_name: str) -> bool:
    """Whether a JSON value (as Python) has the JSON Schema type ``type_name``."""
    if type_name in ("integer", "number"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        return type_name == "number" or isinstance(value, int) or value.is_integer()
    return isinstance(value, _PY_TYPES[type_name])


def _type_set(types: Any) -> set[str]:
    return {types} if isinstance(types, str) else set(types)


def _hint(parent: str, part: str) -> str:
    """The name hint of a child schema: ``parent-part``, or ``part`` alone below the top level (never
    ``root``, the top-level schema's own name)."""
    if parent and parent != "root":
        return f"{parent}-{part}"
    return part if _NAME_INVALID.sub("-", part).strip("-") != "root" else "root-child"


class _Converter:
    def __init__(self, document: Any) -> None:
        self.document = document
        self.rules: dict[str, str] = {}
        self.refs: dict[str, str] = {}

    # rules ----------------------------------------------------------------------------------
    def rule(self, hint: str, body: str) -> str:
        """A new rule named after ``hint`` (made unique), holding ``body``. Only the top-level schema
        has the hint ``root`` (:func:`_hint` keeps it from every other)."""
        name = _NAME_INVALID.sub("-", hint).strip("-") or "rule"
        if name in _PRIMITIVES:
            name += "-"
        if self.rules.get(name) == body:
            return name
        if name in self.rules:
            i = 1
            while f"{name}{i}" in self.rules and self.rules[f"{name}{i}"] != body:
                i += 1
            name = f"{name}{i}"
        self.rules[name] = body
        return name

    def primitive(self, name: str) -> str:
        if name not in self.rules:
            body, deps = _PRIMITIVES[name]
            self.rules[name] = body
            for dep in deps:
                self.primitive(dep)
        return name

    def grammar(self) -> str:
        ordered = (
            ["root"]
            + [n for n in self.rules if n != "root" and n not in _PRIMITIVES]
            + sorted(n for n in self.rules if n in _PRIMITIVES)
        )
        return "".join(f"{n} ::= {self.rules[n]}\n" for n in ordered)

    # schemas --------------------------------------------------------------------------------
    def visit(self, schema: Any, name: str, path: str) -> str:
        """A GBNF expression (a rule name, literal or group) for the JSON text ``schema`` accepts."""
        if schema is True or (isinstance(schema, Mapping) and not (set(schema) - _ANNOTATIONS)):
            return self.primitive("value")
        if schema is False:
            raise ConfigError(f"the schema at {path} is false, so no value matches it; remove it.")
        if not isinstance(schema, Mapping):
            raise ConfigError(f"the schema at {path} is a {type(schema).__name__}, not an object or a boolean.")
        for keyword in schema:
            if keyword in _UNSUPPORTED:
                raise _unsupported(keyword, path)
        if schema.get("uniqueItems") is True:
            raise _unsupported("uniqueItems", path, "the grammar cannot see earlier items")
        if "$ref" in schema:
            return self.ref(schema, name, path)
        if "allOf" in schema:
            return self.visit(self.merge_all_of(schema, path), name, path)
        for key in ("anyOf", "oneOf"):
            if key in schema:
                return self.union(schema, key, name, path)
        types = schema.get("type")
        if "const" in schema or "enum" in schema:
            return self.constants(schema, types, name, path)
        if isinstance(types, list):
            unique = list(dict.fromkeys(types))
            if len(unique) == 1:
                types = unique[0]
            else:
                alts = [self.visit({**schema, "type": t}, f"{name}-{t}", path) for t in unique]
                return self.rule(name, " | ".join(alts))
        if types is None:
            types = self.implied_type(schema)
            if types is None:
                return self.primitive("value")
        if types not in _TYPES:
            raise ConfigError(f"unknown type {types!r} at {path}; use one of {', '.join(_TYPES)}.")
        return getattr(self, f"visit_{types}")(schema, name, path)

    @staticmethod
    def implied_type(schema: Mapping[str, Any]) -> str | None:
        if any(k in schema for k in ("properties", "additionalProperties", "required")):
            return "object"
        if any(k in schema for k in ("items", "prefixItems", "minItems", "maxItems")):
            return "array"
        if any(k in schema for k in ("pattern", "minLength", "maxLength", "format")):
            return "string"
        if any(k in schema for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")):
            return "number"
        return None

    def ref(self, schema: Mapping[str, Any], name: str, path: str) -> str:
        ref = schema["$ref"]
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise ConfigError(
                f"$ref {ref!r} at {path} points outside the schema; only local references "
                "('#/$defs/Name') are resolved: inline the referenced schema."
            )
        siblings = {k: v for k, v in schema.items() if k != "$ref" and k not in _ANNOTATIONS}
        if siblings:
            return self.visit({"allOf": [{"$ref": ref}, siblings]}, name, path)
        if ref not in self.refs:
            pointer = ref[1:]
            target = _pointer_get(self.document, pointer, path)
            hint = pointer.rsplit("/", 1)[-1] or "root-ref"
            rule_name = self.rule(f"ref-{hint}", f"pending {ref}")  # named first: the target may refer to itself
            self.refs[ref] = rule_name
            self.rules[rule_name] = self.visit(target, _hint("", hint), f"#{pointer}")
        return self.refs[ref]

    def resolve(self, schema: Any, path: str, seen: frozenset[str] = frozenset()) -> Any:
        """``schema`` with a top-level $ref replaced by its target (for merging)."""
        while isinstance(schema, Mapping) and "$ref" in schema:
            ref = schema["$ref"]
            if not isinstance(ref, str) or not ref.startswith("#") or ref in seen:
                raise ConfigError(f"allOf at {path} merges a recursive or non-local $ref {ref!r}; inline it.")
            seen = seen | {ref}
            target = _pointer_get(self.document, ref[1:], path)
            rest = {k: v for k, v in schema.items() if k != "$ref"}
            schema = self.merge([target, rest], path) if rest else target
        return schema

    def merge_all_of(self, schema: Mapping[str, Any], path: str) -> Mapping[str, Any]:
        parts = schema["allOf"]
        if not isinstance(parts, list) or not parts:
            raise ConfigError(f"allOf at {path} must be a non-empty list of schemas.")
        rest = {k: v for k, v in schema.items() if k != "allOf"}
        return self.merge([rest, *parts], path)

    def merge(self, parts: Sequence[Any], path: str) -> Mapping[str, Any]:
        merged: dict[str, Any] = {}
        for i, part in enumerate(parts):
            part = self.resolve(part, f"{path}/allOf/{i}")
            if part is True:
                continue
            if not isinstance(part, Mapping):
                raise ConfigError(f"allOf at {path} holds {part!r}, which no value matches together with the rest.")
            if "allOf" in part:
                part = self.merge_all_of(part, f"{path}/allOf/{i}")
            for key, value in part.items():
                if key in _ANNOTATIONS:
                    continue
                if key not in merged:
                    merged[key] = value
                elif key == "properties":
                    props = dict(merged[key])
                    for prop, sub in value.items():
                        props[prop] = sub if prop not in props or props[prop] == sub else {"allOf": [props[prop], sub]}
                    merged[key] = props
                elif key == "required":
                    merged[key] = list(dict.fromkeys([*merged[key], *value]))
                elif key == "type" and merged[key] != value:
                    a, b = _type_set(merged[key]), _type_set(value)
                    common = a & b
                    if ("integer" in a and "number" in b) or ("integer" in b and "number" in a):
                        common.add("integer")  # every integer is a number
                    ordered = [t for t in _TYPES if t in common]
                    if not ordered:
                        raise ConfigError(
                            f"allOf at {path} combines types {merged[key]!r} and {value!r}, which no "
                            "value has; fix the schema."
                        )
                    merged[key] = ordered[0] if len(ordered) == 1 else ordered
                elif key in ("minimum", "minLength", "minItems", "exclusiveMinimum"):
                    merged[key] = max(merged[key], value)
                elif key in ("maximum", "maxLength", "maxItems", "exclusiveMaximum"):
                    merged[key] = min(merged[key], value)
                elif merged[key] != value:
                    raise _unsupported("allOf", path, f"its parts set {key!r} differently")
        return merged

    def union(self, schema: Mapping[str, Any], key: str, name: str, path: str) -> str:
        alternatives = schema[key]
        if not isinstance(alternatives, list) or not alternatives:
            raise ConfigError(f"{key} at {path} must be a non-empty list of schemas.")
        rest = {k: v for k, v in schema.items() if k != key and k not in _ANNOTATIONS}
        alts = []
        for i, alt in enumerate(alternatives):
            sub = alt if not rest else {"allOf": [rest, alt]}
            alts.append(self.visit(sub, f"{name}-{i}", f"{path}/{key}/{i}"))
        return self.rule(name, " | ".join(alts))

    def constants(self, schema: Mapping[str, Any], types: Any, name: str, path: str) -> str:
        values = [schema["const"]] if "const" in schema else schema["enum"]
        if not isinstance(values, list) or not values:
            raise ConfigError(f"enum at {path} must be a non-empty list.")
        if types is not None:
            allowed = [types] if isinstance(types, str) else list(types)
            values = [v for v in values if any(_matches_type(v, t) for t in allowed)]
        strings = [v for v in values if isinstance(v, str)]
        for keyword, check in (("minLength", lambda s, n: len(s) >= n), ("maxLength", lambda s, n: len(s) <= n)):
            if keyword in schema:
                values = [v for v in values if not isinstance(v, str) or check(v, schema[keyword])]
        if not values:
            raise ConfigError(
                f"no value of the enum/const at {path} has the schema's type or length"
                f"{' (' + ', '.join(map(repr, strings)) + ')' if strings else ''}; fix the schema."
            )
        try:
            literals = list(dict.fromkeys(self.constant(v) for v in values))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"enum/const at {path} holds a value that is not JSON ({exc}).") from None
        return self.rule(name, " | ".join(_group(lit) if " " in lit and len(literals) > 1 else lit for lit in literals))

    def constant(self, value: Any) -> str:
        """The JSON text of ``value``: scalars exactly, arrays and objects (members in their order)
        with whitespace allowed where JSON allows it."""
        if isinstance(value, Mapping):
            ws = self.primitive("ws")
            members = f' "," {ws} '.join(
                f'{_constant(str(k))} {ws} ":" {ws} {self.constant(v)} {ws}' for k, v in value.items()
            )
            return f'"{{" {ws} ' + (members + " " if members else "") + '"}"'
        if isinstance(value, (list, tuple)):
            ws = self.primitive("ws")
            items = f' "," {ws} '.join(f"{self.constant(v)} {ws}" for v in value)
            return f'"[" {ws} ' + (items + " " if items else "") + '"]"'
        return _constant(value)

    # one method per type ----------------------------------------------------------------------
    def visit_null(self, schema: Mapping[str, Any], name: str, path: str) -> str:
        return self.primitive("null")

    def visit_boolean(self, schema: Mapping[str, Any], name: str, path: str) -> str:
        return self.primitive("boolean")

    def visit_integer(self, schema: Mapping[str, Any], name: str, path: str) -> str:
        lo, hi = self.bounds(schema, path, integer=True)
        if lo is None and hi is None:
            return self.primitive("integer")
        expr = _integer_range(lo, hi)
        if expr is None:
            raise ConfigError(f"no integer is within the bounds at {path} (minimum {lo}, maximum {hi}); fix them.")
        return self.rule(name, expr)

    def visit_number(self, schema: Mapping[str, Any], name: str, path: str) -> str:
        lo, _ = self.bounds(schema, path, integer=False)
        if lo is not None and lo >= 0:
            frac = self.primitive("digits")
            return self.rule(name, f'("0" | [1-9] [0-9]{{0,{MAX_DIGITS - 1}}}) ("." {frac})? ([eE] [-+]? {frac})?')
        return self.primitive("number")

    @staticmethod
    def bounds(schema: Mapping[str, Any], path: str, *, integer: bool) -> tuple[Any, Any]:
        lo = hi = None
        for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            value = schema.get(key)
            if value is None or isinstance(value, bool) and key.startswith("exclusive"):
                continue  # draft 4's boolean form is read with minimum/maximum below
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise ConfigError(f"{key} at {path} must be a finite number, not {value!r}.")
        if "minimum" in schema and schema["minimum"] is not None:
            lo = schema["minimum"]
            if schema.get("exclusiveMinimum") is True:
                lo = (math.floor(lo) + 1) if integer else lo
        if not isinstance(schema.get("exclusiveMinimum"), bool) and schema.get("exclusiveMinimum") is not None:
            ex = schema["exclusiveMinimum"]
            candidate = math.floor(ex) + 1 if integer else ex
            lo = candidate if lo is None else max(lo, candidate)
        if "maximum" in schema and schema["maximum"] is not None:
            hi = schema["maximum"]
            if schema.get("exclusiveMaximum") is True:
                hi = (math.ceil(hi) - 1) if integer else hi
        if not isinstance(schema.get("exclusiveMaximum"), bool) and schema.get("exclusiveMaximum") is not None:
            ex = schema["exclusiveMaximum"]
            candidate = math.ceil(ex) - 1 if integer else ex
            hi = candidate if hi is None else min(hi, candidate)
        if integer:
            lo = None if lo is None else math.ceil(lo)
            hi = None if hi is None else math.floor(hi)
        return lo, hi

    def visit_string(self, schema: Mapping[str, Any], name: str, path: str) -> str:
        if "pattern" in schema:
            pattern = schema["pattern"]
            if not isinstance(pattern, str):
                raise ConfigError(f"pattern at {path} must be a string.")
            if "minLength" in schema or "maxLength" in schema:
                raise _unsupported("minLength/maxLength", path, "together with pattern; put the length in the pattern")
            body = _Pattern(self, pattern, name, path).convert()
            return self.rule(name, '"\\"" ' + (f"({body})" if body else "") + ' "\\""')
        fmt = schema.get("format")
        if fmt in _FORMATS and "minLength" not in schema and "maxLength" not in schema:
            return self.primitive(_FORMATS[fmt])
        low, high = schema.get("minLength", 0), schema.get("maxLength")
        for key, value in (("minLength", low), ("maxLength", high)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise ConfigError(f"{key} at {path} must be a non-negative integer, not {value!r}.")
        if high is not None and high < low:
            raise ConfigError(f"maxLength {high} is below minLength {low} at {path}; fix the schema.")
        if low == 0 and high is None:
            return self.primitive("string")
        char = self.primitive("char")
        return self.rule(name, '"\\"" ' + (_repeat(char, low, high) or "") + ' "\\""')

    def visit_array(self, schema: Mapping[str, Any], name: str, path: str) -> str:
        prefix = schema.get("prefixItems")
        items = schema.get("items")
        if isinstance(items, list):  # draft 4 to 2019-09: a list of items is a tuple
            prefix, items = items, schema.get("additionalItems", False)
        low, high = schema.get("minItems", 0), schema.get("maxItems")
        for key, value in (("minItems", low), ("maxItems", high)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise ConfigError(f"{key} at {path} must be a non-negative integer, not {value!r}.")
        if high is not None and high < low:
            raise ConfigError(f"maxItems {high} is below minItems {low} at {path}; fix the schema.")
        ws = self.primitive("ws")
        sep = f'"," {ws} '
        if prefix:
            if not isinstance(prefix, list):
                raise ConfigError(f"prefixItems at {path} must be a list of schemas.")
            if high is not None and high < len(prefix):
                raise _unsupported("maxItems", path, "below the number of prefixItems")
            parts = [self.visit(p, f"{name}-{i}", f"{path}/prefixItems/{i}") + f" {ws}" for i, p in enumerate(prefix)]
            body = f'"[" {ws} ' + " ".join(("" if i == 0 else sep) + p for i, p in enumerate(parts))
            more_low = max(low - len(prefix), 0)
            more_high = None if high is None else high - len(prefix)
            if items is False or items is None and more_low == 0:
                if more_low:
                    raise ConfigError(f"minItems at {path} asks for more items than prefixItems allows.")
            else:
                item = self.visit(True if items is None else items, f"{name}-item", f"{path}/items")
                body += " " + _repeat(self.rule(f"{name}-more", f"{sep}{item} {ws}"), more_low, more_high)
            return self.rule(name, body.rstrip() + ' "]"')
        if items is False:
            if low:
                raise ConfigError(f"items is false at {path} but minItems is {low}; fix the schema.")
            return self.rule(name, f'"[" {ws} "]"')
        if (items is None or items is True) and low == 0 and high is None:
            return self.primitive("array")
        item = self.visit(True if items is None else items, f"{name}-item", f"{path}/items")
        if high == 0:
            return self.rule(name, f'"[" {ws} "]"')
        more = _repeat(
            self.rule(f"{name}-more", f"{sep}{item} {ws}"), max(low - 1, 0), None if high is None else high - 1
        )
        inner = f"{item} {ws}" + (f" {more}" if more else "")
        body = f'"[" {ws} ' + (inner if low >= 1 else f"({inner})?") + ' "]"'
        return self.rule(name, body)

    def visit_object(self, schema: Mapping[str, Any], name: str, path: str) -> str:
        properties = schema.get("properties") or {}
        required = schema.get("required") or []
        if not isinstance(properties, Mapping) or not isinstance(required, list):
            raise ConfigError(f"properties at {path} must be an object and required a list of names.")
        additional = schema.get("additionalProperties")
        if additional is None and not properties and not required:
            additional = True
        if additional is True and not properties and not required:
            return self.primitive("object")
        props = dict(properties)
        for key in required:
            props.setdefault(key, True)  # required but not described: any value
        ws = self.primitive("ws")
        kvs: list[tuple[str, bool]] = []
        for prop, sub in props.items():
            value = self.visit(sub, _hint(name, prop), f"{path}/properties/{prop}")
            kvs.append((f'{_literal(_json_text(prop))} {ws} ":" {ws} {value} {ws}', prop in required))
        extra = None
        if additional is not None and additional is not False:
            value = self.visit(additional, f"{name}-additional", f"{path}/additionalProperties")
            key = self.key_except(list(props), f"{name}-additional-key")
            extra = self.rule(f"{name}-additional-kv", f'{key} {ws} ":" {ws} {value} {ws}')
        body = self.members(kvs, extra, name, ws)
        return self.rule(name, f'"{{" {ws} ' + (body + " " if body else "") + '"}"')

    def members(self, kvs: list[tuple[str, bool]], extra: str | None, name: str, ws: str) -> str:
        """The members of an object: ``kvs`` in order (required or optional), then any number of
        ``extra`` members, with commas between."""
        sep = f'"," {ws}'
        # after[i][first]: members i.. where ``first`` says no member was written yet (no comma before)
        memo: dict[tuple[int, bool], str] = {}

        def tail(i: int, first: bool) -> str:
            if (i, first) in memo:
                return memo[(i, first)]
            if i == len(kvs):
                if extra is None:
                    expr = ""
                elif first:
                    expr = f"({extra} ({sep} {extra})*)?"
                else:
                    expr = f"({sep} {extra})*"
            else:
                kv, is_required = kvs[i]
                written = ("" if first else sep + " ") + kv
                rest = tail(i + 1, False)
                taken = f"{written} {rest}".strip()
                if is_required:
                    expr = taken
                else:
                    skipped = tail(i + 1, first)
                    expr = f"{_group(taken)} | {_group(skipped) if skipped else chr(34) * 2}"
            if expr and " | " in expr and i < len(kvs):  # a shared tail: a rule, so the grammar stays linear
                expr = self.rule(f"{name}-{'first' if first else 'next'}-{i}", expr)
            memo[(i, first)] = expr
            return expr

        return tail(0, True)

    def key_except(self, names: list[str], hint: str) -> str:
        """A JSON string of plain characters (no escapes) that is none of ``names``."""
        plain_ranges = _subtract([(0, MAX_CODE)], _NEEDS_ESCAPE)
        plain = _class_expr(plain_ranges)
        names = [n for n in names if not _intersect(_normalize([(ord(c), ord(c)) for c in n]), _NEEDS_ESCAPE)]
        if not names:  # (a name with a quote, backslash or control character is never written plainly)
            return self.rule(hint, f'"\\"" {plain}* "\\""')
        trie: dict[str, Any] = {}
        for n in names:
            node = trie
            for ch in n:
                node = node.setdefault(ch, {})
            node[""] = {}  # the end of a name

        def expr(node: dict[str, Any]) -> str:
            alts = [] if "" in node else ['"\\""']
            chars = sorted(c for c in node if c)
            for ch in chars:
                alts.append(f"{_literal(ch)} ({expr(node[ch])})")
            other = _class_expr(_subtract(plain_ranges, [(ord(c), ord(c)) for c in chars]))
            if other:
                alts.append(f'{other} {plain}* "\\""')
            return " | ".join(alts)

        return self.rule(hint, f'"\\"" ({expr(trie)})')


def schema_to_gbnf(schema: Mapping[str, Any] | bool) -> str:
    """A GBNF grammar (start rule ``root``) for the JSON texts that ``schema`` accepts.

    ``schema``: a JSON Schema (draft 4 to 2020-12) as a dict, e.g. from a Pydantic model's
    ``model_json_schema()`` or an OpenAI ``response_format``'s ``json_schema.schema``. What is
    enforced, and what not, is listed in this module's docstring; every text the grammar accepts
    is valid JSON that the schema accepts.

    Raises :class:`~llcuda.errors.ConfigError` for a keyword the grammar cannot express, a
    pattern outside the supported subset, a ``$ref`` that does not resolve within the schema, or
    a schema that no value can match.
    """
    converter = _Converter(schema)
    top = converter.visit(schema, "root", "#")
    if top != "root":  # a shared rule or a reference: root names it
        converter.rules["root"] = top
    return converter.grammar()


JSON_OBJECT_GRAMMAR = (  # any JSON object: response_format {"type": "json_object"}
    "root ::= object\n"
    + "".join(
        f"{name} ::= {_PRIMITIVES[name][0]}\n"
        for name in sorted(
            ("array", "boolean", "char", "digits", "integer", "null", "number", "object", "string", "value", "ws")
        )
    )
)
