from __future__ import annotations

import pytest

from viadk8s.errors import SpecError
from viadk8s.spec import RunSpec, Variant

BASE = dict(sweep="evaluation", experiment="evaluation", model="patchcore", dataset="btad", category="01", seed=3341)


def test_run_key_is_stable_and_pinned() -> None:
    """The key of a fixed spec is pinned: a change here orphans every stored result (protocol 2 did
    so on purpose: protocol 1's metrics were partly computed on sigmoid-squashed scores; protocol 3
    because images are now resized before they are scaled to float)."""
    spec = RunSpec(**BASE)
    assert spec.run_key == RunSpec.from_json(spec.to_json()).run_key
    assert spec.run_key == "7c2802848d10597b"


def test_run_key_ignores_sweep_but_not_settings() -> None:
    spec = RunSpec(**BASE)
    assert spec.run_key == RunSpec(**{**BASE, "sweep": "other"}).run_key
    changed = [
        RunSpec(**{**BASE, "seed": 1954}),
        RunSpec(**{**BASE, "image_size": 512}),
        RunSpec(**{**BASE, "weights": "random"}),
        RunSpec(**BASE, variant=Variant(contamination=0.04)),
    ]
    assert len({spec.run_key, *(c.run_key for c in changed)}) == 5


def test_run_name_is_the_authors() -> None:
    assert RunSpec(**BASE).run_name == "patchcore_btad_01_seed3341"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "invalid run spec"),
        ('{"sweep": "x"}', "experiment: Field required"),
        (
            '{"sweep":"Bad_Sweep","experiment":"evaluation","model":"patchcore","dataset":"d","category":"c","seed":1}',
            "sweep id 'Bad_Sweep'",
        ),
        (
            '{"sweep":"s","experiment":"nope","model":"patchcore","dataset":"d","category":"c","seed":1}',
            "unknown experiment 'nope'; allowed: evaluation",
        ),
        (
            '{"sweep":"s","experiment":"evaluation","model":"resnet","dataset":"d","category":"c","seed":1}',
            "unknown model 'resnet'",
        ),
        (
            '{"sweep":"s","experiment":"evaluation","model":"padim","dataset":"d","category":"c","seed":1,"image_size":100}',
            "multiples of 32",
        ),
        (
            '{"sweep":"s","experiment":"evaluation","model":"padim","dataset":"d","category":"c","seed":1,"extra":1}',
            "extra: Extra inputs",
        ),
    ],
)
def test_bad_spec_is_one_clear_line(text: str, message: str) -> None:
    with pytest.raises(SpecError) as err:
        RunSpec.from_json(text)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_contamination_outside_range_is_rejected() -> None:
    with pytest.raises(ValueError, match="less than 0.5"):
        Variant(contamination=0.5)
