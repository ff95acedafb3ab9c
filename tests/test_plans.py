"""adaptive_jax.plans: plan types, validation with errors that name the problem, hashing, JSON."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adaptive_jax.models import ResNetSpec
from adaptive_jax.plans import BlockLayout, StaticBlockPlan, check_block_plan

R110 = BlockLayout.of(ResNetSpec(110))
R38 = BlockLayout.of(ResNetSpec(38))


def test_layout_of_a_resnet():
    assert R110.blocks_per_stage == (18, 18, 18) and R110.num_blocks == 54
    assert R38.num_blocks == 18 and R38.model == "resnet38"
    assert [(s.start, s.stop) for s in R38.stage_slices()] == [(0, 6), (6, 12), (12, 18)]
    with pytest.raises(ValueError, match="at least one block"):
        BlockLayout((3, 0, 3))


def test_valid_plans_pass_through():
    shared = np.ones(54, bool)
    per_sample = np.zeros((4, 54), bool)
    assert check_block_plan(shared, R110) is shared
    assert check_block_plan(per_sample, R110, batch_size=4) is per_sample
    # tracers are checked by shape and dtype only
    jax.jit(lambda p: check_block_plan(p, R110).sum())(jnp.asarray(per_sample))


@pytest.mark.parametrize("plan,error,match", [
    (np.ones(18, bool), ValueError, r"18 block bits, but resnet110 \(54 blocks: 18\+18\+18\) needs 54"),
    (np.ones((2, 3, 54), bool), ValueError, r"shape \(num_blocks,\) or \(batch, num_blocks\)"),
    (np.ones(54, np.float32), TypeError, "dtype bool.*got float32.*probs > 0.5"),
    (np.ones(54, np.int32), TypeError, "dtype bool"),
    ([True] * 54, TypeError, "array of bools, got list"),
])
def test_bad_plans_are_named(plan, error, match):
    with pytest.raises(error, match=match):
        check_block_plan(plan, R110)


def test_batch_mismatch_is_named():
    with pytest.raises(ValueError, match="3 rows for a batch of 4"):
        check_block_plan(np.ones((3, 54), bool), R110, batch_size=4)


def test_static_plan_is_hashable_and_round_trips():
    bits = np.random.default_rng(0).random(18) < 0.5
    plan = StaticBlockPlan.from_array(bits, R38)
    same = StaticBlockPlan.from_array(bits.copy(), R38)
    assert plan == same and hash(plan) == hash(same) and len({plan, same}) == 1
    assert StaticBlockPlan.from_json(plan.to_json()) == plan
    np.testing.assert_array_equal(plan.to_array(), bits)
    assert plan.fraction_active == pytest.approx(bits.mean())
    expected = tuple(tuple(np.flatnonzero(bits[s])) for s in R38.stage_slices())
    assert plan.active_in_stages() == expected


def test_static_plan_for_another_model_is_refused():
    plan = StaticBlockPlan(R38, (True,) * 18)
    with pytest.raises(ValueError, match=r"made for resnet38 \(18 blocks.*not for resnet110"):
        plan.check_for(R110)
    with pytest.raises(ValueError, match="18 block bits, but resnet110"):
        StaticBlockPlan.from_array(np.ones(18, bool), R110)
    with pytest.raises(ValueError, match="static plan has 17 block bits"):
        StaticBlockPlan(R38, (True,) * 17)
    with pytest.raises(TypeError, match="must hold bools"):
        StaticBlockPlan(R38, (1,) * 18)


def test_static_plan_needs_concrete_values():
    with pytest.raises(TypeError, match="needs a concrete plan"):
        jax.jit(lambda p: StaticBlockPlan.from_array(p, R38).fraction_active)(jnp.ones(18, bool))


@pytest.mark.parametrize("text", ["{", '{"active": "0101"}',
                                  '{"blocks_per_stage": [1, 1, 2], "active": "01x1"}'])
def test_corrupt_serialised_plan_is_named(text):
    with pytest.raises(ValueError, match="StaticBlockPlan|0 and 1"):
        StaticBlockPlan.from_json(text)
