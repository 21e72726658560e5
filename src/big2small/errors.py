"""The one exception type that means "the user asked for something we cannot do"."""


class Big2SmallError(Exception):
    """A user-facing error: printed as one line, non-zero exit."""
