"""Configuration: one pydantic model per section, read from TOML and `HUB_` variables.

Each component receives only its own section. Reading and checking the whole (load_settings,
describe) is in hub/config.py.

Built at every start, so kept cheap to build: annotations are real objects, not strings
(no `from __future__ import annotations`: pydantic would compile each string again), and
list or dict defaults are literals (pydantic copies them per instance; a factory costs a
signature inspection each).
"""

import ipaddress
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from hub.fetch import parse_allow

CHANNEL_NAMES = ("web", "telegram", "wechat", "wecom", "feishu", "qq", "onebot")


class Section(BaseModel):
    # Built when first validated: the sections are validated as part of `Settings`, whose own
    # validator covers them all, so building each one's as well at import was wasted (~10 ms).
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


def _check_url(value: str | None, *, path_allowed: bool = True) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in value):
        raise ValueError(f"not an http(s) URL: {value!r}")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number in 0-65535
    except ValueError:
        raise ValueError(f"not a valid port in {value!r}") from None
    if not path_allowed and parts.path not in ("", "/"):
        raise ValueError(f"must be scheme and host only, with no path: {value!r}")
    return value.rstrip("/")


def _fetch_allow_entry(value: str) -> str:
    parse_allow(value)  # the one parser of these entries, so the fetcher reads them alike
    return value


