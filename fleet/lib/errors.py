"""The one shape of a refused request across Fleet's services: the field at fault and how to fix it."""

from __future__ import annotations


class FieldError(Exception):
    """Raised by services; views turn it into a form error or a JSON ``{"error", "field"}`` body."""

    def __init__(self, field: str, message: str, status: int = 400):
        super().__init__(message)
        self.field = field
        self.message = message
        self.status = status
