"""JSON Schema to GBNF, checked by the real libllama grammar sampler.

Every grammar goes through ``llama_sampler_init_grammar`` (NULL means llama.cpp's parser refused
it). What a grammar accepts is found by driving the sampler over a vocabulary (a vocab-only GGUF
of the pinned llama.cpp tree): each token of a text must keep a finite logit when the grammar is
applied (then it is accepted), and at the end the end-of-sequence token must be allowed. Valid
instances must be accepted and invalid ones refused, each also checked with ``jsonschema``; and
random walks through each grammar must only ever produce JSON that the schema accepts.
"""

from __future__ import annotations

import ctypes
import doctest
import json
import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from llcuda.errors import ConfigError
from llcuda.grammar import JSON_OBJECT_GRAMMAR, MAX_REPETITION, schema_to_gbnf
from llcuda.libllama.bindings import load_library

c_int32, c_float, c_void_p = ctypes.c_int32, ctypes.c_float, ctypes.c_void_p


class TokenData(ctypes.Structure):
    # typedef struct llama_token_data { llama_token id; float logit; float p; } llama_token_data;
    _fields_ = [("id", c_int32), ("logit", c_float), ("p", c_float)]


class TokenDataArray(ctypes.Structure):
    # typedef struct llama_token_data_array { llama_token_data * data; size_t size; int64_t selected;
    #                                         bool sorted; } llama_token_data_array;
    _fields_ = [
        ("data", ctypes.POINTER(TokenData)),
        ("size", ctypes.c_size_t),
        ("selected", ctypes.c_int64),
        ("sorted", ctypes.c_bool),
    ]


# What the engine does not call (the bindings declare llama_sampler_init_grammar and llama_vocab_eos).
_DECLARATIONS: dict[str, tuple[Any, list[Any]]] = {
    # void llama_sampler_apply(struct llama_sampler * smpl, llama_token_data_array * cur_p);
    "llama_sampler_apply": (None, [c_void_p, ctypes.POINTER(TokenDataArray)]),
    # void llama_sampler_accept(struct llama_sampler * smpl, llama_token token);
    "llama_sampler_accept": (None, [c_void_p, c_int32]),
}


class Grammars:
    """libllama's grammar sampler over one vocabulary."""

    def __init__(self, lib: Any, vocab: Any) -> None:
        self.lib, self.vocab = lib, vocab
        self.eos = lib.llama_vocab_eos(vocab)
        n_vocab = lib.llama_vocab_n_tokens(vocab)
        pieces = {t: self.piece(t) for t in range(n_vocab)}
        # one-character tokens for random walks: every character JSON needs is one of them
        self.walk_pieces = {
            t: p for t, p in pieces.items() if len(p) == 1 and (p.isascii() and p.isprintable() or p in "\n\té")
        }
        self.walk_tokens = list(self.walk_pieces)
        self.closing = {t for t, p in self.walk_pieces.items() if any(c in p for c in '"]}')}

    def piece(self, token: int) -> str:
        buf = ctypes.create_string_buffer(64)
        n = self.lib.llama_token_to_piece(self.vocab, token, buf, 64, 0, True)
        return buf.raw[: max(n, 0)].decode("utf-8", "replace")

    def tokenize(self, text: str) -> list[int]:
        raw = text.encode("utf-8")
        buf = (c_int32 * (len(raw) + 8))()
        n = self.lib.llama_tokenize(self.vocab, raw, len(raw), buf, len(raw) + 8, False, False)
        assert n >= 0
        return list(buf[:n])

    def sampler(self, grammar: str) -> int | None:
        return self.lib.llama_sampler_init_grammar(self.vocab, grammar.encode("utf-8"), b"root")

    def allowed(self, sampler: int, tokens: list[int]) -> list[int]:
        """Those of ``tokens`` the grammar allows next."""
        data = (TokenData * len(tokens))(*(TokenData(t, 0.0, 0.0) for t in tokens))
        array = TokenDataArray(data, len(tokens), -1, False)
        self.lib.llama_sampler_apply(sampler, ctypes.byref(array))
        return [data[i].id for i in range(len(tokens)) if math.isfinite(data[i].logit)]

    def accepts(self, grammar: str, text: str) -> bool:
        """Whether the grammar matches all of ``text``."""
        sampler = self.sampler(grammar)
        assert sampler, f"llama.cpp refused the grammar:\n{grammar}"
        try:
            for token in self.tokenize(text):
                if not self.allowed(sampler, [token]):
                    return False
                self.lib.llama_sampler_accept(sampler, token)
            return bool(self.allowed(sampler, [self.eos]))
        finally:
            self.lib.llama_sampler_free(sampler)

    def walk(self, grammar: str, rng: random.Random, max_tokens: int = 1500) -> str | None:
        """A random text the grammar matches (None if the walk did not end within ``max_tokens``)."""
        sampler = self.sampler(grammar)
        assert sampler, f"llama.cpp refused the grammar:\n{grammar}"
        out: list[str] = []
        try:
            for step in range(max_tokens):
                options = self.allowed(sampler, self.walk_tokens + [self.eos])
                assert options, f"the grammar allows nothing after {''.join(out)!r}"
                late = step > 100  # then prefer tokens that close strings, objects and arrays
                if self.eos in options and (len(options) == 1 or rng.random() < 0.5):
                    return "".join(out)
                options = [t for t in options if t != self.eos]
                closing = [t for t in options if t in self.closing]
                token = rng.choice(closing if late and closing and rng.random() < 0.6 else options)
                self.lib.llama_sampler_accept(sampler, token)
                out.append(self.walk_pieces[token])
            return None
        finally:
            self.lib.llama_sampler_free(sampler)


