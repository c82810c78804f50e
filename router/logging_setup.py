"""Logging set-up for the command line: our loggers at the chosen level, noisy libraries quieter."""

from __future__ import annotations

import logging

_QUIET_LIBRARIES = ("faiss", "sentence_transformers", "transformers", "httpx", "httpcore", "filelock")


def configure_logging(level: int) -> None:
    """Log to stderr at ``level``; third-party libraries log warnings and errors only."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in _QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
    try:
        from transformers.utils import logging as transformers_logging
    except ImportError:
        return
    # transformers shows a "Loading weights" bar on every model load; it is noise in server logs.
    transformers_logging.disable_progress_bar()
