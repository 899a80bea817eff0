"""Exact restore under stress: random apply/restore sequences with stacks of every layer kind on
fp32, fp16 and bf16 models (tests/reliability/stress.py), and generations cancelled mid-way."""

from __future__ import annotations

import random
import threading
from collections import Counter

import pytest

from loraworks.generation import GenerationCancelled, generate
from loraworks.generation.cache import cache_for
from loraworks.models import ModelManager
from tests.reliability.kinds import KINDS
from tests.reliability.outcomes import Model
from tests.reliability.root import LORAS, MAIN, request
from tests.reliability.stress import DTYPES, Rig

SEQUENCES_PER_DTYPE = 10


@pytest.mark.timeout(240)
@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_random_sequences_restore_bit_exactly(dtype):
    rig = Rig.build(dtype, seed=len(dtype))
    rng = random.Random(f"restore/{dtype}")
    ops = Counter()
    for _ in range(SEQUENCES_PER_DTYPE):
        ops += rig.run_sequence(rng, length=4)
    assert set(rig.kinds) == set(KINDS), "every layer kind is in the pool"
    assert {"set", "set_bad", "raise_inside", "nested"} <= set(ops)


def _loaded(mm: ModelManager) -> Model:
    """The cached model's weights as loaded (earlier tests may have left a stack applied)."""
    patcher = cache_for(mm).model(mm.get(MAIN, type="main")).patcher
    patcher.restore()
    return Model.of(dict(patcher.components))


@pytest.mark.timeout(240)
def test_cancelled_generations_restore_the_loaded_weights(sd1_root):
    model = _loaded(sd1_root)
    rng = random.Random("cancel")
    for attempt in range(2):
        stack = [(n, rng.choice([-1.0, 0.5, 1.2])) for n in rng.sample(LORAS, rng.randint(1, 3))]
        if attempt % 2:  # a finished generation leaves its stack applied; cancel must undo all
            generate(request([(LORAS[attempt], 0.7)]), manager=sd1_root)
        cancel = threading.Event()
        at = rng.randint(1, 2)

        def on_step(event, at=at, cancel=cancel):
            if event.step >= at:
                cancel.set()

        with pytest.raises(GenerationCancelled):
            generate(request(stack), manager=sd1_root, progress=on_step, cancel=cancel)
        model.assert_untouched(f"cancel #{attempt} at step {at} with {stack}")