@pytest.fixture(scope="module")
def grammars(binaries, llama_src: Path) -> Iterator[Grammars]:
    lib = load_library(binaries)
    for name, (restype, argtypes) in _DECLARATIONS.items():
        func = getattr(lib, name)
        func.restype, func.argtypes = restype, argtypes
    params = lib.llama_model_default_params()
    params.vocab_only = True
    path = llama_src / "models" / "ggml-vocab-llama-bpe.gguf"  # byte-level BPE: no space prefix
    model = lib.llama_model_load_from_file(str(path).encode(), params)
    assert model, f"libllama could not load {path}"
    yield Grammars(lib, lib.llama_model_get_vocab(model))
    lib.llama_model_free(model)


FORMATS = jsonschema.Draft202012Validator.FORMAT_CHECKER  # dates, uuids: format is otherwise an annotation


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _valid(schema: Any, text: str) -> bool:
    try:
        value = json.loads(text, parse_constant=_not_json)
    except ValueError:
        return False
    try:
        jsonschema.validate(value, schema, format_checker=FORMATS)
    except jsonschema.ValidationError:
        return False
    return True


def _forms(value: Any) -> list[str]:
    """``value`` as compact, default and indented JSON text."""
    return [
        json.dumps(value, separators=(",", ":"), ensure_ascii=False),
        json.dumps(value),
        json.dumps(value, indent=2, ensure_ascii=False),
    ]


def check(grammars: Grammars, schema: Any, valid: list[Any], invalid: list[str]) -> str:
    """``schema``'s grammar accepts every form of each valid value and refuses each invalid text."""
    grammar = schema_to_gbnf(schema)
    for value in valid:
        for text in _forms(value):
            assert _valid(schema, text), f"the test's own valid instance fails the schema: {text}"
            assert grammars.accepts(grammar, text), f"refused a valid instance:\n{text}\n\ngrammar:\n{grammar}"
    for text in invalid:
        assert not _valid(schema, text), f"the test's own invalid instance passes the schema: {text}"
        assert not grammars.accepts(grammar, text), f"accepted an invalid instance:\n{text}\n\ngrammar:\n{grammar}"
    return grammar


def walks(grammars: Grammars, schema: Any, n: int = 12, seed: int = 0) -> list[str]:
    """``n`` random walks through ``schema``'s grammar: each finished one must be valid."""
    grammar = schema_to_gbnf(schema)
    rng = random.Random(seed)
    texts = [t for t in (grammars.walk(grammar, rng) for _ in range(n)) if t is not None]
    assert len(texts) >= n // 2, f"only {len(texts)} of {n} walks ended"
    for text in texts:
        assert _valid(schema, text), f"a walk through the grammar produced invalid output:\n{text}\n\n{grammar}"
    return texts


