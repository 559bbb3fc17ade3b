"""What every HTTP process refuses before any rule (auth, limits, routing) sees the request.

A path has one spelling: the raw request target (gunicorn's ``RAW_URI``; Werkzeug
has already decoded ``PATH_INFO``) may not hold dot segments, encoded dots, slashes
or backslashes, empty segments, invalid percent-encoding, or bytes that decode to
anything but UTF-8 text without control characters. What is left decodes to exactly
one path, which is the one every rule and the gateway's forwarding use. A body
declared larger than the limit is refused before anything reads it.
"""
from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes, urlsplit

from flask import Flask, Response, request
from werkzeug.exceptions import RequestEntityTooLarge

from app.errors import problem

_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_ENCODED_SEPARATOR = re.compile(r"%(2[Ee]|2[Ff]|5[Cc])")
# Raw target characters RFC 3986 allows in a path (percent signs checked above).
_PATH_CHARACTERS = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*")


def _raw_path(environ: dict) -> str:
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if raw is None:  # a server that keeps no raw target: judge the decoded path
        return environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    path = raw.split("?", 1)[0].split("#", 1)[0]
    if not path.startswith("/") and "://" in path:  # absolute-form: http://host/path
        path = urlsplit(path).path or "/"
    return path


def path_refusal(environ: dict) -> str | None:
    """Why this request's path is not in its one canonical spelling, or None if it is."""
    path = _raw_path(environ)
    if not path.startswith("/"):
        return "the path must start with /"
    if "\\" in path or _ENCODED_SEPARATOR.search(path):
        return "the path must not hold encoded dots, slashes or backslashes"
    if _PERCENT.search(path):
        return "the path holds invalid percent-encoding"
    if not _PATH_CHARACTERS.fullmatch(path):
        return "the path holds characters that must be percent-encoded"
    segments = path.split("/")[1:]
    if any(segment in (".", "..") for segment in segments):
        return "the path must not hold . or .. segments"
    if "" in segments[:-1]:  # a trailing slash is a spelling of its own, an empty segment is not
        return "the path must not hold empty segments (//)"
    try:
        decoded = unquote_to_bytes(path).decode("utf-8")
    except UnicodeDecodeError:
        return "the path is not percent-encoded UTF-8"
    if any(ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F for ch in decoded):
        return "the path must not hold control characters"
    return None


def _refuse_before_rules() -> Response | None:
    reason = path_refusal(request.environ)
    if reason is not None:
        return problem(400, reason, title="Bad Request", type_="/problems/invalid-path")
    limit = request.max_content_length
    if limit is not None and (request.content_length or 0) > limit:
        raise RequestEntityTooLarge()
    return None


def init_app(app: Flask) -> None:
    """Call before anything else registers a before_request hook that applies a rule."""
    app.before_request(_refuse_before_rules)
