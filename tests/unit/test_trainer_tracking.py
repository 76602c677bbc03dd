"""A trial's run lands in its experiment, also when parallel trials race to create it."""

from mlflow import MlflowClient

from trainer import tracking


def test_the_loser_of_the_creation_race_logs_into_the_winners_experiment(local_mlflow, monkeypatch):
    client = MlflowClient()
    winners = client.create_experiment("unit-race")
    looked_up = MlflowClient.get_experiment_by_name
    lookups = []

    def not_there_at_first(self, name):
        # The loser looks before the winner's creation is visible, then creates: it exists.
        lookups.append(name)
        return None if len(lookups) == 1 else looked_up(self, name)

    monkeypatch.setattr(MlflowClient, "get_experiment_by_name", not_there_at_first)

    with tracking.trial_run("unit-race", "trial-1", {"seed": 7}, {"trial_id": "1"}) as run_id:
        pass

    assert lookups == ["unit-race", "unit-race"]
    run = client.get_run(run_id)
    assert run.info.experiment_id == winners
    assert run.info.status == "FINISHED"
    assert run.data.tags["trial_id"] == "1"


def test_a_new_experiment_is_created_once(local_mlflow):
    first = tracking.experiment_id_for("unit-new")
    assert tracking.experiment_id_for("unit-new") == first
    assert MlflowClient().get_experiment_by_name("unit-new").experiment_id == first
