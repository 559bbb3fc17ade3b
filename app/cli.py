"""``python -m app <command>``: migrate, create-admin, run (the whole system for development).

``migrate`` connects as the owner DATABASE_URL names; the other commands, which serve
several domains, as the worker role (infra/roles.py).
"""
from __future__ import annotations

import argparse
import logging
import sys

logger = logging.getLogger("app.cli")


def _setup(name: str, *, connect: bool = True):
    """The one set-up of a CLI process (``infra.runtime.boot``), as the worker role."""
    from config.settings import settings_or_exit
    from infra import runtime

    settings = settings_or_exit()
    runtime.boot(name, settings=settings, connect=connect)
    return settings


def cmd_migrate(args) -> int:
    from infra import migrations

    settings = _setup("migrate", connect=False)
    # As the owner DATABASE_URL names; every other command logs in as the worker role.
    applied = migrations.migrate(settings)
    for schema, files in applied.items():
        logger.info("migrated", extra={"schema": schema, "applied": files})
    logger.info("database roles ready", extra={"role_prefix": settings.role_prefix})
    return 0


def cmd_create_admin(args) -> int:
    from infra import runtime
    from infra.errors import DomainError
    from services.users import service

    settings = _setup("create-admin")
    args.password = args.password or (str(settings.admin_password) if settings.admin_password else "")
    if len(args.password) < 8:
        logger.error("the admin password must be at least 8 characters")
        return 2
    try:
        user = service.create_admin(email=args.email, password=args.password)
    except DomainError as exc:
        logger.error("could not create the admin: %s", exc.detail)
        return 1
    finally:
        runtime.shutdown()
    # The id, never the email: logs carry no personal data.
    logger.info("admin ready", extra={"user_id": str(user["id"])})
    return 0


def cmd_dead_letters(args) -> int:
    import json
    import uuid

    from infra import dead_letters, runtime

    _setup("dead-letters")
    rt = runtime.get()
    db = rt.db.manager(dead_letters.SCHEMA)
    try:
        if args.action == "list":
            for row in rt.db.run(dead_letters.list_open, db, limit=args.limit):
                # The listing is this command's output, for people and scripts alike.
                sys.stdout.write(json.dumps({**row, "id": str(row["id"])}, default=str) + "\n")
            return 0
        if not args.all and not args.id:
            logger.error("name a dead letter id, or pass --all")
            return 2
        try:
            ids = None if args.all else [uuid.UUID(args.id)]
        except ValueError:
            logger.error("not a dead letter id: %s", args.id)
            return 2
        from workers.celery_app import app as celery

        def send(task_name, task_args, task_kwargs, queue):
            celery.send_task(task_name, args=task_args, kwargs=task_kwargs, queue=queue or None)

        done = rt.db.run(dead_letters.redrive, db, ids=ids, send=send, timeout=120)
        logger.info("redriven", extra={"count": len(done), "ids": [str(i) for i in done]})
        return 0 if done or args.all else 1
    finally:
        runtime.shutdown()


def cmd_seed(args) -> int:
    from infra import runtime
    from services.inventory import demo

    _setup("seed")
    try:
        created = demo.seed_catalog()
    finally:
        runtime.shutdown()
    logger.info("demo catalog ready", extra={"products_created": created})
    return 0


def cmd_announce_catalog(args) -> int:
    """Fill orders' read model of the catalog from inventory: every product is announced
    again (inventory.product_changed); the outbox sweep publishes the events and the
    workers apply them like any change."""
    from infra import runtime
    from services.inventory import service as inventory
    from services.orders import service as orders

    _setup("announce-catalog")
    try:
        if not args.all and not orders.catalog_is_empty():
            logger.info("orders' read model of the catalog is not empty; --all announces every product anyway")
            return 0
        announced = inventory.announce_catalog()
    finally:
        runtime.shutdown()
    logger.info("catalog announced", extra={"products": announced})
    return 0


def cmd_run(args) -> int:
    from devtools import supervisor

    return supervisor.main(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="create the schemas and apply pending migrations")
    admin = sub.add_parser("create-admin", help="create an admin (or promote that email to admin)")
    admin.add_argument("--email", required=True)
    admin.add_argument("--password", help="default: ADMIN_PASSWORD from the environment")
    sub.add_parser("run", help="start the whole system (embedded servers when no URLs are set)")
    sub.add_parser("seed", help="add the demo catalog (about 20 products) if it is not there")
    announce = sub.add_parser("announce-catalog",
                              help="fill orders' read model of the catalog from inventory (when it is empty)")
    announce.add_argument("--all", action="store_true", help="announce every product even if it is not empty")
    dead = sub.add_parser("dead-letters", help="show or redrive messages whose tasks gave up")
    dead.add_argument("action", choices=["list", "retry"])
    dead.add_argument("id", nargs="?")
    dead.add_argument("--all", action="store_true", help="with retry: redrive every open dead letter")
    dead.add_argument("--limit", type=int, default=100)
    args = parser.parse_args(argv)
    handlers = {"migrate": cmd_migrate, "create-admin": cmd_create_admin, "run": cmd_run,
                "seed": cmd_seed, "dead-letters": cmd_dead_letters,
                "announce-catalog": cmd_announce_catalog}
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
