"""Exceptions whose messages tell the user what to do next."""


class R2MoEError(ValueError):
    """Base class: every user-facing failure of the pack."""


class BankFormatError(R2MoEError):
    """A bank file is unreadable, incomplete, or from an unsupported format version."""


class BankMismatchError(R2MoEError):
    """A bank does not fit the model it is applied to."""


class InvalidInputError(R2MoEError):
    """A node or function argument is out of range or inconsistent."""


class PlannerCancelledError(R2MoEError):
    """The user cancelled while a planner request was in flight (the node turns it into the host's interrupt)."""
