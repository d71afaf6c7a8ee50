"""Where the MXNet-written fixtures live (``../shared/fixtures`` beside the checkout), for every test file."""

from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
EXPECTED = FIXTURES / "expected.json"
needs_fixtures = pytest.mark.skipif(not EXPECTED.is_file(), reason=f"MXNet fixtures not found at {FIXTURES}")
