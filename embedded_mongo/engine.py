"""MongoDB's query semantics, borrowed from maintained libraries.

Filters, update operators, update pipelines, projections and aggregation
expressions come from mongomock, the most complete and most used pure-Python
implementation; array filters (``$[identifier]``), which mongomock lacks, come from
montydb's update engine. This module is the only one that imports them, so the
store can change engines without touching storage or the wire protocol.
Every library failure becomes a ``MongoError`` with mongod's code.
"""

from __future__ import annotations

import copy
import random
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import mongomock
from bson import Code, MaxKey, MinKey, Regex, Timestamp
from mongomock import aggregate as mm_aggregate
from mongomock import filtering as mm_filtering
from mongomock import helpers as mm_helpers
from montydb.types import init_bson

from . import keys
from .errors import MongoError

init_bson(use_bson=True)


_NAN = keys.encode(float("nan"))


def _bson_compare(op: Callable[[Any, Any], bool], a: Any, b: Any, can_compare_types: bool = True) -> bool:
    """MongoDB's comparison of two values, through the store's own order-preserving
    keys: exact for every BSON type, where mongomock's own comparison knows only
    some (it has no Decimal128, Timestamp, MinKey or MaxKey)."""
    key_a, key_b = keys.encode(a), keys.encode(b)
    if not can_compare_types:  # a query's $lt/$gt/...: type bracketing and mongod's NaN rule
        if key_a[:1] != key_b[:1]:
            return False
        if key_a == _NAN or key_b == _NAN:  # NaN equals NaN and compares false to every number
            return key_a == key_b and bool(op(0, 0))
    return bool(op(key_a, key_b))


def _bson_equal(doc_value: Any, query_value: Any) -> bool:
    """MongoDB's equality: by BSON value, so True is not 1 while 1 == 1.0."""
    if doc_value is mm_filtering.NOTHING:
        return query_value is None
    try:
        return keys.encode(doc_value) == keys.encode(query_value)
    except MongoError:
        return bool(doc_value == query_value)


def _in(doc_value: Any, query_values: Any) -> bool:
    if not isinstance(query_values, (list, tuple)):
        raise mongomock.OperationFailure("$in needs an array")
    candidates = [doc_value] if not isinstance(doc_value, list) else [*doc_value, doc_value]
    for wanted in query_values:
        if isinstance(wanted, mm_filtering._RE_TYPES):
            if doc_value is not mm_filtering.NOTHING and mm_filtering._regex(doc_value, wanted):
                return True
        elif any(_bson_equal(candidate, wanted) for candidate in candidates):
            return True
    return False


def _eq(doc_value: Any, query_value: Any) -> bool:
    """``$eq``: the value itself, or for an array any of its elements, equals."""
    if isinstance(doc_value, list) and any(_bson_equal(item, query_value) for item in doc_value):
        return True
    return _bson_equal(doc_value, query_value)


mm_filtering.bson_compare = _bson_compare
mm_filtering._in_op = _in
_FILTERER = mm_filtering._Filterer()
_FILTERER._operator_map["$eq"] = _eq
_FILTERER._operator_map["$ne"] = lambda doc_value, query_value: not _eq(doc_value, query_value)
mm_filtering._filterer_inst = _FILTERER


# $type names mongomock leaves unimplemented.
mm_filtering.TYPE_MAP.update({
    "null": lambda v: v is None,
    "regex": lambda v: isinstance(v, (Regex, re.Pattern)),
    "timestamp": lambda v: isinstance(v, Timestamp),
    "minKey": lambda v: isinstance(v, MinKey),
    "maxKey": lambda v: isinstance(v, MaxKey),
    "javascript": lambda v: isinstance(v, Code),
})


_parse_expression = mm_aggregate._Parser.parse
_RANDOM = random.Random()


def _parse_with_field_operators(parser: Any, expression: Any) -> Any:
    """mongomock's expression parser, plus the operators it lacks: ``$literal``,
    ``$getField``, ``$setField`` and ``$unsetField`` (MongoDB 5.0), whose
    sub-expressions its own parser evaluates."""
    if isinstance(expression, dict) and len(expression) == 1:
        operator, argument = next(iter(expression.items()))
        if operator == "$literal":
            return argument
        if operator == "$rand":
            return _RANDOM.random()
        if operator in ("$getField", "$setField", "$unsetField"):
            spec = argument if isinstance(argument, dict) else {"field": argument}
            name = parser.parse(spec["field"])
            if not isinstance(name, str):
                raise mongomock.OperationFailure(f"{operator} requires 'field' to evaluate to a string")
            source = parser.parse(spec.get("input", "$$CURRENT"))
            if operator == "$getField":
                if not isinstance(source, dict) or name not in source:
                    raise KeyError(name)
                return source[name]
            if source is None:
                return None
            if not isinstance(source, dict):
                raise mongomock.OperationFailure(f"{operator} requires 'input' to evaluate to an object")
            result = dict(source)
            if operator == "$unsetField" or spec.get("value") == "$$REMOVE":
                result.pop(name, None)
            else:
                result[name] = parser.parse(spec["value"])
            return result
    return _parse_expression(parser, expression)


