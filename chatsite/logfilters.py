"""Logging filters."""

from __future__ import annotations

import logging


class ExceptionSummary(logging.Filter):
    """Turn a logged traceback into one line naming the exception.

    channels-redis's pub/sub reader logs every failed poll with a full traceback
    while Redis is down; the outage is already reported once by
    rooms.realtime.LayerHealth, so a line per poll is enough here.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            record.msg = f"{record.getMessage()}: {type(exc).__name__}"
            record.args = None
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True
