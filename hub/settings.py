"""Configuration: one pydantic model per section, read from TOML and `HUB_` variables.

Each component receives only its own section. `load_settings` returns the validated root or
raises ConfigError with every mistake as `(dotted.key, what is wrong)`.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args, get_origin
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

from hub.errors import ConfigError

DEFAULT_CONFIG = Path("config/hub.toml")
# Variables of the hub's own tooling that carry the prefix but are not configuration.
NOT_CONFIG_VARS = {"HUB_CONFIG", "HUB_TEST_REQUIRE_ALL", "HUB_TEST_PG"}


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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


class HttpSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    public_url: str | None = None
    max_body_bytes: int = Field(1024 * 1024, gt=0)

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


class DatabaseSettings(Section):
    url: str | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError("use sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER@HOST/DB")
        return v


class CommandsSettings(Section):
    aliases: dict[str, str] = Field(default_factory=dict)


class ApiSettings(Section):
    token: SecretStr | None = None


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
    language: Literal["zh", "en"] = "zh"
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
    allow: list[str] | None = Field(default_factory=list)
    pairing_ttl_s: int | None = Field(3600, gt=0)
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
    http: HttpSettings = HttpSettings()
    database: DatabaseSettings = DatabaseSettings()
    commands: CommandsSettings = CommandsSettings()
    api: ApiSettings = ApiSettings()
    web: WebSettings = WebSettings()
    telegram: TelegramSettings = TelegramSettings()
    wechat: WechatSettings = WechatSettings()
    wecom: WecomSettings = WecomSettings()
    feishu: FeishuSettings = FeishuSettings()
    qq: QQSettings = QQSettings()
    onebot: OneBotSettings = OneBotSettings()
    models: list[ModelSettings] = Field(default_factory=list)
    personas: list[PersonaSettings] = Field(default_factory=list)
    providers: ProvidersSettings = ProvidersSettings()
    admins: list[str] = Field(default_factory=list)
    access: AccessSettings = AccessSettings()
    quotas: QuotasSettings = QuotasSettings()

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


# Channels this version builds; a section of another is accepted, enabling it is a mistake.
BUILT_CHANNELS = {"web", "telegram", "wechat", "wecom"}
CHANNEL_NAMES = ("web", "telegram", "wechat", "wecom", "feishu", "qq", "onebot")

REQUIRED_WHEN_ENABLED: dict[str, tuple[str, ...]] = {
    "telegram": ("token",),
    "wechat": ("app_id", "app_secret", "token"),
    "wecom": ("corp_id", "agent_id", "secret", "token", "encoding_aes_key"),
    "feishu": ("app_id", "app_secret"),
    "qq": ("app_id", "app_secret"),
    "onebot": (),
}


def _resolve_env_refs(data: Any, path: str, problems: list[tuple[str, str]], env: Mapping[str, str]) -> Any:
    """Replace every string `"env:NAME"` with the variable's value; an unset one is a mistake."""
    if isinstance(data, dict):
        return {k: _resolve_env_refs(v, f"{path}.{k}" if path else str(k), problems, env) for k, v in data.items()}
    if isinstance(data, list):
        return [_resolve_env_refs(v, f"{path}.{i}", problems, env) for i, v in enumerate(data)]
    if isinstance(data, str) and data.startswith("env:"):
        name = data[4:]
        if name not in env:
            problems.append((path, f"environment variable {name} is not set"))
            return None
        return env[name]
    return data


def _check_env_vars(env: Mapping[str, str]) -> tuple[list[tuple[str, str]], set[str]]:
    """`HUB_` variables that name no key, or hold a list or table that is not JSON.

    Returns the problems and the variables to keep away from the settings source, so that
    each mistake is reported once, under the variable's own name.
    """
    problems: list[tuple[str, str]] = []
    bad: set[str] = set()
    for var, value in env.items():
        upper = var.upper()
        if not upper.startswith("HUB_") or upper in NOT_CONFIG_VARS:
            continue
        parts = upper[4:].lower().split("__")
        model: Any = Settings
        annotation: Any = None
        for part in parts:
            fields = getattr(model, "model_fields", None)
            if fields is None:
                break  # a dict or list value: any sub-key is the value's business
            if part not in fields:
                problems.append((var, "no such configuration key"))
                bad.add(var)
                break
            annotation = fields[part].annotation
            model = _section_type(annotation)
        else:
            if _is_structured(annotation):
                try:
                    json.loads(value)
                except ValueError:
                    problems.append((var, 'must be JSON here, e.g. ["telegram:123"] or {"key": "value"}'))
                    bad.add(var)
    return problems, bad


