"""Structured logs: one JSON object per line, with secrets kept out.

Log with ``log.info("event_name", extra={"fields": {...}})``; field names that
could hold a secret (tokens, keys, passwords, session_key, codes) are replaced by
``"[redacted]"`` whatever logger wrote them, and so are query strings' tokens.
Warnings and errors that repeat are rate-limited (``RateLimit``), whichever
logger wrote them (ours, Tornado's, asyncio's).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

SECRET_FIELDS = re.compile(r"(token|secret|password|session_key|api_key|authorization|^code$|js_code)", re.I)


def _as_sent(name: str) -> str:
    """A pattern of ``name`` as a query string may carry it: servers decode names, so ``t%6Fken=`` is ``token=``."""
    return "".join(f"(?:{re.escape(c)}|%{ord(c.lower()):02x}|%{ord(c.upper()):02x})" for c in name)


# A value ends at & or an ASCII blank (\s would stop at \xa0 or \x85, which a server strips from a token).
_QUERY_SECRETS = re.compile(r"(?i)(?<!\w)(" + "|".join(map(_as_sent, (
    "token", "access_token", "refresh_token", "js_code", "code", "secret", "key"))) + r")=[^& \t\r\n\f\v]*")
REDACTED = "[redacted]"
MAX_KINDS = 1000  # kinds of line rate-limited apart; past this, only by logger, level and error


_secret_names: dict[str, bool] = {}  # field name -> whether it looks secret (names come from code: few)
MAX_NAMES = 4096  # field names remembered; past this, each is searched again


def _secret(name: str) -> bool:
    found = _secret_names.get(name)
    if found is None:
        found = SECRET_FIELDS.search(name) is not None
        if len(_secret_names) < MAX_NAMES:
            _secret_names[name] = found
    return found


def redact(value: Any, name: str = "") -> Any:
    """``value`` with every secret-looking field replaced."""
    if name and _secret(name):
        return REDACTED
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return redact_text(value)
    return value


def redact_text(text: str) -> str:
    if "=" not in text:  # every secret the pattern finds is a name=value
        return text
    return _QUERY_SECRETS.sub(lambda m: f"{m.group(1)}={REDACTED}", text)


_ENCODER = json.JSONEncoder(default=str, ensure_ascii=False)  # one, not one per line as json.dumps(default=)


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line: time, level, logger, event, fields.
    About 7 µs a line (an access line per request and per WebSocket upgrade: a
    reconnect storm writes thousands a second)."""

    def __init__(self) -> None:
        super().__init__()
        self._cached: tuple[int | None, str] = (None, "")  # a whole second and its "YYYY-MM-DDTHH:MM:SS", UTC

    def _timestamp(self, created: float) -> str:
        second = int(created)
        if second > created:  # before 1970: int() rounded up, and the millisecond would be negative
            second -= 1
        cached, text = self._cached  # one pair, read and written whole
        if second != cached:
            text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._cached = (second, text)
        millisecond = int((created - second) * 1000)
        return f"{text}.{millisecond if millisecond < 1000 else 999:03d}Z"  # 1000: a float just below a second

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self._timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": redact_text(record.getMessage()),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(redact(fields))
        if record.exc_info:
            entry["exception"] = redact_text(self.formatException(record.exc_info))
        return _ENCODER.encode(entry)


@dataclass
class _Window:
    """One key's current interval: when it began, lines let through and held back."""

    start: float
    passed: int = 0
    suppressed: int = 0


class RateLimit(logging.Filter):
    """Lets through ``burst`` warnings or errors of one kind per ``interval``
    seconds, then holds the rest back; when the interval is over, one line says
    how many were suppressed. A kind is the logger, the level, the message
    template (its first line) and the exception's type and errno. Lines below
    WARNING (the access log) always pass. Attach it to a handler, where it sees
    every logger's records."""

    def __init__(self, burst: int = 20, interval: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.burst = burst  # lines of one kind let through per interval
        self.interval = interval  # seconds
        self.clock = clock  # monotonic seconds
        self.windows: dict[tuple[Any, ...], _Window] = {}  # the current interval of each kind seen lately
        self.handler: logging.Handler | None = None  # where summaries go: the handler filtered
        self._next_sweep = 0.0  # when expired intervals are next summarised

    def filter(self, record: logging.LogRecord) -> bool:
        now = self.clock()
        if now >= self._next_sweep:
            self.flush(now)
        if record.levelno < logging.WARNING or getattr(record, "summary", False):
            return True
        key = _kind(record)
        if key not in self.windows and len(self.windows) >= MAX_KINDS:  # messages that vary: one kind per error
            key = (key[0], key[1], "*", key[3], key[4])
        window = self.windows.get(key)
        if window is None or now - window.start >= self.interval:
            if window is not None and window.suppressed:
                self._summarise(key, window)
            self.windows[key] = _Window(now, passed=1)
            return True
        if window.passed < self.burst:
            window.passed += 1
            return True
        window.suppressed += 1
        return False

    def flush(self, now: float | None = None) -> None:
        """Summarises and forgets every interval that is over (all of them at exit: ``flush(math.inf)``)."""
        now = self.clock() if now is None else now
        self._next_sweep = now + self.interval
        for key, window in list(self.windows.items()):
            if now - window.start >= self.interval:
                del self.windows[key]
                if window.suppressed:
                    self._summarise(key, window)

    def _summarise(self, key: tuple[Any, ...], window: _Window) -> None:
        if self.handler is None:
            return
        name, level, template, error, _ = key
        summary = logging.LogRecord(name, level, __file__, 0, "suppressed similar log lines", None, None)
        summary.fields = {"suppressed": window.suppressed, "seconds": self.interval, "like": template,
                          "error": error}
        summary.summary = True
        self.handler.handle(summary)


def _kind(record: logging.LogRecord) -> tuple[Any, ...]:
    exc = record.exc_info[1] if record.exc_info else None
    template = str(record.msg).split("\n", 1)[0][:200]
    return (record.name, record.levelno, template, type(exc).__name__ if exc else None,
            getattr(exc, "errno", None))


def configure(level: int = logging.INFO, stream: Any = None) -> RateLimit:
    """Sends every logger's records to ``stream`` (stderr) as JSON lines, with
    repeated warnings and errors rate-limited; returns the limit (``flush`` it at exit)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    limit = RateLimit()
    limit.handler = handler
    handler.addFilter(limit)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("tornado.access").setLevel(logging.WARNING)  # replaced by our access log
    return limit


def fields(**values: Any) -> dict[str, Any]:
    """``extra=`` for a log call: ``log.info("event", extra=fields(a=1))``."""
    return {"fields": values}