# -- real-world schemas ---------------------------------------------------------------------------

PERSON = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Person",
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 130},
        "email": {"type": "string", "format": "email"},
        "born": {"type": "string", "format": "date"},
        "address": {
            "type": "object",
            "properties": {
                "street": {"type": "string"},
                "city": {"type": "string"},
                "zip": {"type": "string", "pattern": "^[0-9]{5}(-[0-9]{4})?$"},
                "country": {"enum": ["US", "CA", "MX"]},
            },
            "required": ["street", "city", "country"],
            "additionalProperties": False,
        },
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
    },
    "required": ["name", "age", "address"],
    "additionalProperties": False,
}


def test_person_with_address(grammars: Grammars) -> None:
    address = {"street": "1 Main St", "city": "Springfield", "zip": "12345-6789", "country": "US"}
    check(
        grammars,
        PERSON,
        valid=[
            {"name": "Ann", "age": 30, "address": address},
            {
                "name": 'Zoë "Z" Smith',
                "age": 0,
                "email": "z@example.org",
                "born": "1990-02-28",
                "address": {"street": "Rue\n2", "city": "Montréal", "country": "CA"},
                "tags": ["a", "b\\c", ""],
            },
            {"name": "B", "age": 130, "address": address, "tags": []},
        ],
        invalid=[
            '{"name":"Ann","age":30}',  # address is required
            '{"name":"","age":30,"address":{"street":"s","city":"c","country":"US"}}',  # minLength
            '{"name":"Ann","age":131,"address":{"street":"s","city":"c","country":"US"}}',  # maximum
            '{"name":"Ann","age":-1,"address":{"street":"s","city":"c","country":"US"}}',  # minimum
            '{"name":"Ann","age":3.5,"address":{"street":"s","city":"c","country":"US"}}',  # integer
            '{"name":"Ann","age":30,"address":{"street":"s","city":"c","country":"FR"}}',  # enum
            '{"name":"Ann","age":30,"address":{"street":"s","city":"c","zip":"1234","country":"US"}}',  # pattern
            '{"name":"Ann","age":30,"address":{"street":"s","city":"c","country":"US","x":1}}',  # additional
            '{"name":"Ann","age":30,"address":{"street":"s","city":"c","country":"US"},"tags":["a","b","c","d"]}',
            '{"name":"Ann","age":30,"born":"1990-13-01","address":{"street":"s","city":"c","country":"US"}}',
            '{"name":"Ann","age":30,"born":"1990-04-31","address":{"street":"s","city":"c","country":"US"}}',
            '{"name":"Ann","age":30,"email":"nobody","address":{"street":"s","city":"c","country":"US"}}',
            '{"name":"Ann","age":30,"address":{"street":"s","city":"c","country":"US"},}',  # trailing comma
            "{'name':'Ann','age':30,'address':{'street':'s','city':'c','country':'US'}}",  # not JSON
        ],
    )
    walks(grammars, PERSON)


def test_properties_come_in_the_schemas_order(grammars: Grammars) -> None:
    """Stricter than the schema, by design: the model writes the properties in the listed order."""
    grammar = schema_to_gbnf(PERSON)
    text = '{"age":30,"name":"Ann","address":{"street":"s","city":"c","country":"US"}}'
    assert _valid(PERSON, text) and not grammars.accepts(grammar, text)


ITEMS = {
    "type": "object",
    "properties": {
        "items": {
            "type": "array",
            "minItems": 1,
            "maxItems": 4,
            "items": {
                "type": "object",
                "properties": {
                    "sku": {"type": "string", "pattern": "^[A-Z]{3}-\\d{3}$"},
                    "quantity": {"type": "integer", "exclusiveMinimum": 0, "maximum": 99},
                    "price": {"type": "number", "minimum": 0},
                    "gift": {"type": "boolean"},
                },
                "required": ["sku", "quantity", "price"],
                "additionalProperties": False,
            },
        },
        "note": {"type": ["string", "null"], "maxLength": 20},
    },
    "required": ["items", "note"],
    "additionalProperties": False,
}


