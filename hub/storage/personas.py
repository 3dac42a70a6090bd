"""Personas: `[[personas]]` from the configuration, synced into the database at start, plus
those admins add at run time.

A persona from the configuration (`source = "config"`) is rewritten at every start and removed
when it leaves the file; one an admin added (`source = "admin"`) stays until removed. A
configured persona of the same name as an admin's replaces it: the file is the declared truth.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from sqlalchemy import delete, select, update

from hub.settings import PersonaSettings
from hub.storage.cached import Cached
from hub.storage.db import Database, utcnow
from hub.storage.models import personas

FIELDS = tuple(k for k in PersonaSettings.model_fields if k != "name")


@dataclass(frozen=True, slots=True)
class Persona:
    name: str
    appearance: str = ""
    personality: str = ""
    background: str = ""
    style: str = ""
    knowledge: str = ""
    greeting: str = ""
    language: str | None = None
    restate: bool = True
    default: bool = False
    source: str = "config"

    @classmethod
    def from_settings(cls, p: PersonaSettings, source: str) -> Persona:
        return cls(**p.model_dump(), source=source)


def _validated(name: str, fields: Mapping[str, Any]) -> PersonaSettings:
    """Check fields as the configuration would; ValueError names every mistake."""
    try:
        return PersonaSettings(name=name, **fields)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ValueError(problems) from None


class PersonaRepo:
    """Read on every chat message: cached for `ttl_s` (another process's change shows within
    that; this process's own at once)."""

    def __init__(self, db: Database, ttl_s: float = 5.0) -> None:
        self._db = db
        self._cache: Cached[builtins.list[Persona]] = Cached(self._read, ttl_s)

    async def sync(self, configured: Sequence[PersonaSettings]) -> None:
        """Make the configured personas the database's `config` rows."""
        now = utcnow()
        names = [p.name for p in configured]
        async with self._db.engine.begin() as conn:
            await conn.execute(delete(personas).where(personas.c.source == "config", personas.c.name.not_in(names)))
            await conn.execute(delete(personas).where(personas.c.name.in_(names)))
            for p in configured:
                data = p.model_dump(exclude={"name"})
                await conn.execute(personas.insert().values(name=p.name, data=data, source="config", created_at=now))
        self._cache.invalidate()

    async def add(self, name: str, fields: Mapping[str, Any], *, source: str = "admin") -> Persona:
        """Add or replace a persona; `fields` as in `[[personas]]`. Raises ValueError when wrong.

        A persona added with `default = true` becomes the only default.
        """
        name = name.strip()
        if not name or len(name) > 64:
            raise ValueError("name: 1 to 64 characters")
        unknown = set(fields) - set(FIELDS)
        if unknown:
            raise ValueError(f"unknown persona fields: {', '.join(sorted(unknown))} (known: {', '.join(FIELDS)})")
        checked = _validated(name, fields)
        data = checked.model_dump(exclude={"name"})
        now = utcnow()
        async with self._db.engine.begin() as conn:
            if checked.default:
                for r in (await conn.execute(select(personas).where(personas.c.name != name))).all():
                    if (r.data or {}).get("default"):
                        await conn.execute(
                            update(personas).where(personas.c.name == r.name).values(data={**r.data, "default": False})
                        )
            await conn.execute(delete(personas).where(personas.c.name == name))
            await conn.execute(personas.insert().values(name=name, data=data, source=source, created_at=now))
        self._cache.invalidate()
        return Persona.from_settings(checked, source)

    async def remove(self, name: str) -> bool:
        found = await self.get(name)
        if found is None:
            return False
        async with self._db.engine.begin() as conn:
            result = await conn.execute(delete(personas).where(personas.c.name == found.name))
        self._cache.invalidate()
        return bool(result.rowcount)

    async def list(self) -> builtins.list[Persona]:
        """Every persona, by name."""
        return await self._cache.get()

    async def _read(self) -> builtins.list[Persona]:
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(select(personas).order_by(personas.c.name))).all()
        return [_from_row(r) for r in rows]

    async def get(self, name: str) -> Persona | None:
        """The persona of that name; an exact match first, then ignoring case."""
        every = await self.list()
        exact = next((p for p in every if p.name == name), None)
        if exact is not None:
            return exact
        folded = name.strip().casefold()
        return next((p for p in every if p.name.casefold() == folded), None)

    async def default(self) -> Persona | None:
        """The persona of a chat that chose none; None: a plain assistant."""
        return next((p for p in await self.list() if p.default), None)


def _from_row(r: Any) -> Persona:
    data = {k: v for k, v in (r.data or {}).items() if k in FIELDS}
    try:
        return Persona.from_settings(PersonaSettings(name=r.name, **data), r.source)
    except ValidationError:
        # A row written by a newer version with values this one rejects: keep what is plain text.
        text: dict[str, Any] = {k: v for k, v in data.items() if isinstance(v, str) and k != "language"}
        return Persona(name=r.name, **text)
