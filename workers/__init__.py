"""Celery side: the app, the per-process bootstrap, task modules per domain, beat schedule."""
