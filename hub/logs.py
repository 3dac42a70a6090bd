"""Structured logs: one line per event, `key=value` pairs, never secrets or whole payloads."""

from __future__ import annotations

import logging
import sys
import time

from hub.redact import safe_text


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line = (
            f"{ts}.{int(record.msecs):03d}Z level={record.levelname.lower()} logger={record.name} {record.getMessage()}"
        )
        if record.exc_info:
            # One line per event: fold the traceback.
            line += " exc=" + repr(self.formatException(record.exc_info))
        # Whatever a message or a traceback carries (aiohttp puts the whole URL in its errors,
        # Telegram the bot token in its paths): URLs are logged without queries and tokens.
        return safe_text(line)


def setup_logging(level: str = "info") -> None:
    # Nothing the formatter prints: not looking up the caller, thread and process of every
    # record halves what a line costs, and the hub writes a few per event.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiohttp.access", "sqlalchemy", "alembic", "apscheduler", "httpx", "openai", "aiogram"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Statements with their parameters (whole messages) are logged at DEBUG by aiosqlite and at
    # INFO by SQLAlchemy's engine: never, even at log_level = "debug".
    logging.getLogger("aiosqlite").setLevel(logging.INFO)
    for engine in ("sqlalchemy.engine", "sqlalchemy.pool"):
        logging.getLogger(engine).setLevel(logging.WARNING)
