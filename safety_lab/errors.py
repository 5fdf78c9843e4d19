"""One error type for bad input: the CLI prints its message as one line and exits non-zero."""


class SafetyLabError(ValueError):
    """A user-facing error. The message names the field and the problem, on one line."""

    def __init__(self, field: str, problem: str):
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


def check(condition: bool, field: str, problem: str) -> None:
    """Raise SafetyLabError(field, problem) unless condition holds."""
    if not condition:
        raise SafetyLabError(field, problem)
