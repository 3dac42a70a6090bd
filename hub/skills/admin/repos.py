"""The storage the `/admin` skill reads and changes, handed over as one piece."""

from __future__ import annotations

from dataclasses import dataclass

from hub.storage.admin import PairingRepo, QuotaRepo, UsageRepo
from hub.storage.chats import AuditRepo, ChatRepo, KeyValueRepo, UserRepo
from hub.storage.inbox import InboxRepo
from hub.storage.outbox import OutboxRepo
from hub.storage.personas import PersonaRepo


@dataclass(frozen=True, slots=True)
class AdminRepos:
    users: UserRepo
    chats: ChatRepo
    audit: AuditRepo
    kv: KeyValueRepo
    quotas: QuotaRepo
    pairing: PairingRepo
    personas: PersonaRepo
    usage: UsageRepo
    inbox: InboxRepo
    outbox: OutboxRepo
