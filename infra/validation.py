"""Marshmallow pieces every domain's schemas share.

Text from clients is valid Unicode (no lone surrogates, which JSON's ``\\ud800`` escape
can carry and which PostgreSQL, hashing and mail cannot encode) without control
characters. ``Text`` may span lines (tab, LF and CR allowed); ``Line`` is one line,
so it also refuses tabs and every character that breaks a line. ``Pattern`` matches
the whole value, not a prefix.
"""
from __future__ import annotations

from marshmallow import Schema, ValidationError, fields, validate

# Line breaks besides CR and LF: what str.splitlines() splits on (VT, FF, FS, GS, RS,
# NEL, LINE SEPARATOR, PARAGRAPH SEPARATOR), and tab, which belongs to multi-line text.
_LINE_BREAKS = frozenset("\t\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")


def _is_control(ch: str) -> bool:
    code = ord(ch)
    return code < 0x20 or 0x7F <= code <= 0x9F  # C0, DEL and C1 (Unicode category Cc)


def _is_surrogate(ch: str) -> bool:
    return 0xD800 <= ord(ch) <= 0xDFFF


class Text(fields.String):
    """Multi-line text: valid Unicode, no control characters but tab, LF and CR."""

    #: What it takes, as a JSON Schema pattern for the OpenAPI documents. Lone surrogates
    #: are refused too, but no pattern can say so: ECMA regexes without the ``u`` flag see
    #: UTF-16 code units, where every character outside the BMP is a surrogate pair.
    json_pattern: str | None = r"^[^\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f]*$"
    default_error_messages = {
        "invalid_unicode": "Must be valid Unicode text.",
        "control": "Must not contain control characters.",
    }
    allowed_controls: frozenset[str] = frozenset("\t\n\r")

    def _deserialize(self, value, attr, data, **kwargs):
        text = super()._deserialize(value, attr, data, **kwargs)
        if any(_is_surrogate(ch) for ch in text):
            raise self.make_error("invalid_unicode")
        if any(_is_control(ch) and ch not in self.allowed_controls for ch in text):
            raise self.make_error("control")
        return text


class Line(Text):
    """One line of text: like ``Text``, and no tab or line break of any kind."""

    default_error_messages = {"line_break": "Must be a single line (no line breaks or tabs)."}
    allowed_controls = frozenset()
    json_pattern = r"^[^\u0000-\u001f\u007f-\u009f\u2028\u2029]*$"

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, str) and any(ch in _LINE_BREAKS for ch in value):
            raise self.make_error("line_break")
        return super()._deserialize(value, attr, data, **kwargs)


class Pattern(validate.Regexp):
    """``validate.Regexp`` that matches the whole value (its ``match`` lets ``$`` end before a newline).

    The expression is kept anchored, ``^(?:...)$``, because that is what the OpenAPI
    documents show: a JSON Schema ``pattern`` matches anywhere in the value unless anchored.
    """

    def __init__(self, regex: str, *args, **kwargs):
        super().__init__(f"^(?:{regex})$", *args, **kwargs)

    def __call__(self, value: str) -> str:
        if self.regex.fullmatch(value) is None:
            raise ValidationError(self._format_error(value))
        return value


class Email(Line):
    """An email address: one line that marshmallow's address validator accepts, at most 254 characters."""

    json_pattern = None  # documented as format: email, which says more (and leaves out control characters)

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("validate", [validate.Email(), validate.Length(max=254)])
        super().__init__(*args, **kwargs)


class Bool(fields.Boolean):
    """JSON ``true`` or ``false`` and nothing else, as the document says (marshmallow's Boolean
    also takes 1, 0, "yes", "off"...): the boolean twin of ``Integer(strict=True)``."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, bool):
            raise self.make_error("invalid", input=value)
        return value


class PageQuerySchema(Schema):
    """``?limit=`` (1..100, default 20) and ``?cursor=`` of every list endpoint."""

    limit = fields.Integer(load_default=20, validate=validate.Range(min=1, max=100))
    # Opaque, but always what infra/pagination.py writes: unpadded base64url of about 92 characters.
    cursor = Line(load_default=None, validate=[validate.Length(max=200), Pattern(r"[A-Za-z0-9_-]*={0,2}", error="Not a valid cursor.")])
