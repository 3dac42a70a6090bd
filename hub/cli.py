"""`hub run`, `hub check-config`, `hub send`, `hub migrate`, `hub admin add|remove` (and `python -m hub`)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

# Each command imports what it needs: `hub run` tunes the collector before its imports (cmd_run).
if TYPE_CHECKING:
    from hub.settings import Settings

GC_THRESHOLDS = gc.get_threshold()
# Allocations between two young collections once the hub runs (the default is 700): each event
# allocates thousands, so the default collected every few events; this is a few events' worth,
# a couple of milliseconds a collection at most.
GC_YOUNG_THRESHOLD = 5_000


def _load(path: str | None) -> Settings | None:
    from hub.config import load_settings
    from hub.errors import ConfigError
    from hub.redact import safe_text

    try:
        return load_settings(path)
    except ConfigError as exc:
        for key, msg in exc.problems:
            # A mistake may quote the value: a URL is shown without its password or query.
            print(safe_text(f"{key}: {msg}"), file=sys.stderr)
        return None


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = _load(args.config)
    if settings is None:
        return 2
    from hub.config_report import config_warnings, describe

    for key, msg in config_warnings(settings):
        print(f"warning: {key}: {msg}", file=sys.stderr)
    for line in describe(settings):
        print(line)
    print("configuration is valid")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    # Start-up builds what lives as long as the process: a full collection during it walks all
    # of that for nothing (~0.05 s of a start). The young generations still collect what it
    # drops; full collections come back once the hub is ready (`_started`).
    gc.set_threshold(*GC_THRESHOLDS[:2], 1 << 30)
    settings = _load(args.config)
    if settings is None:
        return 2
    from hub.logs import setup_logging
    from hub.serving import run, serve

    workers: int = args.workers
    if workers < 1:
        print("workers: must be at least 1", file=sys.stderr)
        return 2
    if workers > 1:
        from hub.workers import sqlite_refusal, supervise

        refusal = sqlite_refusal(settings, workers)
        if refusal is not None:
            print(refusal, file=sys.stderr)
            return 2
        setup_logging(settings.log_level)
        gc.set_threshold(*GC_THRESHOLDS)  # the supervisor starts no hub itself
        argv = ["--config", args.config] if args.config else []
        return run(supervise(settings, workers, argv))
    setup_logging(settings.log_level)
    try:
        if args.listen_fd is not None:
            import socket

            return run(serve(settings, inherited=socket.socket(fileno=args.listen_fd), started=_started))
        return run(serve(settings, started=_started))
    except KeyboardInterrupt:
        return 0


def _started() -> None:
    """The hub is ready: what start-up built stays out of the collector's sight (gc.freeze), so
    its later full passes are short and the exit does not walk it all again (up to ~1 s on a
    busy machine)."""
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *GC_THRESHOLDS[1:])


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
        from hub.config import WEB_ADMIN_HINT

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
    from hub.errors import ConfigError, SendError

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


def cmd_send(args: argparse.Namespace) -> int:
    settings = _load(args.config)
    if settings is None:
        return 2
    if not args.text and not args.media:
        print("hub send: give --text, --media or both", file=sys.stderr)
        return 2
    from hub.send import run

    return run(settings, args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hub", description="A self-hosted messaging-bot hub.")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", help="TOML file (default: $HUB_CONFIG, else config/hub.toml if it exists)")
        return p

    run = with_config(sub.add_parser("run", help="start the hub"))
    run.add_argument("--workers", type=int, default=1, help="worker processes sharing one socket (>1 needs PostgreSQL)")
    # A worker of `--workers N` inherits the parent's listening socket.
    run.add_argument("--listen-fd", type=int, default=None, help=argparse.SUPPRESS)
    run.set_defaults(func=cmd_run)
    with_config(sub.add_parser("check-config", help="validate the configuration")).set_defaults(func=cmd_check_config)
    with_config(sub.add_parser("migrate", help="apply database migrations")).set_defaults(func=cmd_migrate)
    admin = with_config(sub.add_parser("admin", help="add or remove an admin"))
    admin.add_argument("action", choices=["add", "remove"])
    admin.add_argument("user", help="<channel>:<user_id>, e.g. telegram:12345")
    admin.set_defaults(func=cmd_admin)
    send = with_config(sub.add_parser("send", help="send a message through the running hub's delivery API"))
    send.add_argument("--url", help="the hub's address (default: from [http] host and port)")
    send.add_argument("--to", required=True, metavar="CHATREF", help="e.g. telegram:group:-100123")
    send.add_argument("--text", help="the message text")
    send.add_argument("--media", nargs="+", metavar="PATH_OR_URL", help="files to upload or http(s) URLs")
    send.add_argument("--key", help="an Idempotency-Key: sending again with it sends nothing twice")
    send.add_argument("--wait", action="store_true", help="wait for the outcome: exit 0 sent, 1 failed, 3 waiting")
    send.add_argument("--timeout", type=float, default=60.0, help="with --wait: seconds before exit 4 (still queued)")
    send.set_defaults(func=cmd_send)
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