def _is_structured(annotation: Any) -> bool:
    """Whether an environment value for this annotation is read as JSON (a list, table or section)."""
    if _section_type(annotation) is not None:
        return True
    origins = {get_origin(annotation), *(get_origin(a) for a in get_args(annotation))}
    return bool(origins & {list, dict, set, tuple})


def _section_type(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _semantic_problems(s: Settings) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    for name in CHANNEL_NAMES:
        section = getattr(s, name)
        if not section.enabled:
            continue
        if name not in BUILT_CHANNELS:
            problems.append((f"{name}.enabled", f"the {name} channel is not available in this version"))
            continue
        for key in REQUIRED_WHEN_ENABLED.get(name, ()):
            if getattr(section, key) in (None, ""):
                problems.append((f"{name}.{key}", "required when the channel is enabled"))
    if s.telegram.enabled and s.telegram.mode == "webhook" and s.telegram.secret_token is None:
        problems.append(("telegram.secret_token", "required in webhook mode (else anyone can post updates)"))
    if s.wechat.enabled and s.wechat.encoding_aes_key is not None:
        if len(s.wechat.encoding_aes_key.get_secret_value()) != 43:
            problems.append(("wechat.encoding_aes_key", "must be 43 characters"))
    if s.wecom.enabled and s.wecom.encoding_aes_key is not None:
        if len(s.wecom.encoding_aes_key.get_secret_value()) != 43:
            problems.append(("wecom.encoding_aes_key", "must be 43 characters"))
    if s.web.enabled and not s.http.is_loopback and s.web.token is None:
        problems.append(("web.token", f"required when [http] host ({s.http.host}) is not a loopback address"))
    names = [m.name for m in s.models]
    for i, m in enumerate(s.models):
        if names.count(m.name) > 1:
            problems.append((f"models.{i}.name", f"duplicate model name {m.name!r}"))
    if sum(m.default for m in s.models) > 1:
        problems.append(("models", "more than one model has default = true"))
    pnames = [p.name for p in s.personas]
    for i, p in enumerate(s.personas):
        if pnames.count(p.name) > 1:
            problems.append((f"personas.{i}.name", f"duplicate persona name {p.name!r}"))
    if sum(p.default for p in s.personas) > 1:
        problems.append(("personas", "more than one persona has default = true"))
    for key, value in s.commands.aliases.items():
        if value.lstrip("/") == "" or " " in value:
            problems.append((f"commands.aliases.{key}", "must name a command"))
    from hub.events import ChatRef

    for i, item in enumerate(s.access.allow or []):
        if item.count(":") >= 2:
            try:
                ChatRef.parse(item)
            except ValueError as exc:
                problems.append((f"access.allow.{i}", str(exc)))
        elif ":" not in item:
            problems.append((f"access.allow.{i}", f"{item!r}: expected <channel>:<user_id> or a chat reference"))
    for i, item in enumerate(s.admins):
        if ":" not in item:
            problems.append((f"admins.{i}", f"{item!r}: expected <channel>:<user_id>, e.g. telegram:12345"))
    if s.providers.hunyuan and (s.providers.hunyuan.api_key is None):
        problems.append(("providers.hunyuan.api_key", "required"))
    return problems


def config_path(explicit: str | os.PathLike[str] | None, env: Mapping[str, str]) -> Path | None:
    if explicit:
        return Path(explicit)
    if env.get("HUB_CONFIG"):
        return Path(env["HUB_CONFIG"])
    return DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None


def load_settings(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate the configuration; raise ConfigError naming every mistake."""
    env = dict(os.environ if env is None else env)
    problems: list[tuple[str, str]] = []
    data: dict[str, Any] = {}
    file = config_path(path, env)
    if file is not None:
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError([("config", f"file not found: {file}")]) from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError([("config", f"{file}: not valid TOML: {exc}")]) from None
    data = _resolve_env_refs(data, "", problems, env)
    env_problems, bad_vars = _check_env_vars(env)
    problems += env_problems
    hub_env = {
        k: v
        for k, v in env.items()
        if k.upper().startswith("HUB_") and k.upper() not in NOT_CONFIG_VARS and k not in bad_vars
    }
    try:
        settings = _validate(data, hub_env)
    except ValidationError as exc:
        problems += _validation_problems(exc, hub_env)
        # Validate once more without the faulty values, to name the other mistakes too.
        rest = _without_faults(exc, data, hub_env)
        if rest is not None:
            problems += _semantic_problems(rest)
        raise ConfigError(_first_per_key(problems)) from None
    problems += _semantic_problems(settings)
    if problems:
        raise ConfigError(_first_per_key(problems))
    return settings


def _validate(data: dict[str, Any], hub_env: Mapping[str, str]) -> Settings:
    saved = {k: v for k, v in os.environ.items() if k.upper().startswith("HUB_")}
    try:
        # pydantic-settings reads os.environ; give it exactly `hub_env` for the duration.
        for k in saved:
            del os.environ[k]
        os.environ.update(hub_env)
        try:
            return Settings(**data)
        except SettingsError as exc:
            # Structured values were checked to be JSON already; this is a last resort.
            raise ConfigError([("environment", str(exc))]) from None
    finally:
        for k in [k for k in os.environ if k.upper().startswith("HUB_")]:
            del os.environ[k]
        os.environ.update(saved)


def _validation_problems(exc: ValidationError, hub_env: Mapping[str, str]) -> list[tuple[str, str]]:
    problems = []
    upper_env = {k.upper() for k in hub_env}
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        key = ".".join(loc) or "config"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        for prefix in ("Value error, ", "Assertion failed, "):
            msg = msg.removeprefix(prefix)
        var = "HUB_" + "__".join(loc).upper()
        if var in upper_env:
            msg += f" (from {var})"
        problems.append((key, msg))
    return problems


def _without_faults(exc: ValidationError, data: dict[str, Any], hub_env: Mapping[str, str]) -> Settings | None:
    """Settings with every faulty value left out (defaults instead), or None when that fails."""
    data = copy.deepcopy(data)
    env = dict(hub_env)
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        _drop(data, loc)
        var = "HUB_" + "__".join(loc).upper()
        for k in [k for k in env if k.upper() == var or var.startswith(k.upper() + "__")]:
            del env[k]
    try:
        return _validate(data, env)
    except (ValidationError, ConfigError):
        return None


def _drop(data: Any, loc: list[str]) -> None:
    for part in loc[:-1]:
        if isinstance(data, dict):
            data = data.get(part)
        elif isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            return
    if isinstance(data, dict) and loc:
        data.pop(loc[-1], None)


def _first_per_key(problems: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """One line per key: a value missing from the environment is not also reported as invalid."""
    seen: set[str] = set()
    out = []
    for key, msg in problems:
        if key not in seen:
            seen.add(key)
            out.append((key, msg))
    return out


def describe(s: Settings) -> list[str]:
    """What would run, for `hub check-config`: never a secret."""
    lines = [f"http: listening on {s.http.host}:{s.http.port}"]
    if s.http.public_url:
        lines.append(f"http: public URL {s.http.public_url}")
    lines.append(f"database: {_mask_url(s.database_url)}")
    lines.append(f"data_dir: {s.data_dir}")
    for name in CHANNEL_NAMES:
        section = getattr(s, name)
        if section.enabled:
            extra = ""
            if name == "telegram":
                extra = f" ({s.telegram.mode})"
            elif name == "wechat":
                extra = f" (reply_mode {s.wechat.reply_mode})"
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


def _mask_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return url.replace(parts.netloc, netloc)
    return url
