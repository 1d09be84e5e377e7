"""Logging filters for the server's terminal."""

from __future__ import annotations

import logging


class OneLineClientErrors(logging.Filter):
    """A 4xx response (an ordinary 403, a bad request) is the client's business: one line with the reason,
    not the traceback Django attaches to it. 5xx records keep theirs."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "status_code", 500) < 500 and record.exc_info:
            error = record.exc_info[1]
            message = record.getMessage()
            record.msg = f"{message} ({error})" if error is not None and str(error) else message
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True
