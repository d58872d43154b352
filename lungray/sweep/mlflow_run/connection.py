"""The MLflow client of a sweep: its HTTP bounds, credentials, retries and the outage breaker.

One subject: reaching the tracking store. :func:`client` is the only way lungray gets an
:class:`mlflow.MlflowClient` (MLflow's own retries off, credentials moved out of the URI),
:func:`retry` bounds each call and opens the process-wide :data:`OUTAGE` breaker when the store is
gone (callers then queue their writes: :mod:`~lungray.sweep.mlflow_run.pending`), and
:class:`StoreWarmUp` imports MLflow and opens the store while Ray starts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from pathlib import Path
from typing import Callable, Optional, TypeVar

from lungray.errors import LungrayError
from lungray.redact import redact

log = logging.getLogger(__name__)

R = TypeVar("R")


#: MLflow's own HTTP client retries 7 times with exponential back-off (~4 min per call, on top of
#: a 120 s timeout), and lungray retried that again: a stopped server cost up to ~33 min per
#: call (issue 15, item 3). lungray turns MLflow's retries off and bounds each call itself
#: (:func:`retry`); a user's own setting of these variables wins. MLflow also prints "View run
#: ... at: <tracking URI>" to stdout for every run it ends, credentials included: off.
MLFLOW_ENV_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}
#: seconds lungray keeps retrying one transient failure before it queues the write (env override)
RETRY_SECONDS_ENV = "LUNGRAY_MLFLOW_RETRY_SECONDS"
RETRY_SECONDS = 20.0
#: while the server is unreachable, one probe at most this often; other writes queue at once
PROBE_SECONDS_ENV = "LUNGRAY_MLFLOW_PROBE_SECONDS"
PROBE_SECONDS = 30.0

_TRANSIENT = (
    "database is locked", "busy", "timed out", "timeout", "temporarily", "connection", "max retries exceeded",
    "remote end closed", "reset by peer", "broken pipe", "unable to open database", "disk i/o error",
    "database or disk is full", "503", "502", "504", "429",
)


def bound_http_env() -> None:
    """Set MLflow's HTTP retry/timeout variables to lungray's bounds unless the user set them.

    MLflow reads them at each request (``mlflow.utils.rest_utils.http_request``), so this holds
    in every process that calls :func:`client` (driver, Tune trials, Train workers)."""
    for k, v in MLFLOW_ENV_DEFAULTS.items():
        os.environ.setdefault(k, v)


def credentials_to_env(tracking_uri: str) -> str:
    """``http://user:pw@host`` -> ``http://host``, with ``MLFLOW_TRACKING_USERNAME``/``PASSWORD`` set.

    MLflow reads those variables at each request; a URI it is given is echoed in its
    exceptions ("API request to http://user:pw@host/... failed"). With the credentials moved
    out, MLflow never holds them in a string, and :func:`lungray.redact.redact` masks the
    variable's value wherever it might still appear."""
    from urllib.parse import unquote, urlsplit, urlunsplit

    parts = urlsplit(tracking_uri)
    if parts.scheme not in ("http", "https") or parts.password is None:
        return tracking_uri
    os.environ["MLFLOW_TRACKING_USERNAME"] = unquote(parts.username or "")
    os.environ["MLFLOW_TRACKING_PASSWORD"] = unquote(parts.password)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def client(tracking_uri: str):
    """An :class:`mlflow.MlflowClient` bound to ``tracking_uri`` (imports mlflow lazily), with
    lungray's HTTP bounds and any credentials of the URI moved to MLflow's variables."""
    from mlflow import MlflowClient

    bound_http_env()
    return MlflowClient(tracking_uri=credentials_to_env(tracking_uri))


class TrackingUnavailable(LungrayError):
    """The tracking store did not answer within lungray's bound; the write was not made (queue it)."""

    def __init__(self, since: float, error: str):
        self.since = since
        self.error = redact(one_line(error, 300))
        super().__init__(f"MLflow tracking unreachable since {clock(since)} ({self.error})")


class TrackingRefused(LungrayError):
    """The tracking server answered and refused: wrong credentials (401), a permission or its
    Host-header check (403). Not an outage: retrying cannot help, so it is one line at once."""


def refusal(e: BaseException) -> Optional[str]:
    """The one-line reason when ``e`` is a 401/403 answer of a tracking server, else ``None``."""
    text = str(e)
    status = getattr(e, "get_http_status_code", lambda: None)()
    m = re.search(r"error code (401|403)\b", text)
    code = int(m.group(1)) if m else (status if status in (401, 403) else None)
    if code is None:
        return None
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    who = f" of user '{user}'" if user else ""
    if code == 401:
        return (f"the MLflow server refused the credentials{who} (401 Unauthorized): set MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD to a user of that server (on a cluster: ~/.lungray/mlflow.env on every node), "
                "or pass them in --tracking-uri http://user:password@host:port")
    if "invalid host header" in text.lower():
        return ("the MLflow server refused the address it was called by (403 Invalid Host header, MLflow's DNS-rebinding "
                "check): start it with --allowed-hosts naming that host:port, as cluster.yaml does")
    return (f"the MLflow server denied the request{who} (403 Forbidden): give that user EDIT permission on the "
            "experiment (or let the sweep create its own), or use the user that created it")


def check_access(tracking_uri: str) -> None:
    """One authenticated call before Ray starts: a refusal is one line now, not a traceback
    after start-up; an unreachable server is left to the sweep's outage handling."""
    if is_local_store(tracking_uri):
        return
    c = client(tracking_uri)
    try:
        retry(lambda: c.search_experiments(max_results=1), attempts=1, what="check access")
    except TrackingUnavailable:
        OUTAGE.for_sweep(None)  # unreachable is not refused: the sweep's own outage handling decides


class _Outage:
    """Process-wide circuit breaker: after one call gave up, later calls fail at once (queued)
    instead of each waiting out the retries, and one probe per ``PROBE_SECONDS`` checks
    whether the store is back."""

    def __init__(self) -> None:
        self.since: Optional[float] = None
        self.error = ""
        self.next_probe = 0.0
        self.sweep: Optional[str] = None

    def for_sweep(self, sweep: Optional[str]) -> None:
        """Forget an outage seen by another sweep (Ray re-uses worker processes across sweeps;
        a test process runs several): the breaker holds within one sweep only."""
        if sweep != self.sweep or sweep is None:
            self.since, self.next_probe, self.sweep = None, 0.0, sweep

    def start(self, e: BaseException) -> None:
        if self.since is None:
            self.since = time.time()
            log.info("MLflow unreachable (%s); writes are queued", redact(one_line(str(e), 300)))
        self.error = str(e)
        self.next_probe = time.monotonic() + _env_float(PROBE_SECONDS_ENV, PROBE_SECONDS)

    def clear(self) -> None:
        if self.since is not None:
            log.info("MLflow reachable again (unreachable since %s)", clock(self.since))
        self.since = None

    def unavailable(self, cause: Optional[BaseException] = None) -> TrackingUnavailable:
        return TrackingUnavailable(self.since or time.time(), str(cause) if cause is not None else self.error)


OUTAGE = _Outage()


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def clock(t: float) -> str:
    """``2026-05-03 14:02:11`` (local time), for "unreachable since" lines."""
    import datetime as _dt

    return _dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def is_transient(e: BaseException) -> bool:
    """A failure worth retrying/queuing (store unreachable, overloaded, locked), not a bad request."""
    if isinstance(e, TrackingUnavailable):
        return True
    if isinstance(e, (ConnectionError, TimeoutError)):
        return True
    text = str(e).lower()
    return any(s in text for s in _TRANSIENT)


def retry(fn: Callable[[], R], *, attempts: Optional[int] = None, what: str = "MLflow call") -> R:
    """Call ``fn``, retrying transient store errors for at most ``LUNGRAY_MLFLOW_RETRY_SECONDS``.

    Transient: sqlite 'database is locked' (concurrent trials share one file), HTTP 5xx/429,
    refused or timed-out connections. When the bound is spent the process enters an outage
    (:data:`OUTAGE`) and raises :class:`TrackingUnavailable`: the caller queues the write on
    disk, and until the next probe every further call raises at once, so a stopped server
    costs a trial one bound, not one bound per write. Other errors are raised as they are.
    ``attempts`` caps the number of tries (tests).
    """
    if OUTAGE.since is not None:
        if time.monotonic() < OUTAGE.next_probe:
            raise OUTAGE.unavailable()
        try:  # the probe: one attempt
            out = fn()
        except Exception as e:  # noqa: BLE001 - classified
            if not is_transient(e):
                OUTAGE.clear()  # the server answered
                why = refusal(e)
                if why:
                    raise TrackingRefused(why) from e
                raise
            OUTAGE.start(e)
            raise OUTAGE.unavailable(e) from e
        OUTAGE.clear()
        return out
    deadline = time.monotonic() + _env_float(RETRY_SECONDS_ENV, RETRY_SECONDS)
    delay, i = 0.25, 0
    while True:
        i += 1
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - classified below
            if not is_transient(e):
                why = refusal(e)
                if why:
                    raise TrackingRefused(why) from e
                raise
            if time.monotonic() + delay > deadline or (attempts is not None and i >= attempts):
                OUTAGE.start(e)
                raise OUTAGE.unavailable(e) from e
            log.debug("%s failed (%s); retrying in %.1fs", what, redact(one_line(str(e), 300)), delay)
            time.sleep(delay)
            delay = min(delay * 2, 4.0)


def is_local_store(tracking_uri: str) -> bool:
    return tracking_uri.startswith("sqlite:") or tracking_uri.startswith("file:") or "://" not in tracking_uri


@contextlib.contextmanager
def schema_lock(tracking_uri: str):
    """Hold an exclusive file lock next to a local sqlite store while the first MLflow call
    creates its tables: two sweeps started at once into one output folder both ran MLflow's
    schema migration, and the second died ("table _alembic_tmp_latest_metrics already exists")."""
    if not tracking_uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    db = Path(tracking_uri[len("sqlite:///"):])
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".init.lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            if not db.exists():
                seed_sqlite_store(db)
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


#: Where a new local store's schema comes from (``$XDG_CACHE_HOME/lungray``, else ``~/.cache/lungray``)
CACHE_ENV = "XDG_CACHE_HOME"


def schema_template() -> Optional[Path]:
    """An empty MLflow sqlite store of the installed MLflow, made once per machine and version.

    MLflow builds a new sqlite store by running its ~60 schema migrations, each committed to
    disk: ~2.5 s on a quiet disk, 10 s and more on a busy one, for every new output folder
    (issue 22.3). The result is the same file every time for one MLflow version, except the
    Default experiment (id 0), whose artifact location MLflow derives from the store's
    surroundings: the template is made by MLflow itself and has that row removed, and MLflow
    recreates it, for the new store's own location, when it first opens a copy
    (``SqlAlchemyStore._initialize_store_state``). ``None`` when it cannot be made (MLflow's own
    migrations then run as before).
    """
    import fcntl
    import sqlite3

    try:
        import mlflow

        base = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache") / "lungray" / "mlflow-schema"
        template = base / f"mlflow-{mlflow.__version__}.db"
        if template.exists():
            return template
        base.mkdir(parents=True, exist_ok=True)
        with open(base / ".lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            if template.exists():  # another process made it meanwhile
                return template
            tmp = base / f".{template.name}.{os.getpid()}.tmp"
            tmp.unlink(missing_ok=True)
            from mlflow.tracking import MlflowClient

            MlflowClient(f"sqlite:///{tmp}").search_experiments(max_results=1)  # MLflow's own migrations
            con = sqlite3.connect(tmp)
            try:
                with con:
                    con.execute("DELETE FROM experiments WHERE experiment_id = 0")
            finally:
                con.close()
            os.replace(tmp, template)
            return template
    except Exception:  # noqa: BLE001 - a cache; MLflow builds the store itself without it
        log.debug("no MLflow schema template", exc_info=True)
        return None


def seed_sqlite_store(db: Path) -> bool:
    """Create the new sqlite store ``db`` as a copy of :func:`schema_template` (atomically);
    ``False`` when there is no template (MLflow then creates the store as before)."""
    import shutil

    template = schema_template()
    if template is None:
        return False
    tmp = db.with_name(f".{db.name}.{os.getpid()}.tmp")
    try:
        shutil.copyfile(template, tmp)
        os.replace(tmp, db)
    except OSError:
        tmp.unlink(missing_ok=True)
        return False
    return True



class StoreWarmUp:
    """Import MLflow and open the sweep's store in a thread, while Ray starts (issue 22.3).

    ``import mlflow`` takes ~1 s of a quiet CPU, and opening a new local sqlite store ran MLflow's
    ~60 schema migrations (now a copy of :func:`schema_template`). ``ray.init`` meanwhile mostly
    waits for the processes it starts. Both now overlap; :meth:`wait` is called before the
    driver's first MLflow write.

    Nothing here refuses or retries: a failure is left for the driver's own calls, which report
    it (or queue the writes) exactly as before. MLflow's client caches the store per URI, so the
    driver's calls reuse the one opened here. ``quiet`` raises MLflow's loggers to WARNING once
    imported (its "Creating initial MLflow database tables..." lines).
    """

    def __init__(self, tracking_uri: str, quiet: bool = True):
        import threading

        self.tracking_uri = tracking_uri
        self.quiet = quiet
        self.error: Optional[BaseException] = None
        self.seconds = float("nan")
        self._thread = threading.Thread(target=self._run, name="lungray-mlflow-warm-up", daemon=True)

    def start(self) -> "StoreWarmUp":
        bound_http_env()  # in this thread: os.environ is not changed while Ray spawns its processes
        self._thread.start()
        return self

    def _run(self) -> None:
        t0 = time.perf_counter()
        try:
            import mlflow  # noqa: F401 - configures its loggers at import; set the level after that

            if self.quiet:
                logging.getLogger("mlflow").setLevel(logging.WARNING)
            if is_local_store(self.tracking_uri):
                with schema_lock(self.tracking_uri):  # the first client creates the sqlite schema
                    client(self.tracking_uri).get_experiment_by_name("Default")
        except Exception as e:  # noqa: BLE001 - the driver's own call meets it again and reports it
            self.error = e
        finally:
            self.seconds = time.perf_counter() - t0

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until the warm-up is done (``False`` if ``timeout`` passed first)."""
        self._thread.join(timeout)
        return not self._thread.is_alive()


def one_line(text: str, limit: int = 1000) -> str:
    """``text`` on one line, redacted, at most ``limit`` characters (error tags, console lines)."""
    s = redact(" ".join(str(text).split()))
    return s if len(s) <= limit else s[: limit - 3] + "..."
