"""User-facing errors.

Every error a user can cause by bad input is a :class:`FeatxError` whose message is one line that
says what went wrong and what to do. The CLI prints it without a traceback (unless ``-v``) and
exits non-zero; library users catch it like any other exception.
"""


class FeatxError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class StoreError(FeatxError):
    """A feature store is missing, foreign, or built with another configuration."""


class StoreLockedError(StoreError):
    """Another process is writing the same feature store."""