mm_aggregate._Parser.parse = _parse_with_field_operators
_group_stage = mm_aggregate._PIPELINE_HANDLERS["$group"]


def _group_id_first(collection: Any, database: Any, options: Any) -> list[dict[str, Any]]:
    """``$group`` with ``_id`` first in each result, as mongod writes it."""
    return [{"_id": doc.get("_id"), **{k: v for k, v in doc.items() if k != "_id"}}
            for doc in _group_stage(collection, database, options)]


mm_aggregate._PIPELINE_HANDLERS["$group"] = _group_id_first


def bind_variables(value: Any, variables: dict[str, Any] | None, expression: bool = False) -> Any:
    """Replaces ``$$name`` references to a command's ``let`` variables with
    ``{$literal: value}``, in aggregation-expression contexts only (pipelines,
    ``$expr``); mongomock knows no user variables of its own."""
    if not variables:
        return value
    if isinstance(value, str):
        if expression and value.startswith("$$"):
            name, _, rest = value[2:].partition(".")
            if name in variables:
                bound = variables[name]
                for part in rest.split(".") if rest else []:
                    bound = bound.get(part) if isinstance(bound, dict) else None
                return {"$literal": bound}
        return value
    if isinstance(value, list):
        return [bind_variables(v, variables, expression) for v in value]
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for name, item in value.items():
            if name == "$literal":
                out[name] = item
            elif name == "$match" and expression:
                out[name] = bind_variables(item, variables, False)
            else:
                out[name] = bind_variables(item, variables, expression or name == "$expr")
        return out
    return value


def evaluate_variables(variables: dict[str, Any]) -> dict[str, Any]:
    """A command's ``let``: each value is itself an expression (``{$literal:
    ...}``, ``{$rand: {}}``), evaluated once against no document."""
    with translated():
        return {name: mm_aggregate._Parser({}).parse(value) for name, value in variables.items()}


def bind_pipeline(pipeline: list[Any], variables: dict[str, Any] | None) -> list[Any]:
    """A pipeline with ``let`` variables bound and stages mongomock lacks
    rewritten into ones it has (``$replaceWith`` is ``$replaceRoot``)."""
    stages = []
    for stage in pipeline:
        if isinstance(stage, dict) and "$replaceWith" in stage:
            stage = {"$replaceRoot": {"newRoot": stage["$replaceWith"]}}
        if isinstance(stage, dict) and "$match" in stage:
            stages.append({"$match": bind_variables(stage["$match"], variables, False)})
        else:
            stages.append(bind_variables(stage, variables, True))
    return stages


def _normalized(query: dict[str, Any]) -> dict[str, Any]:
    """The filter with every plain ``{field: value}`` written as ``{field: {$eq:
    value}}``, so that equality always takes the exact BSON comparison."""
    out: dict[str, Any] = {}
    for name, value in query.items():
        if name in ("$and", "$or", "$nor") and isinstance(value, list):
            out[name] = [_normalized(q) if isinstance(q, dict) else q for q in value]
        elif (name.startswith("$") or isinstance(value, mm_filtering._RE_TYPES)
              or (isinstance(value, dict) and value and all(str(k).startswith("$") for k in value))):
            out[name] = value
        else:
            out[name] = {"$eq": value}
    return out

from montydb.engine.field_walker import FieldWalker  # noqa: E402  (after init_bson)
from montydb.engine.update import Updator  # noqa: E402

Matcher = Callable[[dict[str, Any]], bool]


@contextmanager
def translated() -> Iterator[None]:
    """Turns the libraries' exceptions into mongod-shaped errors."""
    try:
        yield
    except MongoError:
        raise
    except mongomock.WriteError as exc:  # type: ignore[attr-defined]
        code = getattr(exc, "code", None) or (66 if "immutable" in str(exc) else 2)
        raise MongoError(int(code), str(exc)) from None
    except mongomock.OperationFailure as exc:
        code = getattr(exc, "code", None) or 2
        raise MongoError(int(code), str(exc)) from None
    except NotImplementedError as exc:
        raise MongoError(115, f"not supported by the embedded store: {exc}") from None
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
        raise MongoError(2, f"{type(exc).__name__}: {exc}") from None
    except Exception as exc:  # montydb raises its own error types
        code = getattr(exc, "code", None)
        raise MongoError(int(code) if isinstance(code, int) else 2, str(exc)) from None


