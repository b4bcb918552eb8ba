"""How much the property tests of the parsers run: a fixed small budget in the suite, a
larger one under ``./run fuzz`` (tools/fuzz.py).

In the suite every property runs its own ``max_examples`` with ``derandomize``: the same
examples every run. ``./run fuzz`` sets ``TIDINGS_FUZZ_SCALE`` (examples multiplied by
it) and passes ``--hypothesis-seed``, which picks the examples: a run is reproduced by
its seed, which the runner prints.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

SCALE_ENV = "TIDINGS_FUZZ_SCALE"


def fuzz_settings(max_examples: int) -> settings:
    """``max_examples`` fixed examples, or under ``./run fuzz`` that many times its scale,
    drawn from the run's seed."""
    scale = int(os.environ.get(SCALE_ENV, "0") or 0)
    if scale > 0:
        return settings(
            max_examples=max_examples * scale,
            deadline=None,
            derandomize=False,
            database=None,  # the seed, not a local database, reproduces a failure
            suppress_health_check=list(HealthCheck),
        )
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow],
    )
