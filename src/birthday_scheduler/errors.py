"""One exception root. HTTP-facing errors carry their status and render as problem+json."""

from __future__ import annotations

from dataclasses import dataclass, field


class BirthdaySchedulerError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigurationError(BirthdaySchedulerError):
    """Bad configuration: the message names the variable and what is allowed."""


class BrokerError(BirthdaySchedulerError):
    """The queue could not take or give work (connection lost, publish not confirmed)."""


@dataclass(frozen=True)
class FieldProblem:
    field: str
    reason: str


@dataclass
class ProblemError(BirthdaySchedulerError):
    """An error the API reports to its caller as RFC 9457 problem details."""

    status: int
    title: str
    detail: str | None = None
    errors: list[FieldProblem] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.status} {self.title}"


class NotFoundError(ProblemError):
    def __init__(self, detail: str = "The resource does not exist.") -> None:
        super().__init__(status=404, title="Not Found", detail=detail)


class ConflictError(ProblemError):
    def __init__(self, detail: str, errors: list[FieldProblem] | None = None) -> None:
        super().__init__(status=409, title="Conflict", detail=detail, errors=errors or [])


class ValidationProblem(ProblemError):
    def __init__(self, errors: list[FieldProblem], detail: str = "The request is invalid.") -> None:
        super().__init__(status=400, title="Bad Request", detail=detail, errors=errors)


class DatabaseUnavailableError(ProblemError):
    """The database could not be reached, or did not answer in time: retry later (503)."""

    def __init__(self, retry_after_s: int = 5) -> None:
        super().__init__(
            status=503,
            title="Service Unavailable",
            detail="The database is unreachable right now; retry later.",
            headers={"Retry-After": str(retry_after_s)},
        )
