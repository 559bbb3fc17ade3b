"""The benchmark harness of issue 6: ``python -m bench`` (``make bench``).

Starts the system (or measures one already running at ``BENCH_URL``), runs the
read, placement and pipeline scenarios plus the in-run baselines (pgbench,
hello-world gunicorn, bare Celery chain), checks correctness at the end and writes
``bench/results/<timestamp>.json`` and ``.md``. See ``python -m bench --help``.
"""
