"""The base every configuration model derives from, and how a rule across fields reports its problems.

Apart from the models so that each section's module can derive from it without importing the others:
``_Model`` is frozen, refuses unknown keys and never echoes input (a secret) in an error; a model lists
the problems of its rules across fields in ``_cross_field_problems``, which runs only once every field
is valid, and ``loading.py`` turns each into a Problem with its full YAML path.
"""

from __future__ import annotations

from collections.abc import Iterator

from pydantic import BaseModel, ConfigDict, model_validator

from .values import Loc


class _CrossFieldProblems(ValueError):
    """Problems of rules that span fields, each with a path relative to the model that found them."""

    def __init__(self, problems: list[tuple[Loc, str]]) -> None:
        super().__init__("; ".join(message for _, message in problems))
        self.problems = problems


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    def _cross_field_problems(self) -> Iterator[tuple[Loc, str]]:
        return iter(())

    @model_validator(mode="after")
    def _check_across_fields(self) -> _Model:
        problems = list(self._cross_field_problems())
        if problems:
            raise _CrossFieldProblems(problems)
        return self
