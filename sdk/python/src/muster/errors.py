"""Typed errors: one class per problem+json status, each carrying the stable ``code``.

Every error the server answers is an ``application/problem+json`` body with ``type``,
``title``, ``status``, ``detail`` and a stable ``code``; :func:`error_from_response`
turns it into the matching subclass of :class:`MusterError`. ``NonRetryable`` is not an
API error: handlers raise it to fail a task for good.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Type

__all__ = [
    "MusterError",
    "TransportError",
    "BadRequest",
    "Unauthorized",
    "Forbidden",
    "NotFound",
    "Conflict",
    "PayloadTooLarge",
    "Invalid",
    "RateLimited",
    "Unavailable",
    "ServerError",
    "NonRetryable",
    "error_from_response",
]


class MusterError(Exception):
    """An error answered by the control plane, or no answer at all.

    Attributes:
        status: HTTP status (``None`` when the server could not be reached).
        code: the problem's stable ``code`` (``"lease_conflict"``, ``"not_found"``...).
        detail: what happened and what to do, as the server says it.
        title: the problem's short title.
        retry_after: seconds from ``Retry-After`` when given (429, 503).
        method, url: the request that failed.
    """

    status: Optional[int] = None
    default_code = "error"

    def __init__(
        self,
        detail: str,
        *,
        status: Optional[int] = None,
        code: Optional[str] = None,
        title: Optional[str] = None,
        retry_after: Optional[float] = None,
        method: Optional[str] = None,
        url: Optional[str] = None,
        problem: Optional[Dict[str, Any]] = None,
    ) -> None:
        if status is not None:
            self.status = status
        self.code = code or self.default_code
        self.detail = detail
        self.title = title
        self.retry_after = retry_after
        self.method = method
        self.url = url
        self.problem = problem or {}
        super().__init__(detail)

    @property
    def transient(self) -> bool:
        """True when trying again later may succeed (no answer, 408, 429, 5xx)."""
        s = self.status
        return s is None or s >= 500 or s in (408, 429)

    def __str__(self) -> str:
        where = f"{self.method} {self.url}: " if self.method and self.url else ""
        if self.status is None:
            return f"{where}{self.detail}"
        return f"{where}{self.status} {self.code}: {self.detail}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status!r}, code={self.code!r}, detail={self.detail!r})"


class TransportError(MusterError):
    """No server answered: connection refused, reset, or timed out."""

    default_code = "transport"


class BadRequest(MusterError):
    """400: the request is malformed (bad query, malformed JSON)."""

    status = 400
    default_code = "bad_request"


class Unauthorized(MusterError):
    """401: no token, or a token the server does not know."""

    status = 401
    default_code = "unauthorized"


class Forbidden(MusterError):
    """403: the token's role may not do this."""

    status = 403
    default_code = "forbidden"


class NotFound(MusterError):
    """404: no such task, node, queue, batch or schedule."""

    status = 404
    default_code = "not_found"


class Conflict(MusterError):
    """409: conflicts with the current state (stale lease, illegal transition)."""

    status = 409
    default_code = "conflict"


class PayloadTooLarge(MusterError):
    """413: the body or a result is too large."""

    status = 413
    default_code = "too_large"


class Invalid(MusterError):
    """422: well-formed but invalid (a field out of range, an unknown field)."""

    status = 422
    default_code = "invalid"


class RateLimited(MusterError):
    """429: past the token's rate limit; see ``retry_after``."""

    status = 429
    default_code = "rate_limited"


class Unavailable(MusterError):
    """503: Redis is unreachable from the control plane; see ``retry_after``."""

    status = 503
    default_code = "unavailable"


class ServerError(MusterError):
    """Any other 5xx (the cause is in the server's log, never in the body)."""

    status = 500
    default_code = "internal"


_BY_STATUS: Dict[int, Type[MusterError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: Invalid,
    429: RateLimited,
    503: Unavailable,
}


def error_class(status: int) -> Type[MusterError]:
    """The error class for an HTTP status."""
    cls = _BY_STATUS.get(status)
    if cls is not None:
        return cls
    if status >= 500:
        return ServerError
    return MusterError


def _retry_after(value: Optional[str]) -> Optional[float]:
    if not value:
        return None
    try:
        return max(0.0, float(value.strip()))
    except ValueError:
        return None


def error_from_response(method: str, url: str, status: int, headers: Any, body: bytes) -> MusterError:
    """Builds the typed error for a non-2xx answer (problem+json or plain text)."""
    import json

    problem: Dict[str, Any] = {}
    try:
        parsed = json.loads(body) if body else None
        if isinstance(parsed, dict):
            problem = parsed
    except ValueError:
        pass
    code = problem.get("code") if isinstance(problem.get("code"), str) else None
    detail = problem.get("detail") or problem.get("title")
    if not isinstance(detail, str) or not detail:
        text = body.decode("utf-8", "replace").strip()[:300] if body else ""
        detail = text or f"HTTP {status}"
    cls = error_class(status)
    return cls(
        detail,
        status=status,
        code=code,
        title=problem.get("title") if isinstance(problem.get("title"), str) else None,
        retry_after=_retry_after(headers.get("retry-after") if headers is not None else None),
        method=method,
        url=url,
        problem=problem,
    )


class NonRetryable(Exception):
    """Raise from a handler to fail the task for good (no further attempts).

    Any other exception fails the attempt and lets the task retry while it has
    attempts left.
    """
