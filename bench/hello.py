"""Baseline (b): a hello-world Flask app, the HTTP ceiling of this machine under our gunicorn settings.

``gunicorn -c python:bench.hello bench.hello:app`` (``baselines.hello_command`` rewrites the
Procfile's gateway line so): this module is its configuration too, config/gunicorn.conf.py's
plain settings without its hooks, which build the database bridge and registry it has not.
"""
import os
import runpy

from flask import Flask

_CONF = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "config", "gunicorn.conf.py")
for _name, _value in runpy.run_path(_CONF).items():
    if not _name.startswith("_") and not callable(_value) and not hasattr(_value, "__file__"):
        globals()[_name] = _value
bind = [public_bind]  # noqa: F821 (from the configuration): one listener, not the gateway's console one
proc_name = "oms-bench-hello"
app = Flask(__name__)


@app.get("/")
def hello():
    return "Hello, World!"
