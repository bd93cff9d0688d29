import math

import pytest

from trajgen.spec import (ARCHS, LR_RANGE, OPTIMIZERS, OptimSpec, RunSpec, SpecError, draw_run,
                          parse_choices)


def test_draw_run_is_a_pure_function_of_seed_and_index():
    assert draw_run(3, 7) == draw_run(3, 7)
    assert draw_run(3, 7) != draw_run(4, 7)
    assert draw_run(3, 7).seed != draw_run(3, 8).seed


def test_json_round_trip_keeps_every_field():
    for i in range(12):
        spec = draw_run(0, i)
        assert RunSpec.from_json(spec.to_json()) == spec
        assert RunSpec.from_dict(spec.to_dict()) == spec


def test_draws_vary_and_stay_in_range():
    specs = [draw_run(0, i) for i in range(300)]
    assert {s.optim.name for s in specs} == set(OPTIMIZERS)
    assert {s.arch.family for s in specs} == set(ARCHS)
    assert len({s.init for s in specs}) > 1 and len({s.batch_size for s in specs}) > 1
    for s in specs:
        lo, hi = LR_RANGE[s.optim.name]
        assert lo <= s.optim.lr <= hi
        assert (s.optim.momentum > 0) == (s.optim.name in ("momentum", "nesterov"))


def test_architectures_cycle_in_the_given_order():
    assert [draw_run(0, i, archs=("cnn", "vit")).arch.family for i in range(4)] == ["cnn", "vit"] * 2


def test_snapshot_count_includes_step_zero():
    assert draw_run(0, 0, steps=512, every=4).n_snapshots == 129
    assert draw_run(0, 0, steps=10, every=3).n_snapshots == 4


def test_parse_choices_names_the_valid_ones():
    assert parse_choices("architecture", "cnn, vit", ARCHS) == ("cnn", "vit")
    with pytest.raises(SpecError, match="unknown architecture 'resnet'; valid: mlp, cnn, vit"):
        parse_choices("architecture", "cnn,resnet", ARCHS)
    with pytest.raises(SpecError, match="no optimizer"):
        parse_choices("optimizer", " , ", OPTIMIZERS)


def test_invalid_specs_are_refused():
    with pytest.raises(SpecError, match="unknown optimizer"):
        OptimSpec("lbfgs", 0.1, 0.0, "constant")
    with pytest.raises(SpecError, match="positive"):
        OptimSpec("sgd", math.nan, 0.0, "constant")
    with pytest.raises(SpecError, match="every"):
        draw_run(0, 0, steps=4, every=8)
