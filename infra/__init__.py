"""What every domain stands on: the loop and pool, the process runtime, outbox and inbox,
migrations and roles, the breaker, the registry, dead letters, and the error tree.

Never imports Flask or Celery; the HTTP edge (app/) and the task edge (workers/) do.
"""
