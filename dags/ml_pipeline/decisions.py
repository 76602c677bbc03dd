"""The pipeline's decisions, as plain functions: which trial wins, and whether it is promoted."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

DEPLOY_TASK_ID = "deploy_model"
SKIP_TASK_ID = "skip_deployment"

# Comparisons of metrics read back from JSON and MLflow tolerate float round-off.
_EPSILON = 1e-9


class NoSuccessfulTrialError(RuntimeError):
    """No hyperparameter trial produced a usable result."""


def _metric_of(result: Mapping[str, Any], metric: str) -> float | None:
    value = result.get(metric)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def select_best_trial(
    results: Iterable[Mapping[str, Any]] | None, metric: str, greater_is_better: bool = True
) -> dict[str, Any]:
    """The successful trial with the best ``metric``: the highest, or the lowest when not
    ``greater_is_better`` (ties: lower loss, then lower trial id).

    ``results`` are the xcom values of the trials that succeeded; a result without a finite
    ``metric`` is ignored. Raises NoSuccessfulTrialError when nothing usable is left.
    """
    received = [dict(result) for result in results or () if result]
    usable = [result for result in received if _metric_of(result, metric) is not None]
    if not usable:
        raise NoSuccessfulTrialError(
            f"none of the hyperparameter trials succeeded: {len(received)} result(s) received, "
            f"none with a finite {metric!r}. Read the logs of hyperparameter_tuning.train_trial "
            "(diverged trials exit 4, pods that could not be scheduled stay Pending)."
        )

    def rank(result: dict[str, Any]) -> tuple[float, float, str]:
        score = _metric_of(result, metric) or 0.0
        loss = _metric_of(result, "loss")
        return (
            -score if greater_is_better else score,
            math.inf if loss is None else loss,
            str(result.get("trial_id", "")),
        )

    return min(usable, key=rank)


UNCHANGED = "unchanged"
# The deploy pod's exit code when the champion moved since the evaluation (the trainer's
# EXIT_STALE_EVALUATION; a unit test keeps the two equal): a retry would only repeat it.
STALE_EVALUATION_EXIT_CODE = 6
# The deploy pod's exit code when the version fails the canary (EXIT_UNSERVABLE): not retried.
UNSERVABLE_EXIT_CODE = 7


@dataclass(frozen=True)
class PromotionDecision:
    """Whether the candidate replaces the champion, and why, in words for people.

    ``unchanged``: the candidate already is the champion (a cleared or re-run run that had
    promoted it), so there is nothing to deploy and nothing to reject.
    """

    deploy: bool
    reason: str
    unchanged: bool = False

    @property
    def name(self) -> str:
        """``deploy``, ``skip`` or ``unchanged``: evaluate_model's ``decision``."""
        return UNCHANGED if self.unchanged else "deploy" if self.deploy else "skip"

    @property
    def branch(self) -> str:
        """The task id the deployment_decision branch follows."""
        return DEPLOY_TASK_ID if self.deploy else SKIP_TASK_ID


def already_champion(
    *,
    champion_version: str | None,
    champion_run_id: str | None,
    candidate_run_id: str,
    versions_of_this_run: Iterable[str],
    champion_trial_id: str | None = None,
    candidate_trial_id: str | None = None,
) -> PromotionDecision | None:
    """The no-op decision when the candidate already is the champion, else None.

    It is, when the champion was registered from the candidate's own MLflow run, or by this
    same DAG run from the same trial (a run cleared as a whole retrains its seeded trials, so
    its new best trial is another MLflow run of the same candidate). Comparing it with itself
    would reject the live champion. Another trial of this run winning now (a failed trial
    cleared and trained again) is a new candidate, compared as usual.
    """
    if champion_version is None:
        return None
    if champion_run_id == candidate_run_id:
        why = "was registered from this candidate's MLflow run"
    elif champion_version in set(versions_of_this_run) and champion_trial_id == candidate_trial_id:
        why = "was promoted by this DAG run, which ran again"
    else:
        return None
    return PromotionDecision(
        False,
        f"v{champion_version} is already the champion: it {why}",
        unchanged=True,
    )


@dataclass(frozen=True)
class Threshold:
    """When a candidate is good enough, in the shape of MLflow's ``MetricThreshold``.

    ``threshold``: the candidate's score must reach it (at least it when greater is better, at
    most it otherwise). ``min_absolute_change`` and ``min_relative_change``: how much better
    than the champion's score, on the same data, the candidate must be.
    """

    metric: str
    threshold: float
    min_absolute_change: float
    min_relative_change: float = 0.0
    greater_is_better: bool = True


def decide_promotion(
    *,
    rule: Threshold,
    candidate: Mapping[str, float],
    champion: Mapping[str, float] | None,
    champion_version: str | None,
) -> PromotionDecision:
    """Deploy when, on every evaluation set, the candidate reaches the threshold and beats the
    champion's score on that same set by the absolute and the relative change.

    ``candidate`` and ``champion`` map each evaluation set (``today``, ``reference``) to the
    model's score on it; ``champion`` None: there is no champion, and the threshold decides.
    """
    if not candidate:
        raise ValueError("no evaluation set was scored: nothing to decide on")
    if champion is not None and set(champion) != set(candidate):
        raise ValueError(
            f"the candidate was scored on {sorted(candidate)} but the champion on "
            f"{sorted(champion)}: the two must be scored on the same sets"
        )
    sign = 1.0 if rule.greater_is_better else -1.0
    metric = rule.metric
    failures, passes = [], []
    for name, score in candidate.items():
        if sign * (score - rule.threshold) < -_EPSILON:
            bound = "floor" if rule.greater_is_better else "ceiling"
            failures.append(
                f"candidate {metric} {score:.4f} on {name} misses the {bound} {rule.threshold:.4f}"
            )
            continue
        if champion is None:
            passes.append(f"candidate {metric} {score:.4f} on {name} clears {rule.threshold:.4f}")
            continue
        theirs = champion[name]
        gain = sign * (score - theirs)
        relative = gain / abs(theirs) if theirs else math.copysign(math.inf, gain) if gain else 0.0
        both = (
            f"on {name}: candidate {metric} {score:.4f} vs champion v{champion_version} "
            f"{theirs:.4f} ({gain:+.4f}"
            + (f", {relative:+.2%}" if math.isfinite(relative) else "")
            + ")"
        )
        if gain < rule.min_absolute_change - _EPSILON:
            failures.append(f"{both} is short of the margin {rule.min_absolute_change:.4f}")
        elif relative < rule.min_relative_change - _EPSILON:
            failures.append(
                f"{both} is short of the relative margin {rule.min_relative_change:.2%}"
            )
        else:
            passes.append(both)
    if failures:
        return PromotionDecision(False, "; ".join(failures))
    if champion is None:
        return PromotionDecision(True, "no champion yet; " + "; ".join(passes))
    return PromotionDecision(True, "better than the champion " + "; ".join(passes))
