"""The errors a user can cause: the bottom of the import graph (imports nothing of ours).

Every error that bad input, a bad config, a bad model or a damaged output can cause derives from
``ElmoDistError`` (and from the builtin it has always been, so ``except ValueError`` keeps working).
The CLI prints any of them as one line and exits 2; see ``elmo_dist.cli``.
"""

from __future__ import annotations


class ElmoDistError(Exception):
    """Base of the errors a user can cause (the CLI prints them in one line, exit code 2)."""


# Besides ours, the OS errors a user causes with a bad path or permissions.
USER_ERRORS: tuple[type[BaseException], ...] = (ElmoDistError, PermissionError, FileNotFoundError)

EXIT_OK = 0
EXIT_PROBLEMS = 1  # a check ran and found problems (`elmo-dist verify`)
EXIT_USER_ERROR = 2  # bad input, config, model or output: one line on stderr


class SearchError(ElmoDistError, ValueError):
    """The search cannot run as asked: wrong model, inconsistent output, stale index, bad query.

    Defined here, at the bottom, because the output layer (``elmo_dist.output``) raises a kind of it
    for shards that cannot be searched together; ``elmo_dist.search`` re-exports it.
    """
