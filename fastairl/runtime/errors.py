"""The one error type for problems the user can fix (bad flag, file or value): every tool
prints it as one line and exits 2, so it lives below all of them."""
from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix; printed as one line, exit code 2."""
