"""The data contract of the training features: the schema and the rules ``validate`` enforces.

The single source of the schema: the trainer, the fixtures' data generator and the tests all
import the column names from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

N_FEATURES = 16
FEATURE_COLUMNS: tuple[str, ...] = tuple(f"f{index:02d}" for index in range(N_FEATURES))
LABEL_COLUMN = "label"
LABEL_VALUES = frozenset({0, 1})


@dataclass(frozen=True)
class ContractLimits:
    """The thresholds of the rules that are not about the schema."""

    min_rows: int = 500
    max_null_rate: float = 0.05
    min_label_fraction: float = 0.2


@dataclass(frozen=True)
class ContractReport:
    """What ``check_contract`` measured, and every rule the data broke (empty when valid)."""

    rows: int
    null_rate: float
    minority_label_fraction: float
    violations: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        """True when no rule was broken."""
        return not self.violations


def schema_violations(frame: pd.DataFrame) -> list[str]:
    """The schema rules ``frame`` breaks: missing or non-numeric columns, labels other than 0/1."""
    violations = []
    missing = [name for name in (*FEATURE_COLUMNS, LABEL_COLUMN) if name not in frame.columns]
    if missing:
        violations.append(f"missing columns {', '.join(missing)}")
    non_numeric = [
        f"{name} ({frame[name].dtype})"
        for name in FEATURE_COLUMNS
        if name in frame.columns and not pd.api.types.is_numeric_dtype(frame[name])
    ]
    if non_numeric:
        violations.append(f"non-numeric feature columns {', '.join(non_numeric)}")
    if LABEL_COLUMN in frame.columns:
        violations.extend(_label_violations(frame[LABEL_COLUMN]))
    return violations


def _label_violations(labels: pd.Series) -> list[str]:
    violations = []
    null_labels = int(labels.isna().sum())
    if null_labels:
        violations.append(f"{LABEL_COLUMN} has {null_labels} null values")
    present = labels.dropna()
    if not pd.api.types.is_numeric_dtype(present):
        return [*violations, f"{LABEL_COLUMN} is {labels.dtype}, expected integers 0/1"]
    unexpected = sorted(set(present.unique().tolist()) - LABEL_VALUES)
    if unexpected:
        shown = ", ".join(str(value) for value in unexpected[:5])
        violations.append(f"{LABEL_COLUMN} values {{{shown}}} not in {{0, 1}}")
    return violations


def feature_null_rate(frame: pd.DataFrame) -> float:
    """The fraction of null cells over the feature columns that are present."""
    present = [name for name in FEATURE_COLUMNS if name in frame.columns]
    cells = len(frame) * len(present)
    return float(frame[present].isna().sum().sum()) / cells if cells else 0.0


def minority_label_fraction(frame: pd.DataFrame) -> float:
    """The share of the rarer label among the rows (0.0 when there are none or no label column)."""
    if LABEL_COLUMN not in frame.columns or frame.empty:
        return 0.0
    positives = float((frame[LABEL_COLUMN] == 1).sum()) / len(frame)
    return min(positives, 1.0 - positives)


def check_contract(frame: pd.DataFrame, limits: ContractLimits) -> ContractReport:
    """Every rule of the contract on ``frame``: schema, row count, null rate, label balance."""
    rows = len(frame)
    null_rate = feature_null_rate(frame)
    minority = minority_label_fraction(frame)
    violations = schema_violations(frame)
    if rows < limits.min_rows:
        violations.append(f"rows {rows} < min_rows {limits.min_rows}")
    if null_rate > limits.max_null_rate:
        violations.append(f"null_rate {null_rate:.3f} > max_null_rate {limits.max_null_rate:.3f}")
    if minority < limits.min_label_fraction:
        violations.append(
            f"minority_label_fraction {minority:.3f} < "
            f"min_label_fraction {limits.min_label_fraction:.3f}"
        )
    return ContractReport(rows, null_rate, minority, violations)