def test_a_list_of_items(grammars: Grammars) -> None:
    one = {"sku": "ABC-123", "quantity": 1, "price": 9.99}
    check(
        grammars,
        ITEMS,
        valid=[
            {"items": [one], "note": None},
            {"items": [one, {"sku": "XYZ-000", "quantity": 99, "price": 0, "gift": True}] * 2, "note": "leave at door"},
            {"items": [{"sku": "QQQ-999", "quantity": 12, "price": 1.5e3, "gift": False}], "note": ""},
        ],
        invalid=[
            '{"items":[],"note":null}',
            '{"items":[{"sku":"ABC-123","quantity":0,"price":1}],"note":null}',
            '{"items":[{"sku":"ABC-123","quantity":100,"price":1}],"note":null}',
            '{"items":[{"sku":"abc-123","quantity":1,"price":1}],"note":null}',
            '{"items":[{"sku":"ABC-123","quantity":1,"price":-1}],"note":null}',
            '{"items":[{"sku":"ABC-123","quantity":1}],"note":null}',
            '{"items":[{"sku":"ABC-123","quantity":1,"price":1}]}',
            '{"items":[{"sku":"ABC-123","quantity":1,"price":1}],"note":"this note is far too long"}',
            '{"items":' + json.dumps([one] * 5) + ',"note":null}',
        ],
    )
    walks(grammars, ITEMS)


TREE = {
    "$defs": {
        "node": {
            "type": "object",
            "properties": {
                "value": {"type": "integer"},
                "children": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 2},
            },
            "required": ["value", "children"],
            "additionalProperties": False,
        }
    },
    "$ref": "#/$defs/node",
}

LINKED_LIST = {  # draft-07 "definitions", a nullable reference through anyOf
    "definitions": {
        "cell": {
            "type": "object",
            "properties": {
                "head": {"type": "string", "enum": ["a", "b"]},
                "tail": {"anyOf": [{"$ref": "#/definitions/cell"}, {"type": "null"}]},
            },
            "required": ["head", "tail"],
            "additionalProperties": False,
        }
    },
    "type": "object",
    "properties": {"list": {"$ref": "#/definitions/cell"}},
    "required": ["list"],
    "additionalProperties": False,
}


def test_recursive_defs(grammars: Grammars) -> None:
    leaf = {"value": -3, "children": []}
    check(
        grammars,
        TREE,
        valid=[leaf, {"value": 1, "children": [leaf, {"value": 2, "children": [leaf]}]}],
        invalid=[
            '{"value":1,"children":[{"value":2}]}',
            '{"value":1,"children":[' + ",".join([json.dumps(leaf)] * 3) + "]}",
            '{"value":"1","children":[]}',
        ],
    )
    check(
        grammars,
        LINKED_LIST,
        valid=[{"list": {"head": "a", "tail": {"head": "b", "tail": None}}}],
        invalid=['{"list":{"head":"c","tail":null}}', '{"list":{"head":"a","tail":{"head":"b"}}}'],
    )
    walks(grammars, TREE)
    walks(grammars, LINKED_LIST)


# OpenAI structured outputs guide: chain of thought, UI generation (recursive "#"), data extraction,
# moderation (nullable enum).
MATH_REASONING = {
    "type": "object",
    "properties": {
        "steps": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"explanation": {"type": "string"}, "output": {"type": "string"}},
                "required": ["explanation", "output"],
                "additionalProperties": False,
            },
        },
        "final_answer": {"type": "string"},
    },
    "required": ["steps", "final_answer"],
    "additionalProperties": False,
}

UI = {
    "type": "object",
    "properties": {
        "type": {
            "type": "string",
            "description": "The type of the UI component",
            "enum": ["div", "button", "header", "section", "field", "form"],
        },
        "label": {"type": "string", "description": "The label of the UI component"},
        "children": {"type": "array", "items": {"$ref": "#"}},
        "attributes": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "value": {"type": "string"}},
                "required": ["name", "value"],
                "additionalProperties": False,
            },
        },
    },
    "required": ["type", "label", "children", "attributes"],
    "additionalProperties": False,
}