def compile_filter(query: dict[str, Any] | None) -> Matcher:
    """A predicate for a query filter; ``{}`` matches everything."""
    if not query:
        return lambda doc: True
    if not isinstance(query, dict):
        raise MongoError(2, "query filter must be an object")
    spec = _normalized(query)

    def matches(doc: dict[str, Any]) -> bool:
        with translated():
            try:
                return bool(mm_filtering.filter_applies(spec, doc))
            except KeyError:
                # mongomock's $expr raises on a field the document lacks; mongod
                # evaluates it as missing, which no comparison in a filter matches.
                return False

    return matches


class Engine:
    """Applies updates, projections and pipelines to plain documents."""

    def __init__(self) -> None:
        self._local = threading.local()  # each thread's scratch client: commands run on several threads

    @property
    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = mongomock.MongoClient()  # a scratch in-memory database
        return client

    @property
    def _scratch(self) -> Any:
        return self._client.scratch  # holds one collection per call, emptied after

    def _collection(self, name: str = "doc") -> Any:
        coll = self._scratch[name]
        coll.delete_many({})
        return coll

    @staticmethod
    def _store_key(value: Any) -> Any:
        return mm_helpers.hashdict(value) if isinstance(value, dict) else value

    def apply_update(self, doc: dict[str, Any], update: Any, array_filters: list[Any] | None = None) -> dict[str, Any]:
        """The document after ``update`` (operators or a pipeline); ``doc`` is
        not changed. The document goes straight into the scratch collection's
        store and through mongomock's own update, without its insert and find
        bookkeeping."""
        with translated():
            if array_filters:
                walker = FieldWalker(copy.deepcopy(doc))
                Updator(update, array_filters)(walker)
                return dict(walker.doc)
            if isinstance(update, list):  # an update pipeline: _id survives it as in mongod
                [result] = mm_aggregate.process_pipeline([copy.deepcopy(doc)], self._scratch, update, None)
                return {"_id": doc["_id"], **{k: v for k, v in result.items() if k != "_id"}}
            coll = self._scratch.doc
            key = self._store_key(doc["_id"])
            coll._store[key] = copy.deepcopy(doc)
            try:
                coll._update({"_id": doc["_id"]}, update)
                return dict(coll._store[key])
            finally:
                del coll._store[key]

    def upsert_document(self, query: dict[str, Any], update: Any,
                        array_filters: list[Any] | None = None) -> dict[str, Any]:
        """The document an upsert inserts when nothing matched ``query``."""
        with translated():
            if array_filters:
                walker = FieldWalker({k: v for k, v in query.items() if not k.startswith("$")})
                Updator(update, array_filters)(walker, do_insert=True)
                return dict(walker.doc)
            coll = self._collection()
            coll._update(query, update, upsert=True)
            result = next(iter(coll._store.documents))
            coll._store._documents.clear()
            return dict(result)

    def project(self, docs: list[dict[str, Any]], projection: dict[str, Any]) -> list[dict[str, Any]]:
        """Applies a find projection to documents."""
        if not projection:
            return docs
        with translated():
            coll = self._collection()
            out = [coll._copy_only_fields(doc, projection, dict) for doc in docs]
            return out

    def pipeline_database(self, others: dict[str, list[dict[str, Any]]]) -> Any:
        """A database holding the documents of the collections that ``$lookup``,
        ``$graphLookup`` and ``$unionWith`` read, for one aggregate."""
        with translated():
            database: Any = mongomock.MongoClient().pipeline_db
            for name, items in others.items():
                if items:
                    database[name].insert_many(copy.deepcopy(items))
            return database

    def run_stages(self, docs: list[dict[str, Any]], stages: list[dict[str, Any]],
                   database: Any) -> list[dict[str, Any]]:
        """Runs pipeline stages over ``docs`` (all of them, or one chunk of a
        stream for stages that treat each document alone)."""
        with translated():
            return list(mm_aggregate.process_pipeline(docs, database, stages, None))

    def group_chunk(self, docs: list[dict[str, Any]], spec: dict[str, Any]) -> list[dict[str, Any]]:
        """``$group`` over one chunk of documents."""
        with translated():
            return list(mm_aggregate._PIPELINE_HANDLERS["$group"](docs, None, spec))
