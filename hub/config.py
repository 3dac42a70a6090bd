"""Reading the configuration: TOML, `env:` references and `HUB_` variables, checked as a whole.

`load_settings` returns the validated root (hub/settings.py) or raises ConfigError with every
mistake as `(dotted.key, what is wrong)`; config_report.py says what would run.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping, Set
from pathlib import Path
from typing import Any, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_settings import SettingsError

from hub.errors import ConfigError
from hub.events import ChatRef
from hub.settings import CHANNEL_NAMES, COMMANDS, Settings

DEFAULT_CONFIG = Path("config/hub.toml")
_GONE = object()
# Variables of the hub's own tooling that carry the prefix but are not configuration.
NOT_CONFIG_VARS = {"HUB_CONFIG"}

# Channels this version builds; a section of another is accepted, enabling it is a mistake.
BUILT_CHANNELS = {"web", "telegram", "wechat", "wecom", "feishu", "qq", "onebot"}

# A web user names itself (the page picks its session id), so it is never an admin by name.
WEB_ADMIN_HINT = "web users are never admins by name: set [web] token_is_admin = true instead"

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


def _env_ref_names(data: Any) -> set[str]:
    """Variables named by `"env:NAME"` values: the file's own secrets, whatever their prefix."""
    if isinstance(data, dict):
        return set().union(*(_env_ref_names(v) for v in data.values())) if data else set()
    if isinstance(data, list):
        return set().union(*(_env_ref_names(v) for v in data)) if data else set()
    if isinstance(data, str) and data.startswith("env:"):
        return {data[4:].upper()}
    return set()


def _check_env_vars(
    env: Mapping[str, str], referenced: Set[str] = frozenset()
) -> tuple[list[tuple[str, str]], set[str]]:
    """`HUB_` variables that name no key, or hold a list or table that is not JSON.

    Returns the problems and the variables to keep away from the settings source, so that
    each mistake is reported once, under the variable's own name.
    """
    problems: list[tuple[str, str]] = []
    bad: set[str] = set()
    for var, value in env.items():
        upper = var.upper()
        if not upper.startswith("HUB_") or upper in NOT_CONFIG_VARS or upper in referenced:
            continue
        parts = upper[4:].lower().split("__")
        model: Any = Settings
        annotation: Any = None
        for part in parts:
            fields = getattr(model, "model_fields", None)
            if fields is None:
                break  # a dict or list value: any sub-key is the value's business
            if part not in fields:
                import difflib  # only on a mistake

                # Suggest the variable's own spelling: HUB_HTTP__PROT → HUB_HTTP__PORT.
                close = difflib.get_close_matches(part, list(fields), n=1, cutoff=0.7)
                near = f" (did you mean {var[: len(var) - len(part)]}{close[0].upper()}?)" if close else ""
                problems.append((var, "no such configuration key" + near))
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


def _known_keys(loc: list[str]) -> list[str]:
    """The keys a section takes, for the section at `loc` (list positions skipped)."""
    model: Any = Settings
    for part in loc:
        if part.isdigit():
            continue
        fields = getattr(model, "model_fields", None)
        if fields is None or part not in fields:
            return []
        model = _section_type(fields[part].annotation)
    fields = getattr(model, "model_fields", None)
    return list(fields) if fields else []


def _did_you_mean(key: str, known: list[str]) -> str:
    import difflib  # only on a mistake

    near = difflib.get_close_matches(key.lower(), known, n=1, cutoff=0.7)
    return f" (did you mean `{near[0]}`?)" if near else ""


