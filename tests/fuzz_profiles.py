"""Hypothesis settings of the fuzzing suites (tests/test_fuzz_*.py).

The default suite uses the ``ci`` profile (few examples, derandomized: the same examples every run);
``HYPOTHESIS_PROFILE=slow`` makes every fuzz test long, and the ``slow``-marked variants (``pytest -m slow``)
always run the slow profile's many random examples.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=25, deadline=None, derandomize=True, database=None, print_blob=True
)
settings.register_profile(
    "slow",
    max_examples=300,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
# the slow-marked variants: the slow profile whatever the loaded one (fixtures are module-scoped or per test)
SLOW = settings(
    settings.get_profile("slow"),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
FIXTURES = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
