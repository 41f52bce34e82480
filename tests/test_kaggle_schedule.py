"""The scheduler's decision over data (roadtop.kaggle.schedule): states, and push / wait / fail, with no HTTP."""

from kagglesdk.kernels.types.kernels_enums import KernelWorkerStatus

from roadtop.kaggle.schedule import (ENDED_BADLY, Action, Candidate, Decision, KernelState, asks_datasets, decide, pack_runs,
                                     running_repushes, state_of, too_long)

S = KernelState


def test_every_kaggle_worker_status_has_a_state_and_only_the_running_ones_hold_a_session():
    assert {s.name for s in KernelWorkerStatus} <= set(KernelState.__members__)
    assert {s for s in S if s.holds_session} == {S.NEW_SCRIPT, S.QUEUED, S.RUNNING, S.CANCEL_REQUESTED}
    assert {s for s in S if s.bad} == {S.ERROR, S.CANCEL_ACKNOWLEDGED, S.RUN_FAILED} == ENDED_BADLY
    assert state_of("FAILED") is S.RUN_FAILED  # a push record written before the rename
    assert state_of(KernelWorkerStatus.NEW_SCRIPT) is S.NEW_SCRIPT and state_of("running") is S.RUNNING
    assert S.CANCEL_ACKNOWLEDGED.why == "cancelled on Kaggle"


def test_gpu_kernels_wait_for_a_free_session_counting_the_pushes_it_decides():
    todo = [Candidate(f"train/{i}", gpu=True) for i in range(3)] + [Candidate("collab")]
    d = decide(todo, {}, {}, busy=1, cap=2)
    assert d["train/0"] == Decision(Action.PUSH)
    assert d["train/1"].action is d["train/2"].action is Action.WAIT
    assert d["train/1"].why == "GPU sessions busy (2 of 2)"
    assert d["collab"].action is Action.PUSH  # a CPU kernel takes no GPU session


def test_once_kaggle_refused_a_gpu_push_as_over_its_sessions_every_gpu_kernel_waits_cpu_ones_go():
    todo = [Candidate("train/0", gpu=True), Candidate("collab")]
    d = decide(todo, {}, {}, busy=0, cap=2, kaggle_full=True)
    assert d["train/0"] == Decision(Action.WAIT, "Kaggle: GPU sessions busy") and d["collab"].action is Action.PUSH


def test_a_kernel_waits_for_its_sources_until_complete_and_fails_when_one_ended_badly():
    ens = Candidate("ensemble", needs=("train/a", "train/b"))
    for st in (S.QUEUED, S.NEW_SCRIPT, S.RUNNING, S.CANCEL_REQUESTED):
        d = decide([ens], {"train/a": S.COMPLETE, "train/b": st}, {}, 0, 2)["ensemble"]
        assert d == Decision("wait", "needs train/b"), st
    d = decide([ens], {"train/a": S.COMPLETE, "train/b": S.CANCEL_ACKNOWLEDGED}, {}, 0, 2)["ensemble"]
    assert d.action == "fail" and d.why == "train/b ended in CANCEL_ACKNOWLEDGED on Kaggle"
    assert decide([ens], {"train/a": S.COMPLETE, "train/b": S.COMPLETE}, {}, 0, 2)["ensemble"].action == "push"
    d = decide([Candidate("train/b", gpu=True), ens], {"train/a": S.COMPLETE}, {}, 0, 2, failed={"train/b"})
    assert d["ensemble"] == Decision("fail", "train/b could not be pushed")


def test_a_dataset_that_failed_or_was_deleted_fails_at_once_one_still_processing_waits():
    c = Candidate("train/a", gpu=True, datasets=("me/w",))
    for status in ("failed", "deleted"):
        d = decide([c], {}, {"me/w": status}, 0, 2)["train/a"]
        assert d.action == "fail" and d.why == f"dataset me/w is {status.upper()} on Kaggle"
        assert d.fix == "upload it again with `pipeline.py kaggle weights FOLDER --dataset me/w`"
    assert decide([c], {}, {"me/w": "blobs_received"}, 0, 2)["train/a"].action == "wait"
    assert decide([c], {}, {"me/w": "missing"}, 0, 2)["train/a"].why == "dataset me/w does not exist on Kaggle"
    assert decide([c], {}, {"me/w": "ready"}, 0, 2)["train/a"].action == "push"


def test_an_up_to_date_kernel_is_skipped_unless_forced_or_a_run_it_reads_is_sent_again():
    c = Candidate("train/a", gpu=True, current=True)
    assert decide([c], {}, {}, 0, 2)["train/a"].action is Action.SKIP
    assert decide([c], {}, {}, 0, 2, force=True)["train/a"].action is Action.PUSH
    ens = Candidate("ensemble", needs=("train/a",), current=True)
    assert decide([ens], {"train/a": S.RUNNING}, {}, 0, 2)["ensemble"].action is Action.SKIP  # as recorded
    d = decide([Candidate("train/a", gpu=True), ens], {"train/a": S.COMPLETE}, {}, 0, 2)
    assert d["ensemble"] == Decision(Action.WAIT, "needs train/a")  # its source gets a new version first


def test_datasets_are_asked_about_only_once_every_run_read_is_complete():
    c = Candidate("ensemble", needs=("train/a",), datasets=("me/w",))
    assert not asks_datasets(c, [Candidate("train/a"), c], {"train/a": S.COMPLETE})  # still to send
    assert not asks_datasets(c, [c], {"train/a": S.RUNNING})
    assert asks_datasets(c, [c], {"train/a": S.COMPLETE})


def test_a_kernel_whose_version_holds_a_session_is_a_running_repush():
    state = {"kernels": {"a": {"status": "RUNNING"}, "b": {"status": "CANCEL_REQUESTED"},
                         "c": {"status": "COMPLETE"}, "d": {"status": "NEW_SCRIPT"}}}
    assert running_repushes(["a", "b", "c", "d", "e"], state) == ["a", "b", "d"]


def test_packs_put_the_longest_runs_together_and_flag_one_longer_than_a_session():
    secs = {"a": 3.0, "b": 9.0, "c": float("nan"), "d": 8.0, "e": 1.0}
    packs, problems = pack_runs(secs, 2, session_s=10.0)
    assert packs == [("b", "d"), ("a", "e"), ("c",)] and problems == []  # unmeasured last, in plan order
    assert pack_runs(secs, 1, 10.0)[0] == [("b",), ("d",), ("a",), ("e",), ("c",)]
    _, problems = pack_runs({"a": 3.0, "b": 7.2 * 3600}, 2, session_s=6 * 3600)
    assert problems == ["pack b, a needs est. 7.20 h, more than one 6 h session"]




def test_a_kernel_is_too_long_by_its_longest_measured_run():
    secs = {"a": 5.0 * 3600, "b": float("nan"), "c": None, "d": 13.0 * 3600}
    assert too_long({"pack1": ("a", "b"), "pack2": ("c",), "pack3": ("a", "d")}, secs, 12 * 3600) == [
        "pack3 needs est. 13.00 h, more than one 12 h session"]
