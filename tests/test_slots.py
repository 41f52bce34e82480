"""Which job starts now and on which card, and why the others wait: `decide` on plain data, one test per outcome;
`--gpus` read into cards (or one clear line); the environment a job on a card gets."""

from types import SimpleNamespace

import pytest

from roadtop.dag.slots import ONE_SLOT, Decision, decide, job_env, parse_gpus, parse_jobs, slot_label
from roadtop.errors import RoadtopError


def jobs(**needs):
    """Plan-ordered jobs with the names and upstream jobs given: jobs(a=(), e=("a",))."""
    return [SimpleNamespace(name=n, needs=tuple(d)) for n, d in needs.items()]


PLAN = jobs(a=(), b=(), c=(), e=("a", "b", "c"))  # three runs and the ensemble of them
CARDS = ("0", "1")


def test_the_first_job_that_may_start_gets_the_first_free_card():
    d = decide(PLAN, settled=set(), running={}, cards=CARDS)
    assert d.start == ("a", "0")
    assert decide(PLAN, set(), {"a": "0"}, CARDS).start == ("b", "1")


def test_a_freed_card_goes_to_the_next_job_in_plan_order():
    d = decide(PLAN, settled={"a"}, running={"b": "1"}, cards=CARDS)
    assert d.start == ("c", "0")


def test_with_every_card_busy_nothing_starts_and_the_ready_job_waits_for_a_card():
    d = decide(PLAN, settled=set(), running={"a": "0", "b": "1"}, cards=CARDS)
    assert d.start is None
    assert d.waits["c"] == "waits for a free card (a on card 0, b on card 1)"


def test_a_job_waits_for_the_upstream_jobs_running_and_those_not_started():
    d = decide(PLAN, settled=set(), running={"a": "0", "b": "1"}, cards=CARDS)
    assert d.waits["e"] == "waits for a, b (running); c (not started)"
    d = decide(PLAN, settled={"a", "b"}, running={"c": "0"}, cards=CARDS)
    assert d.start is None and d.waits == {"e": "waits for c (running)"}  # a free card does not start it


def test_once_its_upstream_is_settled_the_ensemble_starts_even_if_a_run_failed():
    # settled means ran, skipped or failed: whether it may ensemble what there is is job_step's to say
    assert decide(PLAN, settled={"a", "b", "c"}, running={}, cards=CARDS) == Decision(("e", "0"), {})


def test_everything_settled_and_nothing_running_is_the_end():
    assert decide(PLAN, settled={"a", "b", "c", "e"}, running={}, cards=CARDS) == Decision(None, {})


def test_one_slot_runs_the_plan_in_order_one_job_at_a_time():
    settled, order = set(), []
    while (d := decide(PLAN, settled, {}, ONE_SLOT)).start:
        assert decide(PLAN, settled, {d.start[0]: None}, ONE_SLOT).start is None  # never a second at once
        order.append(d.start)
        settled.add(d.start[0])
    assert order == [("a", None), ("b", None), ("c", None), ("e", None)]


def test_parse_gpus_lists_auto_and_none():
    assert parse_gpus(None) == ONE_SLOT
    assert parse_gpus("0,1", visible=2) == ("0", "1")
    assert parse_gpus("1", visible=2) == ("1",)
    assert parse_gpus("auto", visible=3) == ("0", "1", "2")
    assert parse_gpus("0,1", visible=0) == ("0", "1")  # no CUDA: slots, each job still told its card
    assert parse_gpus("0,1", visible=2, cuda_visible="4,6") == ("4", "6")  # this process sees cards 4 and 6 as 0, 1


@pytest.mark.parametrize("value, visible, said", [
    ("0,x", 2, "--gpus 0,x: 'x' is not a card number: use numbers such as --gpus 0,1, or --gpus auto"),
    ("", 2, "--gpus : '' is not a card number"),
    ("0,0", 2, "--gpus 0,0: a card is listed twice"),
    ("0,2", 2, "--gpus 0,2: card 2 is not visible (torch sees 2: 0..1)"),
    ("auto", 0, "--gpus auto: no GPU is visible (torch.cuda.device_count() is 0)"),
])
def test_a_bad_gpus_value_is_one_line(value, visible, said):
    with pytest.raises(RoadtopError) as e:
        parse_gpus(value, visible)
    assert str(e.value).startswith(said) and "\n" not in str(e.value)


