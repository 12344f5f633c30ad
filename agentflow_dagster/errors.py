"""Errors in the files a team writes: they name the file, the thing in it and the field."""

from __future__ import annotations


class ProjectError(ValueError):
    """A project file is invalid; names the file, the agent/tool/workflow/task and the field, and the fix."""

    def __init__(self, file: str, subject: str | None, field: str | None, message: str):
        self.file, self.subject, self.field, self.message = file, subject, field, message
        where = file
        if subject:
            where += f": {subject}"
        if field:
            where += f", field {field!r}" if subject else f": field {field!r}"
        super().__init__(f"{where}: {message}")