RESEARCH_PAPER = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "authors": {"type": "array", "items": {"type": "string"}},
        "abstract": {"type": "string"},
        "keywords": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["title", "authors", "abstract", "keywords"],
    "additionalProperties": False,
}

MODERATION = {
    "type": "object",
    "properties": {
        "is_violating": {"type": "boolean"},
        "category": {"type": ["string", "null"], "enum": ["violence", "sexual", "self_harm", None]},
        "explanation_if_violating": {"type": ["string", "null"]},
    },
    "required": ["is_violating", "category", "explanation_if_violating"],
    "additionalProperties": False,
}


def test_openai_structured_output_examples(grammars: Grammars) -> None:
    check(
        grammars,
        MATH_REASONING,
        valid=[
            {
                "steps": [
                    {"explanation": "Subtract 7 from both sides.", "output": "8x = -30"},
                    {"explanation": "Divide by 8.", "output": "x = -3.75"},
                ],
                "final_answer": "x = -3.75",
            }
        ],
        invalid=['{"steps":[{"explanation":"e"}],"final_answer":"x"}', '{"final_answer":"x"}'],
    )
    button = {"type": "button", "label": "Submit", "children": [], "attributes": [{"name": "id", "value": "go"}]}
    check(
        grammars,
        UI,
        valid=[{"type": "form", "label": "Sign up", "children": [button], "attributes": []}],
        invalid=[
            '{"type":"span","label":"x","children":[],"attributes":[]}',
            '{"type":"div","label":"x","children":[{"type":"div"}],"attributes":[]}',
        ],
    )
    check(
        grammars,
        RESEARCH_PAPER,
        valid=[
            {
                "title": "Attention",
                "authors": ["A. Vaswani", "N. Shazeer"],
                "abstract": "We propose...",
                "keywords": ["transformer"],
            }
        ],
        invalid=['{"title":"t","authors":"A","abstract":"a","keywords":[]}'],
    )
    check(
        grammars,
        MODERATION,
        valid=[
            {"is_violating": False, "category": None, "explanation_if_violating": None},
            {"is_violating": True, "category": "violence", "explanation_if_violating": "threat"},
        ],
        invalid=[
            '{"is_violating":true,"category":"spam","explanation_if_violating":null}',
            '{"is_violating":"yes","category":null,"explanation_if_violating":null}',
        ],
    )
    for schema in (MATH_REASONING, UI, RESEARCH_PAPER, MODERATION):
        walks(grammars, schema, n=8)


PYDANTIC = {  # what Pydantic 2 writes for a model with an optional nested model, an enum and a list
    "$defs": {
        "Color": {"enum": ["red", "green", "blue"], "title": "Color", "type": "string"},
        "Point": {
            "properties": {"x": {"title": "X", "type": "number"}, "y": {"title": "Y", "type": "number"}},
            "required": ["x", "y"],
            "title": "Point",
            "type": "object",
        },
    },
    "properties": {
        "name": {"title": "Name", "type": "string"},
        "color": {"$ref": "#/$defs/Color", "default": "red"},
        "origin": {"anyOf": [{"$ref": "#/$defs/Point"}, {"type": "null"}], "default": None},
        "path": {"items": {"$ref": "#/$defs/Point"}, "title": "Path", "type": "array"},
        "legacy": {"allOf": [{"$ref": "#/$defs/Point"}], "description": "Pydantic 1 wraps a reference in allOf"},
    },
    "required": ["name", "path"],
    "title": "Shape",
    "type": "object",
}


def test_pydantic_schema(grammars: Grammars) -> None:
    p = {"x": 1, "y": -2.5}
    check(
        grammars,
        PYDANTIC,
        valid=[
            {"name": "s", "path": []},
            {"name": "s", "color": "blue", "origin": None, "path": [p, p], "legacy": {"x": 0, "y": 0}},
            {"name": "s", "origin": p, "path": [p]},
        ],
        invalid=[
            '{"name":"s","color":"pink","path":[]}',
            '{"name":"s","path":[{"x":1}]}',
            '{"name":"s","legacy":{"x":1},"path":[]}',
            '{"path":[]}',
        ],
    )
    walks(grammars, PYDANTIC)