def is_loopback_host(host: str | None) -> bool:
    """`localhost` or a loopback address (127.0.0.0/8, ::1)."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class HttpSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    public_url: str | None = None
    max_body_bytes: int = Field(1024 * 1024, gt=0)
    # Hostnames or CIDRs fetched from even when private (hub/fetch.py); each entry checked alone.
    fetch_allow: list[Annotated[str, AfterValidator(_fetch_allow_entry)]] = []
    metrics_token: SecretStr | None = None

    @field_validator("public_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        return _check_url(v)

    @property
    def is_loopback(self) -> bool:
        if self.host in ("localhost", ""):
            return self.host == "localhost"
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @property
    def is_public(self) -> bool:
        """Reachable from beyond this machine: bound past loopback, or named by a public URL."""
        if not self.is_loopback:
            return True
        return self.public_url is not None and not is_loopback_host(urlsplit(self.public_url).hostname)


class DatabaseSettings(Section):
    url: str | None = None
    # Handled inbox rows, sent outbox rows, delivered web events and audit rows older than this
    # are pruned (the inbox never sooner than 7 days: it is the dedupe window).
    retention_days: int = Field(30, gt=0)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError("use sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER@HOST/DB")
        return v


# The commands people type (DESIGN.md), which aliases may name.
COMMANDS = ("help", "persona", "reset", "model", "lang", "image", "video", "music", "jobs", "cancel", "admin")
# Chinese names for the commands, shipped as defaults: `[commands] aliases` adds to them, changes
# one (`"视频" = "image"`) or removes one (`"视频" = ""`).
DEFAULT_ALIASES = {
    "视频": "video",
    "图片": "image",
    "音乐": "music",
    "帮助": "help",
    "任务": "jobs",
    "取消": "cancel",
    "管理": "admin",
    "语言": "lang",
}


class CommandsSettings(Section):
    aliases: dict[str, str] = {}

    def effective_aliases(self) -> dict[str, str]:
        """The defaults with the configured changes: alias (no slash) → command."""
        merged = dict(DEFAULT_ALIASES)
        for alias, command in self.aliases.items():
            key = alias.strip().lstrip("/")
            if command.strip():
                merged[key] = command.strip().lstrip("/").lower()
            else:
                merged.pop(key, None)
        return merged


class BotSettings(Section):
    # The language the bot answers in where a chat chose none (`auto`: the platform's hint).
    language: Literal["zh", "en", "auto"] = "auto"


class ApiSettings(Section):
    token: SecretStr | None = None
    rate_per_minute: int = Field(60, ge=1, le=100_000)
    max_media_mb: int = Field(50, ge=1, le=2048)


class ChannelSettings(Section):
    enabled: bool = False
    api_base: str | None = None

    @field_validator("api_base")
    @classmethod
    def _base(cls, v: str | None) -> str | None:
        return _check_url(v, path_allowed=False)


class WebSettings(Section):
    enabled: bool = True
    token: SecretStr | None = None
    token_is_admin: bool = False


class TelegramSettings(ChannelSettings):
    token: SecretStr | None = None
    secret_token: SecretStr | None = None
    mode: Literal["polling", "webhook"] = "polling"
    upload_limit_mb: int = Field(50, gt=0)

    @field_validator("token")
    @classmethod
    def _token(cls, v: SecretStr | None) -> SecretStr | None:
        # BotFather's form, `<bot id>:<secret>`; the Bot API client refuses anything else.
        if v is not None:
            bot_id, sep, rest = v.get_secret_value().partition(":")
            if not (bot_id.isdigit() and sep and rest) or any(c.isspace() for c in rest):
                raise ValueError("expected <bot id>:<secret>, as BotFather gives it (e.g. 123456:ABC-DEF...)")
        return v

    @field_validator("secret_token")
    @classmethod
    def _secret(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None:
            s = v.get_secret_value()
            if not (1 <= len(s) <= 256) or any(not (c.isalnum() or c in "_-") or not c.isascii() for c in s):
                raise ValueError("1 to 256 characters of A-Z, a-z, 0-9, _ and -")
        return v


class WechatSettings(ChannelSettings):
    app_id: str | None = None
    app_secret: SecretStr | None = None
    token: SecretStr | None = None
    encoding_aes_key: SecretStr | None = None
    reply_mode: Literal["push", "passive"] = "push"
    # Plain mode's signature does not cover the body: /admin over it only when this is true.
    allow_admin_in_plain_mode: bool = False


class WecomSettings(ChannelSettings):
    corp_id: str | None = None
    agent_id: str | None = None
    secret: SecretStr | None = None
    token: SecretStr | None = None
    encoding_aes_key: SecretStr | None = None


class FeishuSettings(ChannelSettings):
    app_id: str | None = None
    app_secret: SecretStr | None = None
    verification_token: SecretStr | None = None
    encrypt_key: SecretStr | None = None
    mode: Literal["websocket", "webhook"] = "websocket"
    streaming: bool = True


class QQSettings(ChannelSettings):
    app_id: str | None = None
    app_secret: SecretStr | None = None
    token_base: str | None = None

    @field_validator("token_base")
    @classmethod
    def _token_base(cls, v: str | None) -> str | None:
        return _check_url(v, path_allowed=False)


class OneBotSettings(ChannelSettings):
    access_token: SecretStr | None = None
    secret: SecretStr | None = None


class ModelSettings(Section):
    name: str
    base_url: str
    api_key: SecretStr | None = None
    model: str
    temperature: float | None = None
    max_tokens: int | None = None
    top_p: float | None = None
    frequency_penalty: float | None = None
    context_length: int = Field(8192, gt=0)
    timeout_s: float = Field(120, gt=0)
    first_token_timeout_s: float = Field(30, gt=0)
    default: bool = False

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        out = _check_url(v)
        assert out is not None
        return out


class PersonaSettings(Section):
    name: str
    appearance: str = ""
    personality: str = ""
    background: str = ""
    style: str = ""
    knowledge: str = ""
    greeting: str = ""
    # For the prompt's frame (Chinese when unset) and the chat's language when set.
    language: Literal["zh", "en"] | None = None
    restate: bool = True
    default: bool = False


class ProviderSettings(Section):
    base_url: str
    api_key: SecretStr | None = None
    model: str | None = None
    timeout_s: float = Field(600, gt=0)

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        out = _check_url(v)
        assert out is not None
        return out


class HunyuanSettings(ProviderSettings):
    key_id: str | None = None
    model: str | None = "hy-video-1.5"
    poll_interval_s: float = Field(15, gt=0)

    @field_validator("base_url")
    @classmethod
    def _host_only(cls, v: str) -> str:
        # The host alone: the provider appends /v1/api/video/submit and /query.
        out = _check_url(v, path_allowed=False)
        assert out is not None
        return out


class MusicSettings(ProviderSettings):
    poll_interval_s: float = Field(10, gt=0)


class ImageSettings(ProviderSettings):
    kind: Literal["openai", "sdxl"] = "openai"
    timeout_s: float = Field(120, gt=0)
    job_after_s: float = Field(10, gt=0)


class ProvidersSettings(Section):
    hunyuan: HunyuanSettings | None = None
    music: MusicSettings | None = None
    image: ImageSettings | None = None


class AccessRules(Section):
    private: Literal["open", "allowlist", "pairing"] | None = None
    groups: Literal["open", "allowlist"] | None = None
    allow: list[str] | None = None
    pairing_ttl_s: int | None = Field(None, gt=0)
    rate_per_minute: int | None = Field(None, gt=0)


class AccessSettings(AccessRules):
    private: Literal["open", "allowlist", "pairing"] | None = "open"
    groups: Literal["open", "allowlist"] | None = "open"
    allow: list[str] | None = []
    pairing_ttl_s: int | None = Field(3600, gt=0)
    # Who may change a group's persona, model, memory and language there.
    group_settings: Literal["admins", "anyone"] = "admins"
    telegram: AccessRules | None = None
    wechat: AccessRules | None = None
    wecom: AccessRules | None = None
    feishu: AccessRules | None = None
    qq: AccessRules | None = None
    onebot: AccessRules | None = None
    web: AccessRules | None = None

    def for_channel(self, channel: str) -> AccessRules:
        """The rules in force on one channel: the channel's overrides over the defaults."""
        base = {k: getattr(self, k) for k in AccessRules.model_fields}
        override = getattr(self, channel, None)
        if isinstance(override, AccessRules):
            base.update({k: v for k, v in override.model_dump().items() if v is not None})
        return AccessRules(**base)


