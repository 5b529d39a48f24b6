"""UI tests reuse the tiny models of the unit tests (built once per session)."""

from tests.unit.conftest import tiny_models  # noqa: F401 - a fixture, used by name
