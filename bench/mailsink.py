"""SMTP sinks for the bench (counts what it receives) and the chaos run (records each mail).

``python -m aiosmtpd -n -l 127.0.0.1:PORT -c bench.mailsink.CountingSink COUNT_FILE``:
accepts every message, keeps none, and writes the running count to COUNT_FILE so
the bench can compare mails received with notifications marked sent.
"""
from __future__ import annotations

import os
from pathlib import Path


class CountingSink:
    def __init__(self, count_file: str):
        self.path = Path(count_file)
        self.count = 0
        self._write()

    @classmethod
    def from_cli(cls, parser, *args):
        if len(args) != 1:
            parser.error("CountingSink takes one argument: the file to write the count to")
        return cls(args[0])

    def _write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(str(self.count))
        os.replace(tmp, self.path)

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        self._write()
        return "250 OK"


def received(count_file: Path) -> int | None:
    try:
        return int(Path(count_file).read_text().strip() or 0)
    except (OSError, ValueError):
        return None


class RecordingSink:
    """Appends one JSON line per mail (Message-ID, To, Subject) to a file; the chaos run
    reads it to tell a mail sent twice from one sent once."""

    def __init__(self, path: str):
        self.path = Path(path)

    @classmethod
    def from_cli(cls, parser, *args):
        if len(args) != 1:
            parser.error("RecordingSink takes one argument: the file to append to")
        return cls(args[0])

    async def handle_DATA(self, server, session, envelope):
        import json
        from email import message_from_bytes, policy

        message = message_from_bytes(envelope.original_content, policy=policy.default)
        line = json.dumps({"message_id": str(message["Message-ID"]), "to": str(message["To"]),
                           "subject": str(message["Subject"])})
        with open(self.path, "a") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        return "250 OK"
