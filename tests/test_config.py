"""The configuration: the documented example, and `hub check-config` as a user runs it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from harness import ROOT
from pydantic import BaseModel

from hub.config import load_settings
from hub.settings import Settings

EXAMPLE = ROOT / "config" / "hub.example.toml"
# `[section]`, `[[list]]`, and the same written as a comment (`# [providers.image]`).
HEADER = re.compile(r"^(?:# )?\[\[?([A-Za-z0-9_.]+)\]\]?\s*$")
# `key = value`, and an optional setting written as a comment (`# token = "env:..."`).
KEY = re.compile(r"^(?:# )?([A-Za-z_][A-Za-z0-9_]*)\s*=\s")
ENV_REF = re.compile(r'"env:([A-Za-z_][A-Za-z0-9_]*)"')


# --- the example file ------------------------------------------------------------------------


def section_type(annotation: Any) -> type[BaseModel] | None:
    """The model of a field that is a section (or a list of them, or an optional one)."""
    for candidate in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def settings_keys() -> list[str]:
    """Every key of the settings models: `table.key` for values and `[table]` for sections.

    Sibling sections of one model (the per-channel `[access.<channel>]` overrides) are spelled
    out once; the others need only their header.
    """
    keys: list[str] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        expanded: set[type[BaseModel]] = set()
        for name, field in model.model_fields.items():
            path = f"{prefix}{name}"
            section = section_type(field.annotation)
            if section is None:
                keys.append(path)
                continue
            keys.append(f"[{path}]")
            if section not in expanded:
                expanded.add(section)
                walk(section, f"{path}.")

    walk(Settings, "")
    return keys


def example_keys(text: str) -> list[str]:
    """The keys the example sets or shows, in the form of settings_keys()."""
    found: list[str] = []
    table = ""
    for line in text.splitlines():
        header = HEADER.match(line)
        if header:
            table = header.group(1)
            # `[providers.image]` shows the `[providers]` table too.
            parts = table.split(".")
            found += [f"[{'.'.join(parts[: i + 1])}]" for i in range(len(parts))]
            continue
        key = KEY.match(line)
        if key:
            found.append(f"{table}.{key.group(1)}" if table else key.group(1))
    return found


def uncomment_everything(text: str) -> str:
    """The example with every optional setting and section switched on."""
    lines = []
    for line in text.splitlines():
        if line.startswith("# ") and (HEADER.match(line) or KEY.match(line)):
            line = line[2:]
        lines.append(line)
    return "\n".join(lines) + "\n"


def test_the_example_is_the_embedded_default(tmp_path: Path) -> None:
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    example = load_settings(EXAMPLE, env={})
    assert example.model_dump() == load_settings(empty, env={}).model_dump()
    assert example.web.enabled
    assert not any(getattr(example, ch).enabled for ch in ("telegram", "wechat", "wecom", "feishu", "qq", "onebot"))


def test_every_key_appears_in_the_example() -> None:
    shown = set(example_keys(EXAMPLE.read_text(encoding="utf-8")))
    missing = [key for key in settings_keys() if key not in shown]
    assert not missing, f"config/hub.example.toml lacks: {missing}"


def test_the_completeness_check_sees_a_missing_key() -> None:
    text = EXAMPLE.read_text(encoding="utf-8").replace("upload_limit_mb = 50\n", "")
    shown = set(example_keys(text))
    assert [key for key in settings_keys() if key not in shown] == ["telegram.upload_limit_mb"]


def test_the_example_follows_the_order_of_the_settings() -> None:
    tables = [k[1:-1].split(".")[0] for k in example_keys(EXAMPLE.read_text(encoding="utf-8")) if k.startswith("[")]
    first_seen = list(dict.fromkeys(tables))
    declared = [name for name, f in Settings.model_fields.items() if section_type(f.annotation) is not None]
    assert first_seen == declared


def test_every_optional_setting_in_the_example_is_valid(tmp_path: Path) -> None:
    text = uncomment_everything(EXAMPLE.read_text(encoding="utf-8"))
    names = set(ENV_REF.findall(text))
    assert names, "the example shows secrets as env:NAME references"
    assert not [n for n in names if n.upper().startswith("HUB_")], "HUB_ variables are configuration keys"
    env = {name: "dummy-secret-value" for name in names}
    env["TELEGRAM_TOKEN"] = "123456:ABC-DEF1234ghIkl"
    full = tmp_path / "full.toml"
    full.write_text(text, encoding="utf-8")
    s = load_settings(full, env=env)
    # Every optional block took effect, so each of its keys was validated.
    assert [m.name for m in s.models] == ["gpt"] and s.models[0].api_key is not None
    assert [p.name for p in s.personas] == ["Xiaoyu"]
    assert s.providers.hunyuan and s.providers.music and s.providers.image
    assert s.access.telegram is not None and s.access.telegram.private == "pairing"
    assert s.quotas.video == 5
    assert s.http.public_url == "https://bot.example.com"


# --- hub check-config, as a process ----------------------------------------------------------


def check_config(tmp_path: Path, toml: str | None, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m hub check-config` in tmp_path, with only the given HUB_ variables."""
    args = [sys.executable, "-m", "hub", "check-config"]
    if toml is not None:
        cfg = tmp_path / "hub.toml"
        cfg.write_text(toml, encoding="utf-8")
        args += ["--config", str(cfg)]
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("HUB_")}
    return subprocess.run(args, cwd=tmp_path, env={**clean, **env}, capture_output=True, text=True, timeout=60)


def mistakes(done: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """stderr's `dotted.key: what is wrong` lines as {key: message}; anything else fails."""
    out = {}
    for line in done.stderr.splitlines():
        key, sep, msg = line.partition(": ")
        assert sep and " " not in key and msg, f"not a `dotted.key: what is wrong` line: {line!r}"
        out[key] = msg
    return out


def test_check_config_prints_what_would_run_and_no_secret(tmp_path: Path) -> None:
    secrets = {
        "telegram": "123456:TELEGRAM-SECRET-abcdef",
        "model": "sk-model-secret-123456",
        "video": "sk-video-secret-654321",
        "db": "pg-password-secret",
        "web": "web-token-secret",
    }
    toml = f"""
[http]
host = "0.0.0.0"
port = 8123
[database]
url = "postgresql+asyncpg://hub:{secrets["db"]}@127.0.0.1/hub"
[web]
token = "env:WEB_CHAT_TOKEN"
[telegram]
enabled = true
[[models]]
name = "qwen"
base_url = "https://models.example.com/v1"
api_key = "env:QWEN_KEY"
model = "qwen-max"
[providers.hunyuan]
base_url = "https://tokenhub.tencentmaas.com"
api_key = "env:VIDEO_KEY"
"""
    done = check_config(
        tmp_path,
        toml,
        HUB_TELEGRAM__TOKEN=secrets["telegram"],
        QWEN_KEY=secrets["model"],
        VIDEO_KEY=secrets["video"],
        WEB_CHAT_TOKEN=secrets["web"],
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "0.0.0.0:8123" in out
    assert "channel: web" in out and "channel: telegram" in out
    assert "model: qwen" in out and "qwen-max" in out
    assert "provider: hunyuan" in out
    assert "database: postgresql+asyncpg://hub:***@127.0.0.1/hub" in out
    for secret in secrets.values():
        assert secret not in out + done.stderr
    # The parts of a secret that could identify it are not printed either.
    assert "TELEGRAM-SECRET" not in out


def test_check_config_accepts_the_example(tmp_path: Path) -> None:
    done = check_config(tmp_path, EXAMPLE.read_text(encoding="utf-8"))
    assert done.returncode == 0, done.stderr
    assert "channel: web" in done.stdout and "database: sqlite+aiosqlite:///" in done.stdout
    assert "model: none configured" in done.stdout and "provider: none configured" in done.stdout


def test_unknown_key_is_a_mistake(tmp_path: Path) -> None:
    done = check_config(tmp_path, "[http]\nprot = 9000\n")
    assert done.returncode == 2
    assert mistakes(done) == {"http.prot": "unknown key (did you mean `port`?)"}
    assert done.stdout == ""


def test_enabled_channel_without_credentials_is_a_mistake(tmp_path: Path) -> None:
    done = check_config(tmp_path, "[wechat]\nenabled = true\napp_id = 'wx123'\n")
    assert done.returncode == 2
    found = mistakes(done)
    assert set(found) == {"wechat.app_secret", "wechat.token"}
    assert "required" in found["wechat.token"]


def test_every_channel_of_the_design_is_built(tmp_path: Path) -> None:
    from hub.config import BUILT_CHANNELS
    from hub.settings import CHANNEL_NAMES

    assert set(CHANNEL_NAMES) == BUILT_CHANNELS
    # OneBot needs no secret to be enabled (it then takes loopback connections only).
    done = check_config(tmp_path, "[onebot]\nenabled = true\n")
    assert done.returncode == 0, done.stderr


def test_feishu_is_available_and_checked(tmp_path: Path) -> None:
    done = check_config(tmp_path, "[feishu]\nenabled = true\n")
    assert done.returncode == 2
    assert set(mistakes(done)) == {"feishu.app_id", "feishu.app_secret"}
    # A webhook that checks nothing would take events from anyone.
    done = check_config(tmp_path, "[feishu]\nenabled = true\napp_id = 'cli_a'\napp_secret = 's'\nmode = 'webhook'\n")
    assert done.returncode == 2 and list(mistakes(done)) == ["feishu.encrypt_key"]
    done = check_config(tmp_path, "[feishu]\nenabled = true\napp_id = 'cli_a'\napp_secret = 's'\n")
    assert done.returncode == 0, done.stderr
    assert "channel: feishu (websocket, streaming cards)" in done.stdout


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('[http]\npublic_url = "bot.example.com"\n', "http.public_url"),
        ('[http]\npublic_url = "https://bot.example.com:99999"\n', "http.public_url"),
        ('[telegram]\napi_base = "https://api.telegram.org/bot123"\n', "telegram.api_base"),
        ('[[models]]\nname = "m"\nmodel = "m"\nbase_url = "ftp://models.example.com"\n', "models.0.base_url"),
    ],
)
def test_bad_url_is_a_mistake(tmp_path: Path, toml: str, key: str) -> None:
    done = check_config(tmp_path, toml)
    assert done.returncode == 2
    assert list(mistakes(done)) == [key]