def test_all_of_merges_objects(grammars: Grammars) -> None:
    schema = {
        "$defs": {"named": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}},
        "allOf": [
            {"$ref": "#/$defs/named"},
            {"type": "object", "properties": {"id": {"type": "integer", "minimum": 1}}, "required": ["id"]},
        ],
        "unevaluatedProperties": False,
    }
    check(grammars, schema, valid=[{"name": "a", "id": 1}], invalid=['{"name":"a"}', '{"id":1}', '{"name":"a","id":0}'])


def test_any_of_one_of_const_and_nullable(grammars: Grammars) -> None:
    schema = {
        "type": "object",
        "properties": {
            "kind": {"const": "circle"},
            "size": {
                "oneOf": [
                    {"type": "integer", "minimum": 1, "maximum": 3},
                    {"type": "string", "enum": ["small", "large"]},
                ]
            },
            "meta": {
                "type": ["object", "null"],
                "properties": {"v": {"const": [1, {"a": None}]}},
                "required": ["v"],
                "additionalProperties": False,
            },
        },
        "required": ["kind", "size", "meta"],
        "additionalProperties": False,
    }
    check(
        grammars,
        {k: v for k, v in schema.items()},
        valid=[
            {"kind": "circle", "size": 2, "meta": None},
            {"kind": "circle", "size": "large", "meta": {"v": [1, {"a": None}]}},
        ],
        invalid=[
            '{"kind":"square","size":2,"meta":null}',
            '{"kind":"circle","size":4,"meta":null}',
            '{"kind":"circle","size":"medium","meta":null}',
            '{"kind":"circle","size":1,"meta":{"v":[1]}}',
        ],
    )


def test_additional_properties(grammars: Grammars) -> None:
    schema = {
        "type": "object",
        "properties": {"id": {"type": "integer"}, "ok": {"type": "boolean"}},
        "required": ["id"],
        "additionalProperties": {"type": "string"},
    }
    check(
        grammars,
        schema,
        valid=[{"id": 1}, {"id": 1, "ok": True, "x": "y", "idx": "z", "o": ""}],
        invalid=['{"id":1,"x":2}', '{"id":1,"id":"dup"}', '{"id":1,"ok":"yes"}'],
    )
    open_schema = {"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": True}
    check(grammars, open_schema, valid=[{"a": "x", "b": [1, {"c": None}], "ab": 1.5}], invalid=['{"a":1}'])
    dictionary = {"type": "object", "additionalProperties": {"type": "integer", "maximum": 5}}
    check(grammars, dictionary, valid=[{}, {"x": 1, "y": -7}], invalid=['{"x":6}', '{"x":"1"}'])
    walks(grammars, schema)
    walks(grammars, dictionary)


def test_strings(grammars: Grammars) -> None:
    schema = {
        "type": "object",
        "properties": {
            "code": {"type": "string", "minLength": 2, "maxLength": 4},
            "when": {"type": "string", "format": "date-time"},
            "at": {"type": "string", "format": "time"},
            "id": {"type": "string", "format": "uuid"},
            "host": {"type": "string", "format": "ipv4"},
            "phone": {"type": "string", "pattern": "^\\+?\\d{1,3}[ -]?\\(?\\d{3}\\)?[ -]?\\d{3}-\\d{4}$"},
            "word": {"type": "string", "pattern": "^(?:yes|no|maybe)!*$"},
            "quoted": {"type": "string", "pattern": '^say "[a-z]+"\\.$'},
            "path": {"type": "string", "pattern": "^[^\\s\\\\]+\\\\[\\w.]+$"},
        },
        "additionalProperties": False,
    }
    schema["required"] = list(schema["properties"])
    good = {
        "code": 'é"',
        "when": "2024-07-26T13:45:00Z",
        "at": "23:59:60.123+05:30",
        "id": "123e4567-e89b-12d3-a456-426614174000",
        "host": "192.168.0.255",
        "phone": "+1 (555) 123-4567",
        "word": "maybe!!",
        "quoted": 'say "hi".',
        "path": "C:\\file.txt",
    }
    check(
        grammars,
        schema,
        valid=[good, {**good, "code": "abcd", "phone": "1-555-123-4567", "word": "no"}],
        invalid=[
            json.dumps({**good, "code": "a"}),
            json.dumps({**good, "code": "abcde"}),
            json.dumps({**good, "word": "yess"}),
            json.dumps({**good, "host": "256.1.1.1"}),
            json.dumps({**good, "id": "123e4567-e89b-12d3-a456-42661417400"}),
            json.dumps({**good, "quoted": "say hi."}),
            json.dumps({**good, "phone": "555-12-4567"}),
            json.dumps({**good, "path": "a b\\c"}),
        ],
    )
    walks(grammars, schema, n=8)


