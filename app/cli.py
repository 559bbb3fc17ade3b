"""``python -m app <command>``: migrate, create-admin, run (the whole system for development)."""
from __future__ import annotations

import argparse
import logging
import sys

logger = logging.getLogger("app.cli")


def _setup(name: str):
    from config import logging as logging_config
    from config.settings import settings_or_exit

    settings = settings_or_exit()
    logging_config.configure(service=name, level=settings.log_level, fmt=settings.log_format)
    return settings


def cmd_migrate(args) -> int:
    from services import migrations, runtime

    settings = _setup("migrate")
    import anyio

    anyio.run(migrations.ensure_database, settings.database_url)
    rt = runtime.start(settings, name="migrate")
    try:
        applied = rt.db.run(migrations.apply_all, rt.db, timeout=300)
    finally:
        runtime.stop()
    for schema, files in applied.items():
        logger.info("migrated", extra={"schema": schema, "applied": files})
    return 0


def cmd_create_admin(args) -> int:
    from services import runtime
    from services.errors import DomainError
    from services.users import service

    settings = _setup("create-admin")
    if len(args.password) < 8:
        logger.error("the admin password must be at least 8 characters")
        return 2
    runtime.start(settings, name="create-admin")
    try:
        user = service.create_admin(email=args.email, password=args.password)
    except DomainError as exc:
        logger.error("could not create the admin: %s", exc.detail)
        return 1
    finally:
        runtime.stop()
    logger.info("admin ready", extra={"user_id": str(user["id"]), "email": user["email"]})
    return 0


def cmd_run(args) -> int:
    from app import devrun

    return devrun.main(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="create the schemas and apply pending migrations")
    admin = sub.add_parser("create-admin", help="create an admin (or promote that email to admin)")
    admin.add_argument("--email", required=True)
    admin.add_argument("--password", required=True)
    sub.add_parser("run", help="start the whole system (embedded servers when no URLs are set)")
    args = parser.parse_args(argv)
    handlers = {"migrate": cmd_migrate, "create-admin": cmd_create_admin, "run": cmd_run}
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
