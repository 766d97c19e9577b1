"""What a failed tracking request means: retry later (:func:`is_transient`), give up for good
(:func:`is_auth_error`), or look the run up again (:func:`is_run_gone`).

MLflow's exception class is imported where first needed: importing mlflow costs ~1 s.
"""

from __future__ import annotations


class TrackingRefused(RuntimeError):
    """The tracking server refused this run's credentials or permission."""


class RunGone(Exception):
    """The run was deleted or does not exist any more."""


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: the server is down or overloaded (5xx / 408 / 429). Requests that the
    server rejects for their content (4xx: invalid value, changed param, deleted run) are not,
    and neither are refused credentials (401 / 403: see :func:`is_auth_error`)."""
    from mlflow.exceptions import MlflowException  # deferred: see the module docstring

    if not isinstance(exc, MlflowException):
        return True  # connection errors, timeouts, a locked SQLite file, …
    status = exc.get_http_status_code()
    return status >= 500 or status in (408, 429) or exc.error_code == "ENDPOINT_NOT_FOUND"


def is_auth_error(exc: BaseException) -> bool:
    """The server refused the credentials or the permission: retrying cannot help, and a trial
    must not train for hours into a store that will never take its data."""
    from mlflow.exceptions import MlflowException  # deferred: see the module docstring

    if not isinstance(exc, MlflowException):
        return False
    return exc.get_http_status_code() in (401, 403) or exc.error_code in (
        "UNAUTHENTICATED",
        "PERMISSION_DENIED",
    )


def is_run_gone(exc: BaseException) -> bool:
    """The request failed because its run was deleted or never existed."""
    from mlflow.exceptions import MlflowException  # deferred: see the module docstring

    return isinstance(exc, MlflowException) and (
        exc.error_code == "RESOURCE_DOES_NOT_EXIST" or "must be in the 'active' state" in str(exc)
    )
