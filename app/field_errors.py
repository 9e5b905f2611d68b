"""The one shape of "this field is wrong": which field, a stable code, and a message that says how to fix it.

Identity numbers, upload rows, declarations and venue requests raise subclasses of it; the edge answers
each as an invalid-field problem with `field` and `code`.
"""

from __future__ import annotations


class FieldError(ValueError):
    def __init__(self, field: str, code: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.code = code
        self.message = message
