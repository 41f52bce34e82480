"""The stage table (roadtop.dag.stages): one declaration that the planner, runner, budget and status read."""

import pytest

from roadtop.dag import stages
from roadtop.paths import NOTEBOOKS


def test_every_stage_has_its_notebook_and_upstream_comes_first():
    for k, (name, st) in enumerate(stages.STAGES.items()):
        assert st.name == name and (NOTEBOOKS / st.notebook).exists()
        assert all(stages.ORDER.index(u) < k for u in st.upstream), name


def test_names_selects_by_field_in_table_order():
    assert stages.names(trains=True) == ("train", "multitarget")
    assert stages.names(member=True) == stages.names(trains=True)
    assert stages.names(measures=True) == ("probe",)
    assert stages.names(paddy=False) == ("collab",)
    assert stages.names(trains=True, many=True) == ("train",)


def test_ensembles_is_reading_member_stages():
    assert [n for n, s in stages.STAGES.items() if s.ensembles] == ["ensemble"]
    assert stages.stage("ensemble").publishes == ("submission.csv",)


def test_unknown_stage_names_the_known_ones():
    with pytest.raises(KeyError, match="unknown stage 'trian': the stages are probe, train, multitarget"):
        stages.stage("trian")
