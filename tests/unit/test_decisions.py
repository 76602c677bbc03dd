"""Which trial wins, and whether it replaces the champion."""

import math

import pytest

from ml_pipeline.decisions import (
    DEPLOY_TASK_ID,
    SKIP_TASK_ID,
    NoSuccessfulTrialError,
    Threshold,
    already_champion,
    decide_promotion,
    select_best_trial,
)


def trial(trial_id, accuracy, loss=0.3):
    return {"trial_id": str(trial_id), "accuracy": accuracy, "f1": accuracy, "loss": loss}


def test_best_of_the_successful_trials_wins():
    # Failed trials never reach the reduce; a diverged one may report nan.
    results = [trial(0, 0.81), trial(2, 0.93), trial(3, math.nan), trial(4, 0.90)]
    assert select_best_trial(results, "accuracy")["trial_id"] == "2"


def test_ties_go_to_the_lower_loss_then_the_lower_trial_id():
    assert (
        select_best_trial([trial(1, 0.9, 0.4), trial(2, 0.9, 0.2)], "accuracy")["trial_id"] == "2"
    )
    assert select_best_trial([trial(5, 0.9), trial(3, 0.9)], "accuracy")["trial_id"] == "3"


def test_a_lower_is_better_metric_picks_the_lowest():
    results = [trial(0, 0.9, loss=0.4), trial(1, 0.8, loss=0.2)]
    assert select_best_trial(results, "loss", greater_is_better=False)["trial_id"] == "1"


def test_metric_is_selectable():
    results = [{**trial(0, 0.9), "f1": 0.5}, {**trial(1, 0.8), "f1": 0.7}]
    assert select_best_trial(results, "f1")["trial_id"] == "1"


@pytest.mark.parametrize("results", [[], None, [None], [trial(0, math.inf)], [{"trial_id": "0"}]])
def test_no_usable_trial_is_a_clear_error(results):
    with pytest.raises(NoSuccessfulTrialError, match="none of the hyperparameter trials succeeded"):
        select_best_trial(results, "accuracy")


def as_sets(value):
    return value if isinstance(value, dict) else {"today": value}


def decide(candidate, champion=None, floor=0.8, margin=0.01, relative=0.0, greater=True):
    return decide_promotion(
        rule=Threshold("accuracy" if greater else "loss", floor, margin, relative, greater),
        candidate=as_sets(candidate),
        champion=None if champion is None else as_sets(champion),
        champion_version="3" if champion is not None else None,
    )


def test_first_model_clearing_the_floor_is_deployed():
    decision = decide(0.85)
    assert decision.deploy and decision.branch == DEPLOY_TASK_ID
    assert "no champion yet" in decision.reason


def test_first_model_below_the_floor_is_not_deployed():
    decision = decide(0.79)
    assert not decision.deploy and decision.branch == SKIP_TASK_ID
    assert "misses the floor 0.8000" in decision.reason


def test_beating_the_champion_by_the_margin_deploys():
    assert decide(0.92, champion=0.90).deploy


def test_exactly_the_margin_deploys_despite_float_round_off():
    # 0.91 - 0.90 is 0.010000000000000009 or 0.00999999999999998 depending on the values.
    assert decide(0.91, champion=0.90).deploy
    assert decide(0.3, champion=0.29, floor=0.0).deploy


def test_better_but_within_the_margin_is_skipped():
    decision = decide(0.905, champion=0.90)
    assert not decision.deploy
    assert "short of the margin 0.0100" in decision.reason


def test_regressed_model_is_skipped_and_the_reason_names_both_scores():
    decision = decide(0.82, champion=0.90)
    assert not decision.deploy
    assert "candidate accuracy 0.8200 vs champion v3 0.9000 (-0.0800" in decision.reason


def test_the_floor_applies_even_when_beating_the_champion():
    assert not decide(0.75, champion=0.60).deploy


