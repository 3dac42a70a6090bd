"""A small error hierarchy that says what the caller should do."""

from __future__ import annotations

from hub.redact import safe_text


class HubError(Exception):
    """Base of every error the hub raises on purpose."""


class ConfigError(HubError):
    """The configuration is wrong; `problems` holds `(dotted.key, what is wrong)` pairs."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{k}: {m}" for k, m in problems))


class VerificationFailed(HubError):
    """An inbound request failed its signature or token check: answer 401/403, process nothing."""

    def __init__(self, reason: str, status: int = 403) -> None:
        self.status = status
        super().__init__(reason)


class BadPayload(HubError):
    """An inbound request's body is malformed: answer 400, process nothing."""


class SendError(HubError):
    """A platform refused or failed a send.

    The outbox reads only `retryable` and `retry_after`; `final_for_chat` marks a chat that
    cannot be reached any more (the bot was blocked, the chat is gone).
    """

    def __init__(
        self,
        reason: str,
        *,
        retryable: bool,
        retry_after: float | None = None,
        final_for_chat: bool = False,
    ) -> None:
        self.retryable = retryable
        self.retry_after = retry_after
        self.final_for_chat = final_for_chat
        # The reason is logged and stored (the outbox's error column): never a token or a query.
        super().__init__(safe_text(reason))


class ProviderError(HubError):
    """An AI provider failed; `retryable` says whether trying again later may help."""

    def __init__(self, reason: str, *, retryable: bool = False) -> None:
        self.retryable = retryable
        super().__init__(safe_text(reason))


class AwaitingUser(SendError):
    """The platform only answers: this message waits (outbox status `waiting`) until the chat
    writes again, then goes out as the answer to that message. Never a failure, never dropped."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, retryable=True)
