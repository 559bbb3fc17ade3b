"""flask-smorest's Blueprint with a JSON parser that never lets bad input become a 500."""
from __future__ import annotations

import flask_smorest
from webargs.flaskparser import FlaskParser


class Parser(FlaskParser):
    def _raw_load_json(self, req):
        try:
            return super()._raw_load_json(req)
        except (ValueError, RecursionError) as exc:
            # webargs handles JSONDecodeError only; json.loads also raises a plain
            # ValueError (an integer over 4300 digits) and RecursionError (deep nesting).
            self._handle_invalid_json_error(exc, req)


class Blueprint(flask_smorest.Blueprint):
    ARGUMENTS_PARSER = Parser()
