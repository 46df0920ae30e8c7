"""Structured logs: one JSON object per line, with secrets kept out.

Log with ``log.info("event_name", extra={"fields": {...}})``; field names that
could hold a secret (tokens, keys, passwords, session_key, codes) are replaced by
``"[redacted]"`` whatever logger wrote them, and so are query strings' tokens.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import sys
from typing import Any

SECRET_FIELDS = re.compile(r"(token|secret|password|session_key|api_key|authorization|^code$|js_code)", re.I)
_QUERY_SECRETS = re.compile(r"(?i)\b(token|access_token|refresh_token|js_code|code|secret|key)=[^&\s]*")
REDACTED = "[redacted]"


def redact(value: Any, name: str = "") -> Any:
    """``value`` with every secret-looking field replaced."""
    if name and SECRET_FIELDS.search(name):
        return REDACTED
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return redact_text(value)
    return value


def redact_text(text: str) -> str:
    return _QUERY_SECRETS.sub(lambda m: f"{m.group(1)}={REDACTED}", text)


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line: time, level, logger, event, fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": redact_text(record.getMessage()),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(redact(fields))
        if record.exc_info:
            entry["exception"] = redact_text(self.formatException(record.exc_info))
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure(level: int = logging.INFO, stream: Any = None) -> None:
    """Sends every logger's records to ``stream`` (stderr) as JSON lines."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("tornado.access").setLevel(logging.WARNING)  # replaced by our access log


def fields(**values: Any) -> dict[str, Any]:
    """``extra=`` for a log call: ``log.info("event", extra=fields(a=1))``."""
    return {"fields": values}
