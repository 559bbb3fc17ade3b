"""Baseline (b): a hello-world Flask app, the HTTP ceiling of this machine under our gunicorn settings."""
from flask import Flask

app = Flask(__name__)


@app.get("/")
def hello():
    return "Hello, World!"