def _section_type(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _semantic_problems(s: Settings) -> list[tuple[str, str]]:
    return _channel_problems(s) + _entry_problems(s)


def _channel_problems(s: Settings) -> list[tuple[str, str]]:
    """What the enabled channels (and the web chat's token) need."""
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
    if s.feishu.enabled and s.feishu.mode == "webhook" and not (s.feishu.verification_token or s.feishu.encrypt_key):
        problems.append(
            ("feishu.encrypt_key", "webhook mode needs encrypt_key or verification_token (else anyone can post events)")
        )
    if s.wechat.enabled and s.wechat.encoding_aes_key is not None:
        if len(s.wechat.encoding_aes_key.get_secret_value()) != 43:
            problems.append(("wechat.encoding_aes_key", "must be 43 characters"))
    if s.wecom.enabled and s.wecom.encoding_aes_key is not None:
        if len(s.wecom.encoding_aes_key.get_secret_value()) != 43:
            problems.append(("wecom.encoding_aes_key", "must be 43 characters"))
    if s.web.enabled and s.http.is_public and s.web.token is None:
        where = (
            f"[http] host ({s.http.host}) is not a loopback address"
            if not s.http.is_loopback
            else f"[http] public_url ({s.http.public_url}) names a host that is not a loopback address"
        )
        problems.append(("web.token", f"required when {where}"))
    if s.web.token_is_admin and s.web.token is None:
        problems.append(("web.token_is_admin", "needs [web] token (a request carrying it acts as an admin)"))
    return problems


def _entry_problems(s: Settings) -> list[tuple[str, str]]:
    """Models, personas, aliases, access lists, admins and providers, entry by entry."""
    problems: list[tuple[str, str]] = []
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
        if not key.strip().lstrip("/") or any(c.isspace() for c in key.strip()):
            problems.append((f"commands.aliases.{key}", "an alias is one word, without spaces"))
        elif value.strip() and value.strip().lstrip("/").lower() not in COMMANDS:
            problems.append(
                (f"commands.aliases.{key}", f"must name a command ({', '.join(COMMANDS)}), or be \"\" to remove it")
            )
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
        elif item.startswith("web:"):
            problems.append((f"admins.{i}", f"{item!r}: the web page chooses its own session id; {WEB_ADMIN_HINT}"))
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
        import tomllib  # no file, no parser to import (the embedded default)

        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError([("config", f"file not found: {file}")]) from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError([("config", f"{file}: not valid TOML: {exc}")]) from None
    referenced = _env_ref_names(data)
    data = _resolve_env_refs(data, "", problems, env)
    env_problems, bad_vars = _check_env_vars(env, referenced)
    problems += env_problems
    hub_env = {
        k: v
        for k, v in env.items()
        if k.upper().startswith("HUB_")
        and k.upper() not in NOT_CONFIG_VARS
        and k.upper() not in referenced
        and k not in bad_vars
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
            msg = "unknown key" + _did_you_mean(loc[-1], _known_keys(loc[:-1]))
        for prefix in ("Value error, ", "Assertion failed, "):
            msg = msg.removeprefix(prefix)
        var = "HUB_" + "__".join(loc).upper()
        if var in upper_env:
            msg += f" (from {var})"
        problems.append((key, msg))
    return problems


def _without_faults(exc: ValidationError, data: dict[str, Any], hub_env: Mapping[str, str]) -> Settings | None:
    """Settings with every faulty value left out (defaults instead), or None when that fails.

    A value that is missing cannot be left out: the entry holding it (a `[[models]]` item, a
    section) goes instead, a level further up each round, so the checks that need whole
    settings still run and every mistake is named in one round.
    """
    data = copy.deepcopy(data)
    env = dict(hub_env)
    for _ in range(4):
        for err in exc.errors():
            loc = [str(p) for p in err["loc"]]
            _drop(data, loc[:-1] if err["type"] == "missing" else loc)
            var = "HUB_" + "__".join(loc).upper()
            for k in [k for k in env if k.upper() == var or var.startswith(k.upper() + "__")]:
                del env[k]
        data = _sweep(data)
        try:
            return _validate(data, env)
        except ValidationError as again:
            exc = again
        except ConfigError:
            return None
    return None


def _drop(data: Any, loc: list[str]) -> None:
    for part in loc[:-1]:
        if isinstance(data, dict):
            data = data.get(part)
        elif isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            return
    if not loc:
        return
    if isinstance(data, dict):
        data.pop(loc[-1], None)
    elif isinstance(data, list) and loc[-1].isdigit() and int(loc[-1]) < len(data):
        data[int(loc[-1])] = _GONE  # removed after the round, so the other positions hold


def _sweep(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _sweep(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_sweep(v) for v in data if v is not _GONE]
    return data


def _first_per_key(problems: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """One line per key: a value missing from the environment is not also reported as invalid."""
    seen: set[str] = set()
    out = []
    for key, msg in problems:
        if key not in seen:
            seen.add(key)
            out.append((key, msg))
    return out
