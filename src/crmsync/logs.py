"""Structured logs (structlog): JSON lines in production, pretty lines in a terminal.

Both structlog loggers and the standard library's ``logging`` (asyncpg, aiohttp,
uvicorn, ...) go through one handler, so every line has the same shape.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import orjson
import structlog
from structlog.dev import plain_traceback
from structlog.tracebacks import ExceptionDictTransformer
from structlog.typing import Processor

from crmsync import redact

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
# Libraries that would log once per HTTP request at INFO: too costly at thousands/s.
_PER_REQUEST_LOGGERS = ("aiohttp.access", "uvicorn.access")

# The handler this module installed, so a second call replaces it and leaves any
# other handler (pytest's capture, an embedding application's) alone.
_handler: logging.Handler | None = None


def _dumps(obj: Any, default: Any = None) -> str:
    # Non-str keys (a window size, a bucket index) are written as strings, never an error.
    return orjson.dumps(obj, default=default, option=orjson.OPT_NON_STR_KEYS).decode()


def configure_logging(
    level: str = "info", json: bool | None = None, *, stream: TextIO | None = None
) -> None:
    """Route structlog and stdlib logging to ``stream`` (default stderr) at ``level``.

    JSON when ``json`` is true or the stream is not a terminal; otherwise a
    human-friendly console format (so ``json=False``/``None`` means "decide by TTY").
    """
    global _handler
    numeric = _LEVELS.get(level.lower())
    if numeric is None:
        raise ValueError(f"CRMSYNC_LOG_LEVEL must be one of {', '.join(_LEVELS)}, not {level!r}")
    out = stream if stream is not None else sys.stderr
    tty = out.isatty()
    use_json = bool(json) or not tty

    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # Tracebacks are rendered without frame locals (they held tokens and request
    # headers), then the whole line goes through the redaction step: no secret
    # reaches a log, whoever logged it.
    render: list[Processor]
    if use_json:
        tracebacks = ExceptionDictTransformer(show_locals=False, use_rich=False)
        render = [
            structlog.processors.ExceptionRenderer(tracebacks),
            redact.event,
            structlog.processors.JSONRenderer(_dumps),
        ]
    else:
        render = [
            structlog.processors.format_exc_info,
            redact.event,
            structlog.dev.ConsoleRenderer(colors=tty, exception_formatter=plain_traceback),
        ]

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached: a later configure_logging (tests, `demo`) must reach every logger.
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *render],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)

    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    root.addHandler(handler)
    root.setLevel(numeric)
    _handler = handler
    for name in _PER_REQUEST_LOGGERS:
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A structlog logger named ``name`` (usually ``__name__``)."""
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger
