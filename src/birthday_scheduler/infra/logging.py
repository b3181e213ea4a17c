"""structlog, configured once per process: one JSON object per line on stdout.

Library and uvicorn logs go through the same formatter. Levels follow the runbook
(debug, info, warn, error, fatal); anything that looks like an email address is masked as a
last line of defence, although no code logs personal data on purpose.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

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
_EMAIL = re.compile(r"[^\s@\"'<>]+@[^\s@\"'<>]+\.[^\s@\"'<>]+")


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


def configure_logging(level: LogLevel = "info", fmt: str = "json") -> None:
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="time"),
        _runbook_level,
        _mask_emails,
    ]
    renderer: Processor
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer()
    else:
        renderer = structlog.processors.JSONRenderer()

    structlog.configure(
        processors=[
            # First: a call below LOG_LEVEL (a worker's per-message debug line) costs one level
            # check instead of the whole chain.
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            # Again, last: tracebacks (a unique violation quotes the email) and stdlib `extra`
            # fields only exist from here on.
            _mask_emails,
            _rename_event,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stdout)
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


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger
