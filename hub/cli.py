"""`hub run`, `hub check-config`, `hub migrate`, `hub admin add|remove` (and `python -m hub`)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence

from hub.config_load import WEB_ADMIN_HINT, describe, load_settings
from hub.errors import ConfigError
from hub.settings import Settings

log = logging.getLogger("hub.cli")


def _load(path: str | None) -> Settings | None:
    try:
        return load_settings(path)
    except ConfigError as exc:
        for key, msg in exc.problems:
            print(f"{key}: {msg}", file=sys.stderr)
        return None


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = _load(args.config)
    if settings is None:
        return 2
    for line in describe(settings):
        print(line)
    print("configuration is valid")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    settings = _load(args.config)
    if settings is None:
        return 2
    from hub.logs import setup_logging

    setup_logging(settings.log_level)
    try:
        return asyncio.run(serve(settings))
    except KeyboardInterrupt:
        return 0


async def serve(settings: Settings) -> int:
    from aiohttp import web

    from hub.app import build_app

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    app = build_app(settings)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=3.0, access_log=None)
    try:
        await runner.setup()
        site = web.TCPSite(runner, settings.http.host, settings.http.port, reuse_address=True)
        await site.start()
    except Exception as exc:
        log.exception("event=start_failed")
        print(f"hub: could not start: {exc}", file=sys.stderr)
        with contextlib.suppress(Exception):
            await runner.cleanup()
        return 1
    port = settings.http.port
    server = getattr(site, "_server", None)
    if server is not None and server.sockets:
        port = server.sockets[0].getsockname()[1]
    host = settings.http.host
    shown = f"[{host}]" if ":" in host else host
    print(f"Hub listening on http://{shown}:{port}/", flush=True)
    await stop.wait()
    log.info("event=stopping")
    try:
        await asyncio.wait_for(runner.cleanup(), timeout=9.0)
    except TimeoutError:
        log.error("event=stop_timeout")
        return 1
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = _load(args.config)
    if settings is None:
        return 2

    async def run() -> bool:
        from hub.storage.db import Database
        from hub.storage.migrate import migrate

        db = Database(settings.database_url)
        try:
            return await migrate(db)
        finally:
            await db.close()

    try:
        applied = asyncio.run(run())
    except Exception as exc:
        print(f"hub: migration failed: {exc}", file=sys.stderr)
        return 1
    print("schema migrated" if applied else "schema already current")
    return 0


def cmd_admin(args: argparse.Namespace) -> int:
    settings = _load(args.config)
    if settings is None:
        return 2
    user: str = args.user
    if ":" not in user or user.startswith(":") or user.endswith(":"):
        print(f"user: {user!r}: expected <channel>:<user_id>, e.g. telegram:12345", file=sys.stderr)
        return 2
    if args.action == "add" and user.startswith("web:"):
        print(f"user: {user!r}: the web page chooses its own session id; {WEB_ADMIN_HINT}", file=sys.stderr)
        return 2

    async def run() -> None:
        from hub.storage.chats import AuditRepo, UserRepo
        from hub.storage.db import Database
        from hub.storage.migrate import migrate

        db = Database(settings.database_url)
        try:
            await migrate(db)
            if args.action == "add":
                # Making someone an admin also lifts a ban: the owner is never locked out.
                await UserRepo(db).set(user, is_admin=True, banned=False)
            else:
                await UserRepo(db).set(user, is_admin=False)
            await AuditRepo(db).record("cli", f"admin {args.action}", "ok", detail=user)
        finally:
            await db.close()

    asyncio.run(run())
    if args.action == "remove" and user in settings.admins:
        print(f"{user} is still an admin through `admins` in the configuration", file=sys.stderr)
    print(f"{user} {'is now an admin' if args.action == 'add' else 'is no longer an admin'}")
    return 0


def cmd_telegram(args: argparse.Namespace) -> int:
    settings = _load(args.config)
    if settings is None:
        return 2
    base: str | None = None
    if args.action == "set-webhook":
        base = args.url or settings.http.public_url
        if not base:
            print("http.public_url: not set; give the address with --url https://...", file=sys.stderr)
            return 2
        if not base.startswith(("https://", "http://")):
            print(f"--url: not an http(s) URL: {base!r}", file=sys.stderr)
            return 2
    if settings.telegram.token is None:
        print("telegram.token: required", file=sys.stderr)
        return 2
    from hub.channels import telegram
    from hub.errors import SendError

    try:
        if base is not None:
            url = asyncio.run(telegram.set_webhook(settings.telegram, base))
            print(f"webhook set: {url}")
        else:
            asyncio.run(telegram.delete_webhook(settings.telegram))
            print("webhook deleted")
    except ConfigError as exc:
        for key, msg in exc.problems:
            print(f"{key}: {msg}", file=sys.stderr)
        return 2
    except SendError as exc:
        print(f"hub: Telegram refused: {exc}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hub", description="A self-hosted messaging-bot hub.")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", help="TOML file (default: $HUB_CONFIG, else config/hub.toml if it exists)")
        return p

    with_config(sub.add_parser("run", help="start the hub")).set_defaults(func=cmd_run)
    with_config(sub.add_parser("check-config", help="validate the configuration")).set_defaults(func=cmd_check_config)
    with_config(sub.add_parser("migrate", help="apply database migrations")).set_defaults(func=cmd_migrate)
    admin = with_config(sub.add_parser("admin", help="add or remove an admin"))
    admin.add_argument("action", choices=["add", "remove"])
    admin.add_argument("user", help="<channel>:<user_id>, e.g. telegram:12345")
    admin.set_defaults(func=cmd_admin)
    telegram = sub.add_parser("telegram", help="register or remove the Telegram webhook")
    tg_sub = telegram.add_subparsers(dest="action", required=True)
    set_hook = with_config(tg_sub.add_parser("set-webhook", help="register <BASE>/webhooks/telegram with Telegram"))
    set_hook.add_argument("--url", metavar="BASE", help="the hub's public address (default: [http] public_url)")
    with_config(tg_sub.add_parser("delete-webhook", help="remove the webhook (long polling works again)"))
    telegram.set_defaults(func=cmd_telegram)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
