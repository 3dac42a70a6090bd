"""Schema migrations: alembic is imported only when the database is not at HEAD."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, OperationalError, ProgrammingError

from hub.storage.db import Database

log = logging.getLogger("hub.storage")
# The newest revision in migrations/versions; a test checks it matches alembic's head.
HEAD = "0006_chat_language"
MIGRATIONS = Path(__file__).parent / "migrations"
_LOCK_KEY = 0x4855425F4D4947  # "HUB_MIG": serialises migrations of processes starting together


def alembic_config(connection: Any = None) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


async def current_revision(db: Database) -> str | None:
    try:
        async with db.engine.connect() as conn:
            return (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()
    except (OperationalError, ProgrammingError, DBAPIError):
        return None


async def migrate(db: Database) -> bool:
    """Bring the schema to HEAD; returns True when anything was applied."""
    if await current_revision(db) == HEAD:
        return False
    async with db.engine.connect() as conn:
        if not db.is_sqlite:
            # Blocking lock: a second process waits, then finds the schema current.
            await conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _LOCK_KEY})
            await conn.commit()
        try:
            if await current_revision(db) == HEAD:
                return False
            await conn.run_sync(_upgrade)
            await conn.commit()
        finally:
            if not db.is_sqlite:
                await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _LOCK_KEY})
                await conn.commit()
    log.info("event=migrated revision=%s", HEAD)
    return True


def _upgrade(sync_conn: Any) -> None:
    from alembic import command

    command.upgrade(alembic_config(sync_conn), "head")