def test_unanchored_patterns_match_the_whole_string(grammars: Grammars) -> None:
    """A pattern without ^...$ is a search in JSON Schema; the grammar writes whole matches (a subset)."""
    grammar = schema_to_gbnf({"type": "string", "pattern": "[a-c]{2}"})
    assert grammars.accepts(grammar, '"ab"')
    assert not grammars.accepts(grammar, '"xab"')


@pytest.mark.parametrize(
    "bounds",
    [
        {"minimum": -15, "maximum": 37},
        {"minimum": 0, "maximum": 100},
        {"minimum": 5},
        {"maximum": -3},
        {"minimum": -1000, "maximum": 1000},
        {"exclusiveMinimum": 9, "exclusiveMaximum": 101},
        {"minimum": 99, "maximum": 1001},
        {"minimum": 7, "maximum": 7},
        {"minimum": -20, "maximum": -10},
        {"minimum": 1.5, "maximum": 12.5},
        {"maximum": 250},
    ],
)
def test_integer_ranges_are_exact(grammars: Grammars, bounds: dict[str, Any]) -> None:
    schema = {"type": "integer", **bounds}
    grammar = schema_to_gbnf(schema)
    for n in [*range(-40, 130), -1001, -1000, 999, 1000, 1001, 1002, 12345, -12345, 10**15, -(10**15)]:
        expected = _valid(schema, str(n))
        assert grammars.accepts(grammar, str(n)) == expected, (n, bounds, grammar)
    for text in ("-0", "01", "1.0", "+1", ""):
        assert not grammars.accepts(grammar, text), (text, grammar)


def test_numbers(grammars: Grammars) -> None:
    schema = {"type": "number"}
    check(
        grammars,
        schema,
        valid=[0, -1, 3.25, 1e-7, -2.5e30, 12345678901234],
        invalid=["01", "1.", ".5", "+1", "1e", "NaN", "Infinity", "--1"],
    )
    non_negative = {"type": "number", "minimum": 0}
    check(grammars, non_negative, valid=[0, 0.5, 1e3], invalid=["-0.5", "-1"])


def test_arrays(grammars: Grammars) -> None:
    tuple_schema = {"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}], "items": False}
    check(grammars, tuple_schema, valid=[["a", 1]], invalid=['["a",1,2]', '[1,"a"]'])
    assert _valid(tuple_schema, '["a"]') and not grammars.accepts(schema_to_gbnf(tuple_schema), '["a"]'), (
        "stricter than the schema, by design: every prefix item is written"
    )
    old_tuple = {"type": "array", "items": [{"type": "boolean"}], "additionalItems": {"type": "null"}}
    with pytest.raises(ConfigError, match="additionalItems"):
        schema_to_gbnf(old_tuple)
    bounded = {"type": "array", "items": {"enum": [1, 2]}, "minItems": 2, "maxItems": 3}
    check(grammars, bounded, valid=[[1, 2], [2, 2, 1]], invalid=["[1]", "[1,2,1,2]", "[1,3]", "[]"])
    check(grammars, {"type": "array"}, valid=[[], [1, "a", None, {"b": [True]}]], invalid=["[1,]", "{}"])


def test_any_json_object(grammars: Grammars) -> None:
    assert schema_to_gbnf({"type": "object"}) == JSON_OBJECT_GRAMMAR
    schema = {"type": "object"}
    check(
        grammars,
        schema,
        valid=[{}, {"a": [1, 2.5, "x", None, True, {"b": {}}], "é": "\u2603"}],
        invalid=["[]", '"x"', "{", '{"a"}', '{"a":}', "{a:1}", "null"],
    )
    walks(grammars, schema, n=16)


def test_every_grammar_parses_and_a_broken_one_does_not(grammars: Grammars) -> None:
    for schema in (
        PERSON,
        ITEMS,
        TREE,
        LINKED_LIST,
        MATH_REASONING,
        UI,
        RESEARCH_PAPER,
        MODERATION,
        PYDANTIC,
        {},
        True,
        {"type": "string", "maxLength": MAX_REPETITION + 10},
    ):
        sampler = grammars.sampler(schema_to_gbnf(schema))
        assert sampler, schema
        grammars.lib.llama_sampler_free(sampler)
    assert not grammars.sampler("root ::= missing-rule\n")
    assert not grammars.sampler('root ::= "a" (\n')


# -- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "keyword, schema",
    [
        ("not", {"not": {"type": "string"}}),
        ("if", {"type": "object", "if": {"required": ["a"]}, "then": {"required": ["b"]}}),
        ("patternProperties", {"type": "object", "patternProperties": {"^x": {"type": "string"}}}),
        ("uniqueItems", {"type": "array", "items": {"type": "string"}, "uniqueItems": True}),
        ("multipleOf", {"type": "integer", "multipleOf": 5}),
        ("minProperties", {"type": "object", "minProperties": 1}),
        ("contains", {"type": "array", "contains": {"const": 1}}),
    ],
)
def test_unsupported_keywords_are_named(keyword: str, schema: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=f"keyword '{keyword}' at #"):
        schema_to_gbnf({"type": "object", "properties": {"a": schema}})


@pytest.mark.parametrize(
    "pattern, problem",
    [
        ("^(?=a)b$", "lookaround"),
        ("^(a)\\1$", "backreference"),
        ("^a\\bb$", "escape \\\\b"),
        ("^a$b", "anchor"),
        ("^[abc$", "unclosed"),
        ("^[z-a]$", "out of order"),
        ("^(ab$", "unclosed"),
        ("^a++$", "possessive"),
        ("^[[:alpha:]]$", "POSIX"),
        ("^*a$", "nothing to repeat"),
    ],
)
def test_unsupported_patterns_are_named(pattern: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=f"keyword 'pattern' at #/properties/p is not supported.*{problem}"):
        schema_to_gbnf({"type": "object", "properties": {"p": {"type": "string", "pattern": pattern}}})


def test_other_schema_errors() -> None:
    with pytest.raises(ConfigError, match="points to nothing"):
        schema_to_gbnf({"$ref": "#/$defs/missing"})
    with pytest.raises(ConfigError, match="outside the schema"):
        schema_to_gbnf({"$ref": "https://example.com/schema.json"})
    with pytest.raises(ConfigError, match="no value matches"):
        schema_to_gbnf({"type": "object", "properties": {"a": False}})
    with pytest.raises(ConfigError, match="no integer is within the bounds"):
        schema_to_gbnf({"type": "integer", "minimum": 5, "maximum": 4})
    with pytest.raises(ConfigError, match="unknown type 'text'"):
        schema_to_gbnf({"type": "text"})
    with pytest.raises(ConfigError, match="combines types"):
        schema_to_gbnf({"allOf": [{"type": "string"}, {"type": "integer"}]})
    with pytest.raises(ConfigError, match="maxLength 1 is below minLength 2"):
        schema_to_gbnf({"type": "string", "minLength": 2, "maxLength": 1})
    with pytest.raises(ConfigError, match="no value of the enum"):
        schema_to_gbnf({"type": "integer", "enum": ["a"]})


def test_the_module_docstring_example() -> None:
    import llcuda.grammar

    assert doctest.testmod(llcuda.grammar).failed == 0


def test_annotations_and_unknown_keywords_are_ignored() -> None:
    plain = schema_to_gbnf({"type": "string"})
    assert (
        schema_to_gbnf(
            {
                "type": "string",
                "title": "T",
                "description": "d",
                "examples": ["x"],
                "x-vendor": 1,
                "format": "hostname",
                "nullable": True,
            }
        )
        == plain
    )
