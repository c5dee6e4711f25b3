"""Errors that are the user's to fix; the CLI prints them as one line, napari as a notification."""

from __future__ import annotations

import os


class UserError(ValueError):
    """A problem with the user's input (file, option, cohort), with a message that says what to do."""


class SlideError(UserError):
    """A slide or image that cannot be read; the message names the file and the problem."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):
        """Rebuild from (path, problem) so the error crosses process boundaries (process pools, Dask)."""
        return (type(self), (self.path, self.problem))


class CohortError(UserError):
    """A cohort CSV or features folder that cannot be used."""


class ModelError(UserError):
    """A model bundle that cannot be loaded (missing file, other schema or version)."""
