"""One exception type whose message is a complete, readable sentence.

The CLI prints ``str(err)`` on one line and shows the traceback only with ``-v``, so every
message must say what is wrong, where (file, row, key) and what to do about it.
"""


class LungrayError(Exception):
    """A user-facing error: bad input, bad config, or an impossible request."""


class ConfigError(LungrayError, ValueError):
    """A config that can never run; raised at config time, before any data or GPU work."""


class DataError(LungrayError):
    """A dataset problem (missing file, unknown label, pool too small...)."""