def test_unknown_hub_variable_is_a_mistake(tmp_path: Path) -> None:
    done = check_config(tmp_path, None, HUB_HTTP__PROT="9000", HUB_TELEGRAM_TOKEN="123:abc")
    assert done.returncode == 2
    assert set(mistakes(done)) == {"HUB_HTTP__PROT", "HUB_TELEGRAM_TOKEN"}
    # HUB_CONFIG names the file; it is not a mistake.
    assert check_config(tmp_path, None, HUB_CONFIG=str(EXAMPLE)).returncode == 0


def test_list_from_the_environment_must_be_json(tmp_path: Path) -> None:
    done = check_config(tmp_path, None, HUB_ADMINS="telegram:123")
    assert done.returncode == 2
    assert list(mistakes(done)) == ["HUB_ADMINS"]
    ok = check_config(tmp_path, None, HUB_ADMINS='["telegram:123"]')
    assert ok.returncode == 0 and "admins: telegram:123" in ok.stdout


def test_unset_env_reference_is_a_mistake(tmp_path: Path) -> None:
    toml = '[[models]]\nname = "m"\nbase_url = "https://x.example.com/v1"\nmodel = "m"\napi_key = "env:NO_SUCH_KEY"\n'
    done = check_config(tmp_path, toml)
    assert done.returncode == 2
    assert mistakes(done) == {"models.0.api_key": "environment variable NO_SUCH_KEY is not set"}
    assert check_config(tmp_path, toml, NO_SUCH_KEY="sk-1").returncode == 0


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    toml = '[http]\nhost = "127.0.0.1"\nport = 9000\n'
    assert "listening on 127.0.0.1:9000" in check_config(tmp_path, toml).stdout
    done = check_config(tmp_path, toml, HUB_HTTP__PORT="7000")
    assert done.returncode == 0, done.stderr
    assert "listening on 127.0.0.1:7000" in done.stdout
    assert "9000" not in done.stdout


