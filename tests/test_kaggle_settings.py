"""The plan's `kaggle:` section (roadtop.kaggle.settings): defaults, refusals, internet, slugs and titles."""

from types import SimpleNamespace
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
pytest.register_assert_rewrite("fake_kaggle")  # its helpers assert too
from fake_kaggle import ref  # noqa: E402
from slugify import slugify as kaggle_slugify  # noqa: E402  # the slugify `kaggle kernels push` checks titles with

from roadtop.errors import RoadtopError  # noqa: E402
from roadtop.kaggle import kernels, settings  # noqa: E402

pytest_plugins = ["fake_kaggle"]


def test_unknown_keys_and_wrong_types_are_one_line_naming_the_key(tmp_path):
    def st(**kw):
        return settings.settings(SimpleNamespace(kaggle=kw, source=tmp_path / "p.yaml", name="My Plan"))

    with pytest.raises(RoadtopError, match=r"p.yaml: kaggle.gpu is unknown: use one of competition, "):
        st(gpu=True)
    with pytest.raises(RoadtopError, match=r"p.yaml: kaggle.max_gpu_sessions='2' should be int: fix it in the plan"):
        st(max_gpu_sessions="2")
    with pytest.raises(RoadtopError, match=r"kaggle.is_private=1 should be bool"):
        st(is_private=1)
    with pytest.raises(RoadtopError, match=r"dataset 'no-owner' should be owner/slug"):
        st(weights_dataset="no-owner")
    with pytest.raises(RoadtopError, match=r"kaggle.max_gpu_sessions=0 should be 1 or more"):
        st(max_gpu_sessions=0)
    s = st(weekly_gpu_hours=20, username=None)
    assert s.weekly_gpu_hours == 20 and s.username == "" and s.slug_prefix == "roadtop-my-plan"
    assert settings.kaggle_dir(SimpleNamespace(out_dir=tmp_path, name="My Plan")) == tmp_path / "kaggle" / "my-plan"


def test_a_code_competition_needs_the_predict_section(plan):
    plan.kaggle["code_competition"] = True
    with pytest.raises(RoadtopError, match=r"kaggle.code_competition: Kaggle reruns .* add a `predict: \{\}` section"):
        settings.settings(plan)


def test_a_retired_accelerator_is_refused_saying_what_kaggle_would_run(plan):
    from kaggle.api import kaggle_api_extended

    assert settings.RETIRED_ACCELERATORS == kaggle_api_extended._RETIRED_ACCELERATORS  # the client's own table
    plan.kaggle["accelerator"] = "NvidiaTeslaP100"
    with pytest.raises(RoadtopError, match=r"kdemo.yaml: kaggle.accelerator=NvidiaTeslaP100 is retired on Kaggle: "
                       r"Sessions run on the default GPU \(NvidiaTeslaT4\) instead. Set kaggle.accelerator"):
        settings.settings(plan)


def test_slugs_are_kaggle_slugs_whose_titles_map_back():
    for run in ("train/convnext_large_in22k-(320,224)", "ensemble", "train/" + "x" * 80):
        s = settings.kernel_slug("roadtop-real", run)
        assert 5 <= len(s) <= 50 and kaggle_slugify(settings.kernel_title(s)) == s



@pytest.mark.parametrize("value,on", [(True, True), (False, False), ("auto", True), ("yes", None)])
def test_internet_setting(plan, value, on):
    plan.kaggle["internet"] = value
    if on is None:
        with pytest.raises(RoadtopError, match=r"kaggle.internet='yes' should be auto, true or false"):
            settings.settings(plan)
        return
    st = settings.settings(plan)
    assert settings.internet_on(st)[0] is on
    meta = kernels.kernel_metadata(plan.job("train/resnet"), st, ref("train/resnet"), "s-lug", [])
    assert meta["enable_internet"] is on


def test_gpus_per_session_follows_the_accelerator_unless_set(tmp_path):
    def st(**kw):
        return settings.settings(SimpleNamespace(kaggle=kw, source=tmp_path / "p.yaml", name="p"))

    assert st().gpus_per_session == 2  # NvidiaTeslaT4: "GPU T4 x2"
    assert st(accelerator="NvidiaL4").gpus_per_session == 1 and st(gpus_per_session=1).gpus_per_session == 1
    with pytest.raises(RoadtopError, match="gpus_per_session=-1 should be 0"):
        st(gpus_per_session=-1)
    with pytest.raises(RoadtopError, match=r"gpus_per_session=4 is more than the 2 GPUs a NvidiaTeslaT4 session has: "
                                           r"set 0 \(the accelerator's\) or at most 2$"):
        st(gpus_per_session=4)
    assert st(accelerator="NvidiaL4", gpus_per_session=4).gpus_per_session == 4  # a shape we know no count of
