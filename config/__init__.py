"""Process configuration: settings from the environment, logging, Celery and gunicorn config."""
