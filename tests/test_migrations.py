"""The migrations produce exactly the schema the models describe."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from harness import pg_database

from hub.storage.db import Database
from hub.storage.migrate import HEAD, alembic_config, migrate
from hub.storage.models import metadata


async def _diff(db: Database) -> list[object]:
    await migrate(db)
    async with db.engine.connect() as conn:
        return await conn.run_sync(
            lambda c: compare_metadata(MigrationContext.configure(c, opts={"compare_type": True}), metadata)
        )


def test_head_constant_matches_alembic() -> None:
    assert ScriptDirectory.from_config(alembic_config()).get_current_head() == HEAD


async def test_migrations_match_models_sqlite(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'm.db'}")
    try:
        assert await _diff(db) == []
    finally:
        await db.close()


async def test_migrations_match_models_postgresql() -> None:
    async with pg_database() as url:
        db = Database(url)
        try:
            assert await _diff(db) == []
        finally:
            await db.close()