class QuotasSettings(Section):
    chat: int | None = Field(None, ge=0)
    image: int | None = Field(None, ge=0)
    video: int | None = Field(None, ge=0)
    music: int | None = Field(None, ge=0)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="HUB_", env_nested_delimiter="__", extra="forbid", case_sensitive=False, frozen=True
    )

    data_dir: Path = Path("./data")
    media_retention_days: int = Field(7, gt=0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # The defaults, unvalidated: constants, and validating them would build each section's
    # own validator at import (see Section).
    http: HttpSettings = HttpSettings.model_construct()
    database: DatabaseSettings = DatabaseSettings.model_construct()
    bot: BotSettings = BotSettings.model_construct()
    commands: CommandsSettings = CommandsSettings.model_construct()
    api: ApiSettings = ApiSettings.model_construct()
    web: WebSettings = WebSettings.model_construct()
    telegram: TelegramSettings = TelegramSettings.model_construct()
    wechat: WechatSettings = WechatSettings.model_construct()
    wecom: WecomSettings = WecomSettings.model_construct()
    feishu: FeishuSettings = FeishuSettings.model_construct()
    qq: QQSettings = QQSettings.model_construct()
    onebot: OneBotSettings = OneBotSettings.model_construct()
    models: list[ModelSettings] = []
    personas: list[PersonaSettings] = []
    providers: ProvidersSettings = ProvidersSettings.model_construct()
    admins: list[str] = []
    access: AccessSettings = AccessSettings.model_construct()
    quotas: QuotasSettings = QuotasSettings.model_construct()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the file (passed as init values).
        return (env_settings, init_settings)

    @property
    def database_url(self) -> str:
        return self.database.url or f"sqlite+aiosqlite:///{self.data_dir / 'hub.db'}"

    @property
    def media_dir(self) -> Path:
        return self.data_dir / "media"

    def default_model(self) -> ModelSettings | None:
        for m in self.models:
            if m.default:
                return m
        return self.models[0] if self.models else None
