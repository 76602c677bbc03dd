"""Skip, or fail where the part is required (harness.requirements), with the reason."""

from __future__ import annotations

from typing import NoReturn

import pytest

from harness.requirements import is_required, why_required


def unavailable(part: str, reason: str) -> NoReturn:
    """Skips the test with ``reason``, or fails it where ``part`` is required here."""
    if is_required(part):
        pytest.fail(f"{reason}; {why_required(part)} requires the {part}, so this fails, not skips")
    pytest.skip(reason)
