"""Gunicorn settings for the hello-world baseline: config/gunicorn.conf.py's values, none of its hooks.

The hooks build our database bridge and registry, which a hello-world app does
not have; every plain setting (bind, workers, worker class, threads, timeouts,
keep-alive, logging) is taken from the real file so the two stay the same.
"""
import os
import runpy

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_base = runpy.run_path(os.path.join(_ROOT, "config", "gunicorn.conf.py"))
for _name, _value in _base.items():
    if not _name.startswith("_") and not callable(_value) and not hasattr(_value, "__file__"):
        globals()[_name] = _value
proc_name = "oms-bench-hello"
