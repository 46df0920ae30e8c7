"""Property-based tests (hypothesis, deterministic and bounded) of every input
parser: the value rules, WebSocket frames, HTTP bodies, records, numeric
parameters, channel names and schema patterns."""

from __future__ import annotations

import json
import re
from typing import Any

import bson
import pytest
import ujson
from hypothesis import given
from hypothesis import strategies as st

from server.channels import KINDS, Channel
from server.errors import CODES, ApiError
from server.params import SEQ_MAX, integer, integer_from_text
from server.protocol import OPS, encode_error, encode_message_push, parse
from server.records import Records, envelope
from server.validation import Validator, _compiled, parse_json
from server.values import MAX_DEPTH, check, problem
from tests.strategies import (
    ANY_VALUE,
    CLEAN_OBJECTS,
    KEYS,
    NUMBERS,
    OBJECTS,
    PROPERTY,
    VALUES,
    WILD_TEXT,
    resolve,
    same,
    storable,
    strict_json,
)

# -- the value rules ---------------------------------------------------------------


@PROPERTY
@given(ANY_VALUE)
def test_the_value_rules_accept_exactly_what_json_and_bson_hold(value: Any) -> None:
    """A value passes the rules exactly when strict JSON and BSON hold it, it nests at most 32 levels and
    has no $ key; what passes round-trips through BSON, JSON and ujson unchanged; a refusal's path leads
    into the value."""
    found = problem(value)
    assert (found is None) == storable(value), found
    if found is None:
        assert same(bson.decode(bson.encode({"v": value}))["v"], value)
        assert same(strict_json(json.dumps(value, allow_nan=False)), value)
        assert same(strict_json(ujson.dumps(value, ensure_ascii=False, escape_forward_slashes=False)), value)
    else:
        path, message = found
        assert resolve(value, path), (path, message)
        with pytest.raises(ApiError) as error:
            check(value)
        assert error.value.code in ("validation_failed", "invalid_request")
        assert error.value.details == [{"path": path, "message": message}]
        json.dumps(error.value.body(), allow_nan=False, ensure_ascii=False).encode("utf-8")


@PROPERTY
@given(VALUES, st.integers(0, 3))
def test_an_envelope_grants_its_levels_and_no_more(value: Any, levels: int) -> None:
    """Data wrapped in ``levels`` objects passes with that envelope exactly when it passes alone."""
    wrapped = value
    for _ in range(levels):
        wrapped = {"w": wrapped}
    assert (problem(wrapped, levels) is None) == (problem(value) is None)


# -- WebSocket frames ----------------------------------------------------------------

COMMANDS = st.fixed_dictionaries(
    {"id": st.one_of(st.integers(0, 10), NUMBERS, WILD_TEXT), "op": st.one_of(st.sampled_from(OPS), WILD_TEXT)},
    optional={"channel": st.one_of(st.sampled_from(["room:a", "feed:news", "user:u1", "feed:news\n"]), WILD_TEXT),
              "data": st.one_of(OBJECTS, VALUES), "cid": st.one_of(WILD_TEXT, NUMBERS),
              "since": NUMBERS, "last": NUMBERS, "before": NUMBERS, "after": NUMBERS, "limit": NUMBERS,
              "token": WILD_TEXT, "$where": VALUES})
FRAMES = st.one_of(
    COMMANDS.map(json.dumps),  # NaN and Infinity as literals, surrogates as \u escapes
    COMMANDS.map(lambda c: json.dumps(c, ensure_ascii=False)),  # and as they are
    st.text(st.characters(exclude_categories=()), max_size=40),
    st.binary(max_size=20))


@PROPERTY
@given(FRAMES)
def test_parse_raises_only_api_errors_and_accepts_only_what_it_can_store(frame: str | bytes) -> None:
    """parse never raises anything but ApiError, whose reply is strict UTF-8 JSON; what it accepts
    holds only storable values, and published data is served back as it came."""
    try:
        command = parse(frame, 300)
    except ApiError as error:
        assert error.code in CODES
        reply = encode_error(error.command_id, error.code, error.message)
        assert strict_json(reply.encode("utf-8"))["error"]["code"] == error.code
        return
    assert command.op in OPS
    arguments = {k: v for k, v in command.args.items() if k != "encoded"}
    assert storable(arguments, MAX_DEPTH + 1)
    if command.op == "publish":
        message = {"channel": command.args["channel"], "seq": 1, "data": command.args["data"]}
        assert same(strict_json(encode_message_push(message))["message"]["data"], command.args["data"])
        assert same(bson.decode(bson.encode(message))["data"], command.args["data"])


@PROPERTY
@given(st.one_of(ANY_VALUE.map(json.dumps), ANY_VALUE.map(lambda v: json.dumps(v, ensure_ascii=False)),
                 st.text(st.characters(exclude_categories=()), max_size=30)),
       st.sampled_from(["utf-8", "surrogatepass"]))
def test_parse_json_raises_only_api_errors_and_accepts_only_storable_bodies(text: str, encoding: str) -> None:
    """Any body, its surrogates as escapes or as UTF-8 bytes: ApiError, or a storable value."""
    try:
        body = text.encode("utf-8", "surrogatepass" if encoding == "surrogatepass" else "strict")
    except UnicodeEncodeError:
        return
    try:
        value = parse_json(body, 0)
    except ApiError as error:
        assert error.code in ("invalid_json", "validation_failed", "invalid_request")
        json.dumps(error.body(), allow_nan=False, ensure_ascii=False).encode("utf-8")
        return
    assert storable(value)


