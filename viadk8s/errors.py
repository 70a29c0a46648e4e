"""Errors that carry the process exit code the worker and the CLI promise.

Exit code 2: the input is wrong, retrying cannot help (Kubernetes' podFailurePolicy fails the Job).
Exit code 3: infrastructure trouble (storage, tracking, network), a retry may help.
"""

from pydantic import ValidationError


class Viadk8sError(Exception):
    """Base class: the message is one line meant for the user."""

    exit_code = 1


class SpecError(Viadk8sError):
    """Invalid spec, config, selection or dataset."""

    exit_code = 2


class InfraError(Viadk8sError):
    """Storage, tracking or network failure; retrying may help."""

    exit_code = 3


def one_of(kind: str, value: object, allowed: "list[str] | tuple[str, ...]") -> SpecError:
    """The standard 'unknown X' error naming the bad value and what is allowed."""
    return SpecError(f"unknown {kind} {value!r}; allowed: {', '.join(map(str, allowed))}")


def validation_message(err: ValidationError) -> str:
    """One line from a pydantic error: the path of the first bad key and what is wrong."""
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "(root)"
    message = str(first["msg"]).removeprefix("Value error, ")
    more = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{where}: {message}{more}"
