"""The benchmark harness (``python -m bench``, ``make bench``; see bench/README.md and bench.runner)
and the chaos run (``python -m bench.chaos``, ``make chaos``)."""