def test_a_job_on_a_card_sees_only_it_and_its_share_of_the_threads():
    env = {"PATH": "/bin", "OMP_NUM_THREADS": "8"}
    assert job_env(env, "1", ("0", "1"), cpus=16) == {"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "1",
                                                      "OMP_NUM_THREADS": "4"}
    assert job_env({}, "0", ("0", "1", "2"), cpus=16)["OMP_NUM_THREADS"] == "5"  # unset: the machine's CPUs
    assert job_env({"OMP_NUM_THREADS": "1"}, "0", CARDS, cpus=2)["OMP_NUM_THREADS"] == "1"  # never 0
    assert job_env(env, None, ONE_SLOT, cpus=16) == env  # one slot: the environment as it is


def test_jobs_are_slots_sharing_the_machine_named_apart_from_cards():
    assert parse_jobs("2") == ("cpu0", "cpu1") and parse_jobs(3) == ("cpu0", "cpu1", "cpu2")
    assert parse_jobs("1") == ONE_SLOT  # one job at a time: in this process, as without --jobs
    assert [slot_label(s) for s in ("cpu1", "1", None)] == ["cpu1", "card 1", ""]
    d = decide(PLAN, settled=set(), running={"a": "cpu0", "b": "cpu1"}, cards=("cpu0", "cpu1"))
    assert d.start is None and d.waits["c"] == "waits for a free slot (a on cpu0, b on cpu1)"
    assert decide(PLAN, settled={"a"}, running={"b": "cpu1"}, cards=("cpu0", "cpu1")).start == ("c", "cpu0")


@pytest.mark.parametrize("value", ["0", "x", "-2", "", "1.5", "²"])
def test_a_bad_jobs_value_is_one_line(value):
    with pytest.raises(RoadtopError) as e:
        parse_jobs(value)
    assert str(e.value).startswith(f"--jobs {value}: not a number of jobs (1 or more): use a whole number such as "
                                   f"--jobs 2")
    assert "\n" not in str(e.value)


def test_a_job_in_a_jobs_slot_sees_the_machines_cards_and_gets_its_share_of_the_threads():
    env = {"PATH": "/bin", "OMP_NUM_THREADS": "8", "CUDA_VISIBLE_DEVICES": "3"}
    assert job_env(env, "cpu1", ("cpu0", "cpu1"), cpus=16) == {**env, "OMP_NUM_THREADS": "4"}
    assert "CUDA_VISIBLE_DEVICES" not in job_env({}, "cpu0", ("cpu0", "cpu1"), cpus=2)
    assert job_env({}, "cpu0", ("cpu0", "cpu1"), cpus=2)["OMP_NUM_THREADS"] == "1"  # 2 cores, 2 jobs: one each
    assert job_env({"OMP_NUM_THREADS": "4,2"}, "cpu0", ("cpu0", "cpu1"), cpus=16)["OMP_NUM_THREADS"] == "2"  # a list


def test_given_expected_seconds_the_longest_job_that_may_start_goes_first():
    secs = {"a": 30.0, "b": 70.0, "c": 50.0}
    assert decide(PLAN, set(), {}, CARDS, secs).start == ("b", "0")
    assert decide(PLAN, set(), {"b": "0"}, CARDS, secs).start == ("c", "1")
    assert decide(PLAN, {"b"}, {"c": "1"}, CARDS, secs).start == ("a", "0")
    # without an estimate a job keeps plan order, after those with one; one still waits for its upstream jobs
    assert decide(PLAN, set(), {}, CARDS, {"c": 5.0}).start == ("c", "0")
    assert decide(PLAN, {"a", "b"}, {"c": "0"}, CARDS, {"e": 99.0}).start is None
