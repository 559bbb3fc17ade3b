"""The SMTP sink of the bench and the chaos run: accepts every mail, keeps one line per mail.

``python -m aiosmtpd -n -l 127.0.0.1:PORT -c bench.mailsink.CountingSink FILE`` (bench.stack
starts it so): appends ``{"message_id", "to", "subject"}`` as a JSON line to FILE per mail;
the bench counts the lines, the chaos run tells a mail sent twice from one sent once.
"""
from __future__ import annotations

import json
from email.parser import BytesHeaderParser
from pathlib import Path


class CountingSink:
    def __init__(self, path: str):
        self.path = Path(path)
        self.path.touch()

    @classmethod
    def from_cli(cls, parser, *args):
        if len(args) != 1:
            parser.error("CountingSink takes one argument: the file to append to")
        return cls(args[0])

    async def handle_DATA(self, server, session, envelope):
        headers = BytesHeaderParser().parsebytes(envelope.original_content)
        fields = {"message_id": "Message-ID", "to": "To", "subject": "Subject"}
        line = json.dumps({key: str(headers[name]).strip() for key, name in fields.items()})
        with open(self.path, "a") as fh:  # a line at a time: whole, whoever reads or stops the sink
            fh.write(line + "\n")
        return "250 OK"


def received(path: Path) -> list[dict]:
    """The mails the sink recorded, in order."""
    try:
        return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    except OSError:
        return []
