"""OneBot v11 actions out: building the send actions, and reading their answers in one place.

An answer is `{"status": "ok" | "async" | "failed", "retcode", "data", "message"|"wording",
"echo"}`. Retcodes mapped once: 1400 (bad request) and 1404 (no such action) are bugs or
content the implementation refuses, not worth a retry; everything else (an implementation
busy, a send the account could not make right now) is retried with the outbox's backoff.
"""

from __future__ import annotations

from typing import Any

from hub.errors import SendError
from hub.events import ChatRef

FINAL_RETCODES = {1400, 1404}


def send_action(target: ChatRef, message: list[dict[str, Any]]) -> tuple[str, str, dict[str, Any]]:
    """The account (self_id), the action name and its params for a message to `target`."""
    self_id, peer = split_chat(target)
    if target.kind == "group":
        return self_id, "send_group_msg", {"group_id": int(peer), "message": message}
    return self_id, "send_private_msg", {"user_id": int(peer), "message": message}


def split_chat(target: ChatRef) -> tuple[str, str]:
    """`<self_id>/<peer>` of a OneBot ChatRef; anything else is a bug of the caller."""
    self_id, sep, peer = target.chat_id.partition("/")
    if target.channel != "onebot" or not sep or not self_id.isdigit() or not peer.isdigit():
        raise SendError(f"not a OneBot chat: {target} (expected onebot:<kind>:<self_id>/<id>)", retryable=False)
    return self_id, peer


def check_answer(action: str, answer: Any) -> dict[str, Any]:
    """The `data` of a successful answer, else SendError saying whether to try again."""
    if not isinstance(answer, dict):
        raise SendError(f"{action}: answer is not a JSON object", retryable=True)
    status, retcode = answer.get("status"), answer.get("retcode")
    if status in ("ok", "async") and retcode in (0, 1, None):
        data = answer.get("data")
        return data if isinstance(data, dict) else {}
    why = str(answer.get("wording") or answer.get("message") or answer.get("msg") or "")[:200]
    retryable = not (isinstance(retcode, int) and retcode in FINAL_RETCODES)
    raise SendError(f"{action}: status={status} retcode={retcode} {why}".rstrip(), retryable=retryable)


def sent_id(data: dict[str, Any]) -> str | None:
    mid = data.get("message_id")
    if isinstance(mid, int | str) and not isinstance(mid, bool) and str(mid):
        return str(mid)
    return None
