"""structlog, configured once per process: one JSON object per line on stdout.

Library and uvicorn logs go through the same handler and formatter. Levels follow the runbook
(debug, info, warn, error, fatal); anything that looks like an email address is masked as a
last line of defence, although no code logs personal data on purpose.

This service's own events are rendered once, by structlog, and the finished line is written to
that handler's stream under the handler's lock: no stdlib LogRecord, no caller-frame lookup,
no second pass through a formatter. That is most of the cost of a request's access log line.
So those events reach that handler only: a handler added to the root logger later (pytest's
caplog, say) sees library records but not them; structlog.testing.capture_logs still works.
"""

from __future__ import annotations

import datetime
import logging
import math
import re
import sys
import time
from typing import Any

import orjson
import structlog
from structlog.typing import EventDict, Processor

from birthday_scheduler.settings import LogLevel

_LEVELS: dict[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.CRITICAL,
}
_LEVEL_NAMES = {"warning": "warn", "critical": "fatal", "exception": "error"}
# structlog's method name -> (stdlib level, runbook level name).
_METHODS: dict[str, tuple[int, str]] = {
    "debug": (logging.DEBUG, "debug"),
    "info": (logging.INFO, "info"),
    "warning": (logging.WARNING, "warn"),
    "warn": (logging.WARNING, "warn"),
    "error": (logging.ERROR, "error"),
    "exception": (logging.ERROR, "error"),
    "critical": (logging.CRITICAL, "fatal"),
    "fatal": (logging.CRITICAL, "fatal"),
}
_EMAIL = re.compile(r"[^\s@\"'<>]+@[^\s@\"'<>]+\.[^\s@\"'<>]+")
_UTC = datetime.UTC
# Types orjson renders as the json module does (exact types: a str enum or a UUID takes the
# json path, which renders it as it always has; non-finite floats are checked apart).
_ORJSON_SAFE = frozenset({str, int, bool, float, type(None)})


def _runbook_level(_logger: Any, _method: str, event_dict: EventDict) -> EventDict:
    level = str(event_dict.get("level", "info")).lower()
    event_dict["level"] = _LEVEL_NAMES.get(level, level)
    return event_dict


def _mask_emails(_logger: Any, _method: str, event_dict: EventDict) -> EventDict:
    for key, value in event_dict.items():
        if isinstance(value, str) and "@" in value:
            event_dict[key] = _EMAIL.sub("<redacted-email>", value)
    return event_dict


def _rename_event(_logger: Any, _method: str, event_dict: EventDict) -> EventDict:
    event_dict["event"] = event_dict.pop("event", "")
    return event_dict


def _stamp(logger: Any, method: str, event_dict: EventDict) -> EventDict:
    """Drops an event below the logger's level, else adds contextvars, level, logger, time and
    the formatted exception.

    First in the chain, so a call below LOG_LEVEL (a worker's per-message debug line) costs one
    level check. One processor for what filter_by_level, merge_contextvars, add_log_level,
    add_logger_name, TimeStamper, _runbook_level and format_exc_info did, in the same key order.
    """
    number, name = _METHODS.get(method, (logging.INFO, method))
    if not logger.isEnabledFor(number):
        raise structlog.DropEvent
    structlog.contextvars.merge_contextvars(logger, method, event_dict)
    event_dict["level"] = name
    event_dict["logger"] = logger.name
    event_dict["time"] = _utc_now_iso(time.time_ns())
    if "exc_info" in event_dict:
        return structlog.processors.format_exc_info(logger, method, event_dict)
    return event_dict


_second: tuple[int, str] = (0, "1970-01-01T00:00:00")


def _utc_now_iso(now_ns: int) -> str:
    """What `datetime.now(UTC).isoformat()` with Z for +00:00 gives (microseconds truncated,
    left out when zero, as there), with the date and time formatted once per second."""
    global _second
    seconds, nanos = divmod(now_ns, 1_000_000_000)
    second = _second  # one read: another thread may move it on meanwhile
    if second[0] != seconds:
        stamp = datetime.datetime.fromtimestamp(seconds, _UTC).replace(tzinfo=None).isoformat()
        second = _second = (seconds, stamp)
    micros = nanos // 1000
    return f"{second[1]}.{micros:06d}Z" if micros else f"{second[1]}Z"


# Compact like orjson's lines, so every line has the same spacing.
_json_renderer = structlog.processors.JSONRenderer(separators=(",", ":"))


def _render_json(logger: Any, method: str, event_dict: EventDict) -> str:
    """Masks emails, puts the event last and renders one line of JSON.

    orjson when every value is plain; anything else (a UUID, a datetime, an enum, a nested
    dict, a non-finite float, an int beyond 64 bits, non-ASCII text) goes to the json module
    with structlog's fallback, so no value renders differently from before.
    Emails are looked for in the rendered line first: most lines have no "@" at all.
    """
    event_dict["event"] = event_dict.pop("event", "")
    if _ORJSON_SAFE.issuperset(map(type, event_dict.values())):
        try:
            line = orjson.dumps(event_dict)
        except orjson.JSONEncodeError:  # an int beyond 64 bits, a lone surrogate
            pass
        else:
            # json writes NaN and Infinity, orjson null: those take the json path.
            if line.isascii() and (b"null" not in line or _all_finite(event_dict)):
                if b"@" in line:
                    _mask_emails(logger, method, event_dict)
                    line = orjson.dumps(event_dict)
                return line.decode("ascii")
    _mask_emails(logger, method, event_dict)
    return str(_json_renderer(logger, method, event_dict))


def _all_finite(event_dict: EventDict) -> bool:
    return all(math.isfinite(v) for v in event_dict.values() if type(v) is float)


class _HandlerWriter:
    """What structlog hands a finished line to: the stream of configure_logging's handler.

    Written under the handler's lock (no interleaving with library records) and flushed per
    line, as StreamHandler does: operators tail stdout and a crash must not lose lines. Level
    checks and anything else a caller asks of a stdlib logger go to the stdlib logger of the
    same name, so LOG_LEVEL and per-logger levels apply as before.
    """

    def __init__(self, name: str, handler: logging.StreamHandler[Any]) -> None:
        self.name = name
        self._stdlib = logging.getLogger(name)
        self._handler = handler

    def isEnabledFor(self, level: int) -> bool:
        return self._stdlib.isEnabledFor(level)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # not set yet (copy, pickle): no recursion through _stdlib
            raise AttributeError(name)
        return getattr(self._stdlib, name)

    def write(self, line: str) -> None:
        handler = self._handler
        try:
            handler.acquire()
            try:
                stream = handler.stream
                stream.write(line + handler.terminator)
                stream.flush()
            finally:
                handler.release()
        except RecursionError:
            raise
        except Exception:
            # As StreamHandler.emit: report on stderr, never raise into the caller.
            handler.handleError(logging.makeLogRecord({"name": self.name, "msg": line}))

    debug = info = warning = warn = error = exception = critical = fatal = msg = write


class _HandlerWriterFactory:
    """structlog's logger factory: one writer per logger name, all on the same handler."""

    def __init__(self, handler: logging.StreamHandler[Any]) -> None:
        self._handler = handler
        self._writers: dict[str, _HandlerWriter] = {}
        self._caller = structlog.stdlib.LoggerFactory(ignore_frame_names=[__name__])

    def __call__(self, name: str | None = None, *_args: Any) -> _HandlerWriter:
        if name is None:
            # As structlog's stdlib factory: `structlog.get_logger()` is named by its module.
            name = self._caller().name
        try:
            return self._writers[name]
        except KeyError:
            return self._writers.setdefault(name, _HandlerWriter(name, self._handler))


def configure_logging(level: LogLevel = "info", fmt: str = "json") -> None:
    # Last in both chains: tracebacks (a unique violation quotes the email) and stdlib `extra`
    # fields only exist from here on.
    finish: list[Processor]
    if fmt == "console":
        finish = [_mask_emails, _rename_event, structlog.dev.ConsoleRenderer()]
    else:
        finish = [_render_json]  # masks and renames too

    handler = logging.StreamHandler(sys.stdout)
    factory = _HandlerWriterFactory(handler)
    _installed.clear()
    _installed.append(factory)
    structlog.configure(
        processors=[_stamp, *finish],
        logger_factory=factory,
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    # Records of stdlib loggers (uvicorn, SQLAlchemy, aio_pika, warnings) take this path.
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="time"),
            _runbook_level,
            structlog.stdlib.ExtraAdder(),
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            *finish,
        ],
    )
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # Python warnings become log lines too, so stdout and stderr carry nothing but JSON.
    logging.captureWarnings(True)
    root.setLevel(_LEVELS[level])
    # uvicorn installs its own handlers; route them to ours. Its access log is replaced by
    # our request log, which carries the route template instead of the raw path.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "aiormq", "aio_pika"):
        lib = logging.getLogger(name)
        lib.handlers[:] = []
        lib.propagate = True
    logging.getLogger("uvicorn.access").disabled = True
    # Alembic narrates every schema check (/ready runs one); our db.* events say what matters.
    logging.getLogger("alembic").setLevel(max(_LEVELS[level], logging.WARNING))
    logging.getLogger("aiormq").setLevel(max(_LEVELS[level], logging.WARNING))
    logging.getLogger("aio_pika").setLevel(max(_LEVELS[level], logging.WARNING))


# The factory configure_logging installed last: while structlog still uses it, a level check
# is the stdlib logger's (what _stamp asks first).
_installed: list[_HandlerWriterFactory] = []


def enabled_for(name: str, level: int) -> bool:
    """Whether a line at `level` from logger `name` would be written: the stdlib level under
    configure_logging's setup; any other structlog setup (unconfigured, a test's) writes all.
    Cheaper than asking a structlog logger, whose lazy proxy builds a bound logger to answer."""
    if _installed and structlog.get_config()["logger_factory"] is _installed[0]:
        return logging.getLogger(name).isEnabledFor(level)
    return True


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger
