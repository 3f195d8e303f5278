"""A remote MLflow server (``http(s)://``): checked before a step logs anything, with clear errors.

MLflow's own client retries a refused connection quietly for minutes and reports a wrong password as a
bare HTTP error deep in the first call. :func:`check_server` asks first: ``/health`` with retries and
exponential backoff (the server may be restarting), then one authenticated read, so a step fails before
it creates a run or registers anything, naming the server:

- server down: ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` retries (default 5), waits of
  ``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR`` (default 2 s) x 1, 2, 4, ... (the variables MLflow's client reads)
- credentials refused (basic-auth app): ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``
  (on the cluster from the Secret ``hmarl-mlflow``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from hmarl.errors import StepError

log = logging.getLogger(__name__)

RETRIES_ENV = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
BACKOFF_ENV = "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"
_DENIED = ("PERMISSION_DENIED", "UNAUTHENTICATED")
_CHECKED: set[str] = set()  # servers already checked by this process


class TrackingServerError(StepError):
    """The tracking server is unreachable or refuses this identity."""


def _number(name: str, default: float) -> float:
    text = os.environ.get(name, "")
    try:
        return float(text) if text else default
    except ValueError:
        raise TrackingServerError(f"{name}={text!r}: expected a number") from None


def _credentials() -> tuple[str, str] | None:
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    return (user, os.environ.get("MLFLOW_TRACKING_PASSWORD", "")) if user else None


def _refused(uri: str, status: int) -> TrackingServerError:
    who = (_credentials() or ("(none)",))[0]
    return TrackingServerError(
        f"MLflow tracking server {uri} refused the credentials of user {who!r} (HTTP {status}): set "
        "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (on the cluster: the Secret hmarl-mlflow)"
    )


def wait_until_up(uri: str, sleep: Callable[[float], None] = time.sleep) -> None:
    """``GET <uri>/health`` until it answers, with exponential backoff; TrackingServerError after the last try."""
    import requests

    retries = int(_number(RETRIES_ENV, 5))
    backoff = _number(BACKOFF_ENV, 2.0)
    last = ""
    for attempt in range(retries + 1):
        try:
            # 401: the basic-auth app guards /health too on some versions; the server is up either way
            if requests.get(f"{uri.rstrip('/')}/health", timeout=10).status_code in (200, 401):
                return
            last = "HTTP error"
        except requests.RequestException as exc:
            last = f"{type(exc).__name__}: {str(exc)[:160]}"
        if attempt < retries:
            delay = backoff * 2**attempt
            log.warning(
                "MLflow server %s not answering (%s); retry %d/%d in %.1fs",
                uri,
                last,
                attempt + 1,
                retries,
                delay,
            )
            sleep(delay)
    raise TrackingServerError(
        f"MLflow tracking server {uri} unreachable after {retries + 1} attempts ({last})"
    )


def check_server(uri: str, sleep: Callable[[float], None] = time.sleep) -> None:
    """The server answers and accepts this identity (once per process and server)."""
    import requests

    if uri in _CHECKED:
        return
    wait_until_up(uri, sleep)
    url = f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/search"
    try:
        r = requests.get(url, params={"max_results": 1}, auth=_credentials(), timeout=30)
    except requests.RequestException as exc:
        raise TrackingServerError(f"MLflow tracking server {uri}: {type(exc).__name__}: {exc}") from None
    if r.status_code in (401, 403):
        raise _refused(uri, r.status_code)
    if not r.ok:
        raise TrackingServerError(f"MLflow tracking server {uri}: HTTP {r.status_code} on {url}")
    _CHECKED.add(uri)


def permission_error(exc: Exception, uri: str, action: str) -> TrackingServerError | None:
    """A clear error for an MLflow call this identity may not make (e.g. the read-only identity), else None."""
    code = getattr(exc, "error_code", "")
    if code in _DENIED:
        who = (_credentials() or ("(none)",))[0]
        return TrackingServerError(f"MLflow tracking server {uri}: user {who!r} may not {action} ({code})")
    return None
