"""Domain logic per domain. Never imports Flask or Celery."""