def test_the_relative_change_is_required_too():
    # +0.02 over 0.80 is +2.5%: enough for a 2% relative change, not for 3%.
    assert decide(0.82, champion=0.80, floor=0.5, relative=0.02).deploy
    decision = decide(0.82, champion=0.80, floor=0.5, relative=0.03)
    assert not decision.deploy and "relative margin 3.00%" in decision.reason


def test_lower_is_better_metrics_compare_the_other_way():
    # A loss: the floor is a ceiling, and improving means going down.
    assert decide(0.30, champion=0.40, floor=0.5, margin=0.05, greater=False).deploy
    decision = decide(0.38, champion=0.40, floor=0.5, margin=0.05, greater=False)
    assert not decision.deploy and "(+0.0200" in decision.reason
    assert "misses the ceiling" in decide(0.6, floor=0.5, greater=False).reason


def test_every_evaluation_set_must_agree():
    better_today_worse_on_reference = decide(
        {"today": 0.95, "reference": 0.85}, champion={"today": 0.90, "reference": 0.90}
    )
    assert not better_today_worse_on_reference.deploy
    assert "on reference" in better_today_worse_on_reference.reason
    assert decide(
        {"today": 0.95, "reference": 0.93}, champion={"today": 0.90, "reference": 0.90}
    ).deploy


def test_a_candidate_from_the_champions_own_mlflow_run_changes_nothing():
    decision = already_champion(
        champion_version="3",
        champion_run_id="run-a",
        candidate_run_id="run-a",
        versions_of_this_run=[],
    )
    assert decision is not None and decision.unchanged and not decision.deploy
    assert decision.name == "unchanged" and decision.branch == SKIP_TASK_ID
    assert "v3 is already the champion" in decision.reason


def test_a_champion_promoted_by_this_dag_run_changes_nothing_after_a_retrain():
    # A whole run cleared: the trials retrained, so the best trial is another MLflow run.
    decision = already_champion(
        champion_version="3",
        champion_run_id="run-a",
        candidate_run_id="run-b",
        versions_of_this_run=["3"],
        champion_trial_id="1",
        candidate_trial_id="1",
    )
    assert decision is not None and "promoted by this DAG run" in decision.reason


@pytest.mark.parametrize(
    ("champion_version", "versions_of_this_run"), [(None, ["1"]), ("3", ["1", "2"])]
)
def test_another_champion_or_none_is_compared_as_usual(champion_version, versions_of_this_run):
    assert (
        already_champion(
            champion_version=champion_version,
            champion_run_id="run-a",
            candidate_run_id="run-b",
            versions_of_this_run=versions_of_this_run,
        )
        is None
    )


def test_another_trial_of_this_run_winning_after_a_clear_is_a_new_candidate():
    # A failed trial was cleared and trained again, and now it wins: compare it as usual.
    decision = already_champion(
        champion_version="3",
        champion_run_id="run-a",
        candidate_run_id="run-c",
        versions_of_this_run=["3"],
        champion_trial_id="0",
        candidate_trial_id="2",
    )
    assert decision is None


def test_the_stale_exit_code_is_the_trainers():
    from ml_pipeline.decisions import STALE_EVALUATION_EXIT_CODE
    from trainer.errors import EXIT_STALE_EVALUATION

    assert STALE_EVALUATION_EXIT_CODE == EXIT_STALE_EVALUATION


def test_a_champion_scoring_zero_needs_a_real_gain_for_the_relative_change():
    tie = decide(0.0, champion=0.0, floor=0.0, margin=0.0, relative=0.05)
    assert not tie.deploy and "relative margin" in tie.reason
    assert decide(0.1, champion=0.0, floor=0.0, margin=0.0, relative=0.05).deploy


def test_nothing_scored_or_different_sets_is_an_error_not_a_deploy():
    with pytest.raises(ValueError, match="no evaluation set was scored"):
        decide({})
    with pytest.raises(ValueError, match="must be scored on the same sets"):
        decide({"today": 0.9, "reference": 0.9}, champion={"today": 0.8})
