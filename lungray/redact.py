"""Credentials never leave the process: one redaction applied wherever lungray writes or prints.

``--tracking-uri http://user:secret@host`` is how MLflow's own docs pass basic-auth
credentials, and MLflow echoes the URI in its exceptions ("API request to
http://user:secret@host/api/2.0/... failed"). lungray keeps the real value in memory (the
clients need it) and passes every line it prints and every file, param, tag and artifact it
writes through :func:`redact` (issue 15, item 1). What is masked:

* the password of ``scheme://user:password@host`` (``user:***@``) and a bare token used as
  the user part (``https://ghp_abc@host`` -> ``https://***@host``);
* query parameters that carry secrets (``?token=``, ``access_token``, ``password``,
  ``X-Amz-Signature``, ``sig`` (Azure SAS) ...);
* AWS access key ids (``AKIA...``/``ASIA...``);
* the literal value of any environment variable whose name says it is a secret
  (``MLFLOW_TRACKING_PASSWORD``, ``MLFLOW_TRACKING_TOKEN``, ``AWS_SECRET_ACCESS_KEY``,
  ``AWS_SESSION_TOKEN``, ``DATABRICKS_TOKEN``, ``*_API_KEY`` ...), wherever it appears.

A URI saved redacted cannot be used to reconnect; :func:`usable_uri` strips the masked
credentials and expects them from ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD``
(or ``MLFLOW_TRACKING_TOKEN``), which MLflow reads itself, or a fresh ``--tracking-uri``.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any, Callable, Mapping

MASK = "***"

# scheme://[user][:password]@  (userinfo stops at the first '/', whitespace or '@')
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^/\s:@'\"]*)(?::(?P<pw>[^/\s@'\"]*))?@")
_SECRET_PARAMS = (
    r"token|access_token|refresh_token|id_token|auth|authorization|password|passwd|pwd|secret|client_secret|"
    r"api[_-]?key|apikey|key|sig|signature|x-amz-signature|x-amz-credential|x-amz-security-token|"
    r"sas|private_token|credential|credentials|accountkey|sharedaccesssignature"
)
_QUERY = re.compile(rf"(?P<lead>[?&;](?:{_SECRET_PARAMS})=)(?P<val>[^&#\s'\";]+)", re.IGNORECASE)
# connection strings: "AccountKey=...;", "Password=...;" (Azure, ODBC)
_CONNSTR = re.compile(r"(?P<lead>\b(?:AccountKey|SharedAccessSignature|Password|Pwd)=)(?P<val>[^;\s'\"]+)", re.IGNORECASE)
_AWS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")
_SECRET_ENV_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|API_KEY|ACCESS_KEY|PRIVATE_KEY|CONNECTION_STRING|CREDENTIALS?$")
_NOT_SECRET_SUFFIX = ("_PATH", "_FILE", "_DIR", "_MODE", "_TYPE", "_URL", "_URI", "_HOST", "_PORT", "_PARALLELISM")
_MIN_SECRET_LEN = 8  # shorter env values ("true", "1", "token") would mask ordinary words


def environ_snapshot() -> dict[str, str]:
    """A copy of ``os.environ`` that another thread cannot break while it is taken.

    Iterating ``os.environ`` reads key by key, so a variable another thread removes in between
    (MLflow's telemetry thread sets and drops ``_MLFLOW_TELEMETRY_SESSION_ID``) raises
    ``KeyError`` in the middle of a sweep; copying its underlying dict is one step under the GIL.
    """
    data = getattr(os.environ, "_data", None)
    if isinstance(data, dict):
        raw = data.copy()
        return {os.environ.decodekey(k): os.environ.decodevalue(v) for k, v in raw.items()}  # type: ignore[attr-defined]
    for _ in range(10):  # not CPython's os.environ: retry a copy a concurrent change broke
        try:
            return dict(os.environ)
        except (KeyError, RuntimeError):
            continue
    return {}


def secret_env_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of environment variables whose names mark them as secrets, longest first."""
    env = environ_snapshot() if environ is None else environ
    vals = {
        v
        for k, v in env.items()
        if v and len(v) >= _MIN_SECRET_LEN and _SECRET_ENV_NAME.search(k.upper()) and not k.upper().endswith(_NOT_SECRET_SUFFIX)
    }
    return sorted(vals, key=len, reverse=True)


def _userinfo(m: re.Match) -> str:
    user, pw = m.group("user"), m.group("pw")
    if pw is None:  # a bare token as the user part
        return f"{m.group('scheme')}{MASK}@" if user else m.group(0)
    return f"{m.group('scheme')}{user}:{MASK}@"


def redact_text(text: str, environ: Mapping[str, str] | None = None) -> str:
    """``text`` with every credential lungray recognises replaced by ``***``."""
    if not text:
        return text
    for v in secret_env_values(environ):
        if v in text:
            text = text.replace(v, MASK)
    text = _USERINFO.sub(_userinfo, text)
    text = _QUERY.sub(lambda m: m.group("lead") + MASK, text)
    text = _CONNSTR.sub(lambda m: m.group("lead") + MASK, text)
    return _AWS_KEY_ID.sub(MASK, text)


def redact(obj: Any, environ: Mapping[str, str] | None = None) -> Any:
    """Redact a string, or every string inside a mapping / list / tuple (keys too); other values as is.

    This is the one function every write and print site uses (console lines, ``sweep.json``,
    ``config.yaml``, MLflow params/tags/artifacts, error tags, ``trials.csv``, the report).
    """
    if isinstance(obj, str):
        return redact_text(obj, environ)
    if isinstance(obj, Mapping):
        return {redact(k, environ): redact(v, environ) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact(v, environ) for v in obj) if isinstance(obj, tuple) else [redact(v, environ) for v in obj]
    return obj


def redacting(echo: Callable[[str], None]) -> Callable[[str], None]:
    """``echo`` that prints every line redacted."""
    if getattr(echo, "_lungray_redacting", False):
        return echo

    def _echo(line: str) -> None:
        echo(redact_text(str(line)))

    _echo._lungray_redacting = True  # type: ignore[attr-defined]
    return _echo


def strip_credentials(uri: str) -> str:
    """``scheme://user:pw@host/...`` -> ``scheme://host/...`` (and secret query values dropped)."""
    uri = _USERINFO.sub(lambda m: m.group("scheme"), uri)
    return _QUERY.sub("", uri)


def is_redacted(text: str | None) -> bool:
    return bool(text) and MASK in str(text)


def usable_uri(uri: str | None, where: str = "the saved tracking URI") -> str | None:
    """A URI to connect with, from one that may have been saved redacted.

    A redacted URI (``http://user:***@host``) is stripped to ``http://host``: MLflow then takes
    the credentials from ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` or
    ``MLFLOW_TRACKING_TOKEN``. Without those, one clear error instead of a 401 later.
    """
    from lungray.errors import ConfigError

    if not is_redacted(uri):
        return uri
    env = os.environ
    if (env.get("MLFLOW_TRACKING_USERNAME") and env.get("MLFLOW_TRACKING_PASSWORD")) or env.get("MLFLOW_TRACKING_TOKEN"):
        return strip_credentials(str(uri))
    raise ConfigError(
        f"{where} ({uri}) had credentials, which lungray never saves; pass --tracking-uri with them again, "
        "or set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)"
    )


class RedactingFilter(logging.Filter):
    """A logging filter that redacts the formatted message (MLflow and Ray log URIs with credentials)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken record is logging's problem, not ours
            return True
        clean = redact_text(msg)
        if clean != msg:
            record.msg, record.args = clean, None
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        return True


def install_log_redaction(logger: logging.Logger | None = None) -> None:
    """Put :class:`RedactingFilter` on every handler of ``logger`` (default: the root logger).

    A filter on a handler sees records of every logger that propagates to it (a logger's own
    filters do not apply to its children's records). Idempotent.
    """
    lg = logger or logging.getLogger()
    for h in lg.handlers:
        if not any(isinstance(f, RedactingFilter) for f in h.filters):
            h.addFilter(RedactingFilter())


def configure_logging(verbose: bool, level: int = logging.INFO) -> None:
    """Console logging, every record redacted (:func:`install_log_redaction`); the ``lungray``
    CLI and the sweep scripts call this first. lungray's own lines from ``level`` up, libraries'
    from WARNING up: their INFO chatter (fontTools writes one line per table of every font it
    subsets into a PDF, issue 20.5) is not for the console. ``-v`` adds lungray's debug lines and
    libraries' INFO lines, never their DEBUG lines (PIL alone writes one per PNG chunk it reads)."""
    logging.basicConfig(level=logging.INFO if verbose else max(level, logging.WARNING), format="%(message)s")
    logging.getLogger("lungray").setLevel(logging.DEBUG if verbose else level)
    install_log_redaction()  # credentials never reach the console (issue 15)
