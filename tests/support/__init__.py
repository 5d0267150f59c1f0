"""Helpers the tests import (builders of test data), as opposed to fixtures (tests/plugins)."""