def test_a_bad_value_from_the_environment_names_its_variable(tmp_path: Path) -> None:
    done = check_config(tmp_path, None, HUB_HTTP__PORT="eighty")
    assert done.returncode == 2
    found = mistakes(done)
    assert list(found) == ["http.port"] and "HUB_HTTP__PORT" in found["http.port"]


def test_every_mistake_is_named_at_once(tmp_path: Path) -> None:
    toml = """
[http]
public_url = "not a url"
colour = "blue"
[telegram]
enabled = true
token = "not-a-token-secret"
[wecom]
enabled = true
"""
    done = check_config(tmp_path, toml, HUB_NOPE="1")
    assert done.returncode == 2
    found = mistakes(done)
    assert set(found) == {
        "http.public_url",
        "http.colour",
        "telegram.token",
        "wecom.corp_id",
        "wecom.agent_id",
        "wecom.secret",
        "wecom.token",
        "wecom.encoding_aes_key",
        "HUB_NOPE",
    }
    assert "not-a-token-secret" not in done.stderr


def test_an_env_reference_may_name_a_hub_prefixed_variable(tmp_path: Path) -> None:
    cfg = tmp_path / "hub.toml"
    cfg.write_text('[web]\ntoken = "env:HUB_WEB_SECRET"\n', encoding="utf-8")
    settings = load_settings(cfg, env={"HUB_WEB_SECRET": "s3cret"})
    assert settings.web.token is not None and settings.web.token.get_secret_value() == "s3cret"


def test_check_config_names_every_mistake_in_one_round(tmp_path: Path) -> None:
    # A [[models]] entry missing its required keys used to hide every check that needs whole
    # settings (web.token here) until it was fixed.
    done = check_config(tmp_path, '[http]\nhost = "0.0.0.0"\n[[models]]\nname = "x"\n')
    assert done.returncode == 2
    found = mistakes(done)
    assert {"models.0.base_url", "models.0.model", "web.token"} <= set(found), found


def test_check_config_suggests_the_nearest_key(tmp_path: Path) -> None:
    done = check_config(tmp_path, 'log_levle = "debug"\n[telegram]\nenabld = true\n', HUB_HTTP__PROT="9000")
    assert done.returncode == 2
    found = mistakes(done)
    assert found["log_levle"] == "unknown key (did you mean `log_level`?)"
    assert found["telegram.enabld"] == "unknown key (did you mean `enabled`?)"
    assert found["HUB_HTTP__PROT"] == "no such configuration key (did you mean HUB_HTTP__PORT?)"
    # Far from any key: no guess.
    assert check_config(tmp_path, "zzzqqq = 1\n").stderr.strip() == "zzzqqq: unknown key"


def test_check_config_warns_of_open_metrics_and_an_unsigned_feishu_webhook(tmp_path: Path) -> None:
    toml = (
        '[http]\npublic_url = "https://bot.example.com"\n[web]\nenabled = false\n'
        '[feishu]\nenabled = true\napp_id = "cli_x"\napp_secret = "s"\nmode = "webhook"\nverification_token = "v"\n'
    )
    done = check_config(tmp_path, toml)
    assert done.returncode == 0, done.stderr
    assert "warning: http.metrics_token: not set" in done.stderr
    assert "warning: feishu.encrypt_key: not set" in done.stderr
