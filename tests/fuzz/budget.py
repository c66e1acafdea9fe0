"""The fuzzing budget: bounded and deterministic in CI, longer on demand.

    python -m pytest tests/fuzz                        # CI: a fixed, small budget
    FUZZ_EXAMPLES=100000 python -m pytest tests/fuzz   # a long run (random seeds)

With the default budget every run explores the same inputs (derandomize),
so CI is deterministic; setting FUZZ_EXAMPLES switches to random exploration
(hypothesis prints the seed and the smallest failing input if anything
breaks).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, Phase, settings

LONG = "FUZZ_EXAMPLES" in os.environ
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))


def fuzz_settings(share: float = 1.0) -> settings:
    """Settings for one fuzz target; ``share`` scales the budget for slow targets."""
    return settings(
        max_examples=max(10, int(EXAMPLES * share)),
        derandomize=not LONG,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        print_blob=True,
        # No "explain" phase: it reruns a failure hundreds of times to say which
        # lines only failing runs reach -- slow against a live node.
        phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
    )
