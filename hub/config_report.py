"""What `hub check-config` prints besides problems: what would run, and risky choices."""

from __future__ import annotations

from hub.redact import safe_text, safe_url
from hub.settings import CHANNEL_NAMES, Settings


def describe(s: Settings) -> list[str]:
    """What would run, for `hub check-config`: never a secret (every URL masked, hub/redact.py)."""
    return [safe_text(line) for line in _describe(s)]


def _describe(s: Settings) -> list[str]:
    lines = [f"http: listening on {s.http.host}:{s.http.port}"]
    if s.http.public_url:
        lines.append(f"http: public URL {s.http.public_url}")
    lines.append(f"database: {safe_url(s.database_url)}")
    lines.append(f"data_dir: {s.data_dir}")
    for name in CHANNEL_NAMES:
        section = getattr(s, name)
        if section.enabled:
            extra = ""
            if name == "telegram":
                extra = f" ({s.telegram.mode})"
            elif name == "wechat":
                extra = f" (reply_mode {s.wechat.reply_mode})"
            elif name == "feishu":
                extra = f" ({s.feishu.mode}{', streaming cards' if s.feishu.streaming else ''})"
            elif name == "web" and s.web.token is not None:
                extra = " (token required)"
            lines.append(f"channel: {name}{extra}")
    default = s.default_model()
    for m in s.models:
        mark = " (default)" if m is default else ""
        lines.append(f"model: {m.name}{mark}: {m.model} at {m.base_url}")
    if not s.models:
        lines.append("model: none configured (chat will explain how to add one)")
    for p in s.personas:
        lines.append(f"persona: {p.name}{' (default)' if p.default else ''}")
    for name in ("hunyuan", "music", "image"):
        prov = getattr(s.providers, name)
        if prov is not None:
            lines.append(f"provider: {name} at {prov.base_url}")
    if not any(getattr(s.providers, name) is not None for name in ("hunyuan", "music", "image")):
        lines.append("provider: none configured (/image, /video and /music will explain how to add one)")
    if s.admins:
        lines.append(f"admins: {', '.join(s.admins)}")
    return lines


def config_warnings(s: Settings) -> list[tuple[str, str]]:
    """Valid but risky choices, as (key, message): `hub check-config` prints them, still exit 0."""
    out: list[tuple[str, str]] = []
    if s.wechat.enabled and s.wechat.encoding_aes_key is None:
        out.append(
            (
                "wechat.encoding_aes_key",
                "not set: plain-mode signatures do not cover the body, "
                "so a leaked callback URL lets anyone forge messages",
            )
        )
    if s.feishu.enabled and s.feishu.mode == "webhook" and s.feishu.encrypt_key is None:
        out.append(
            (
                "feishu.encrypt_key",
                "not set: webhook bodies are not signed and the verification token travels inside them, "
                "so anyone who saw one event can forge messages (/admin is refused over it)",
            )
        )
    if s.http.public_url and not s.web.enabled and s.http.metrics_token is None:
        out.append(("http.metrics_token", "not set: /metrics is open to anyone who reaches public_url"))
    return out
