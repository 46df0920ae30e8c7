"""Errors the store answers with, shaped like mongod's.

One exception type, ``MongoError``, carries mongod's numeric ``code`` and its
``codeName``; ``CODE_NAMES`` is the one list of codes this store uses.
"""

from __future__ import annotations

from typing import Any

CODE_NAMES: dict[int, str] = {
    1: "InternalError",
    2: "BadValue",
    9: "FailedToParse",
    11601: "Interrupted",
    13: "Unauthorized",
    14: "TypeMismatch",
    20: "IllegalOperation",
    22: "InvalidBSON",
    26: "NamespaceNotFound",
    27: "IndexNotFound",
    40: "ConflictingUpdateOperators",
    43: "CursorNotFound",
    48: "NamespaceExists",
    50: "MaxTimeMSExpired",
    52: "DollarPrefixedFieldName",
    59: "CommandNotFound",
    66: "ImmutableField",
    67: "CannotCreateIndex",
    72: "InvalidOptions",
    73: "InvalidNamespace",
    85: "IndexOptionsConflict",
    86: "IndexKeySpecsConflict",
    115: "CommandNotSupported",
    171: "CannotIndexParallelArrays",
    175: "QueryPlanKilled",
    292: "QueryExceededMemoryLimitNoDiskUseAllowed",
    10334: "BSONObjectTooLarge",
    11000: "DuplicateKey",
    40573: "Location40573",
    40415: "Location40415",
}


class MongoError(Exception):
    """A command failed; ``to_reply`` gives the document mongod would send."""

    def __init__(self, code: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.code = code  # mongod's numeric error code
        self.message = message  # the errmsg text
        self.extra = extra  # further fields of the reply (keyPattern, keyValue...)

    @property
    def code_name(self) -> str:
        return CODE_NAMES.get(self.code, f"Location{self.code}")

    def to_reply(self) -> dict[str, Any]:
        reply: dict[str, Any] = {
            "ok": 0.0,
            "errmsg": self.message,
            "code": self.code,
            "codeName": self.code_name,
        }
        reply.update(self.extra)
        return reply

    def to_write_error(self, index: int) -> dict[str, Any]:
        error: dict[str, Any] = {"index": index, "code": self.code, "errmsg": self.message}
        error.update(self.extra)
        return error


class ProtocolError(Exception):
    """The bytes on the wire are not a message this store can answer; the
    connection is closed."""


def type_mismatch(field: str, expected: str, value: Any) -> MongoError:
    return MongoError(
        14, f"BSON field '{field}' is the wrong type '{type(value).__name__}', expected type '{expected}'"
    )


class CloseConnection(Exception):
    """The command's answer is to close the connection (a failpoint asked so)."""