_ANY_RECORD = Records({"records": None}, {"any": Validator({"type": "object"})})  # type: ignore[arg-type]


@PROPERTY
@given(st.one_of(OBJECTS, st.lists(OBJECTS, min_size=1, max_size=3).map(lambda items: {"items": items})))
def test_records_accept_alone_or_in_a_batch_the_same_records(body: dict[str, Any]) -> None:
    """A record passes the value rules alike alone and in a batch; every record accepted is storable."""
    text = json.dumps(body).encode()
    try:
        items, batch = _ANY_RECORD.check("any", parse_json(text, envelope))
    except ApiError as error:
        assert error.details and all(resolve(body, d["path"]) for d in error.details)
        return
    assert all(storable(item) for item in items)
    if batch:
        for item in items:
            assert _ANY_RECORD.check("any", parse_json(json.dumps(item).encode(), envelope)) == ([item], False)


# -- numeric parameters ------------------------------------------------------------------

DIGIT_TEXT = st.one_of(st.integers(0, 2**70).map(str), st.integers(0, 200).map(lambda n: "0" * 5 + str(n)),
                       st.text(st.characters(exclude_categories=()), max_size=8),
                       st.text(st.characters(categories=["Nd", "No"]), min_size=1, max_size=3))


@PROPERTY
@given(DIGIT_TEXT, st.sampled_from([(1, 100), (0, SEQ_MAX), (1, SEQ_MAX)]))
def test_numbers_from_text_are_ascii_digits_within_bounds(raw: str, bounds: tuple[int, int]) -> None:
    """Text gives a number only if it is ASCII digits whose value is within the bounds; else invalid_request."""
    low, high = bounds
    valid = raw.isascii() and raw.isdigit() and low <= int(raw) <= high
    try:
        number = integer_from_text(raw, "limit", low, high)
    except ApiError as error:
        assert not valid and error.code == "invalid_request"
        return
    assert (valid and number == int(raw)) or (raw == "" and number is None)


@PROPERTY
@given(st.one_of(NUMBERS, st.none(), st.booleans(), WILD_TEXT))
def test_numbers_from_json_are_integers_within_bounds(value: Any) -> None:
    """A JSON argument is taken only as an integer (not a bool, not a float) within the bounds."""
    try:
        assert integer(value, "since", 0, SEQ_MAX) == value and type(value) is int
    except ApiError as error:
        assert error.code == "invalid_request"
        assert not (type(value) is int and 0 <= value <= SEQ_MAX)


# -- channel names -------------------------------------------------------------------------

NAMES = st.text(st.sampled_from("abcXYZ019_-"), min_size=1, max_size=64)


@PROPERTY
@given(st.one_of(st.builds("{}:{}".format, st.sampled_from(KINDS), NAMES), WILD_TEXT,
                 st.builds("{}:{}{}".format, st.sampled_from(KINDS), NAMES, st.sampled_from(["\n", " ", "é", ":"])),
                 st.builds("{}:{}".format, WILD_TEXT, WILD_TEXT)))
def test_a_channel_is_its_whole_name(text: str) -> None:
    """A channel is accepted exactly when the whole text is kind:name, and keeps that kind and name."""
    valid = re.fullmatch(r"(room|feed|user):[A-Za-z0-9_-]{1,64}", text, re.ASCII) is not None
    try:
        channel = Channel.parse(text)
    except ApiError as error:
        assert not valid and error.code == "invalid_request"
        return
    assert valid and channel == text and f"{channel.kind}:{channel.name}" == text
    assert channel.kind in KINDS and Channel.parse(channel) is channel and json.loads(json.dumps(channel)) == text
    with pytest.raises(ApiError):
        Channel.parse(text + "\n")


# -- schema patterns ------------------------------------------------------------------------


@PROPERTY
@given(st.one_of(st.text(st.sampled_from("abz09\n $"), max_size=10), KEYS))
def test_a_schema_pattern_anchored_with_dollar_matches_only_whole_text(text: str) -> None:
    """^...$ in a JSON Schema pattern matches as ECMA-262 does: the whole text, no final newline;
    an escaped \\$ and a $ in a class stay characters."""
    assert (_compiled("^[a-z0-9]{1,8}$").search(text) is not None) == (
        re.fullmatch("[a-z0-9]{1,8}", text, re.ASCII) is not None)
    assert (_compiled(r"^a\$$").search(text) is not None) == (text == "a$")
    assert (_compiled(r"^[$]+$").search(text) is not None) == (text != "" and set(text) == {"$"})


# -- the real store --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stored(client):  # type: ignore[no-untyped-def]
    """A collection of the embedded store, for this module."""
    yield client["t_input_properties"]["messages"]
    client.drop_database("t_input_properties")


@PROPERTY
@given(st.one_of(CLEAN_OBJECTS, OBJECTS.filter(lambda data: problem(data) is None)))
def test_what_the_rules_accept_the_store_keeps_and_serves_unchanged(stored, data: dict[str, Any]) -> None:
    """Data the rules accept is stored by the embedded store and read back, then served as strict JSON,
    unchanged."""
    assert problem(data) is None
    inserted = stored.insert_one({"data": data}).inserted_id
    found = stored.find_one({"_id": inserted})
    assert same(found["data"], data)
    served = ujson.dumps({"data": found["data"]}, ensure_ascii=False, escape_forward_slashes=False)
    assert same(strict_json(served.encode("utf-8"))["data"], data)
