"""``validate``: check the input features against the data contract before anything trains."""

from __future__ import annotations

import logging
from typing import Any

from trainer import storage
from trainer.contract import ContractLimits, check_contract
from trainer.errors import DataContractError

log = logging.getLogger(__name__)


def run(input_uri: str, limits: ContractLimits) -> dict[str, Any]:
    """The contract's measurements of ``input_uri``; DataContractError lists every broken rule."""
    report = check_contract(storage.read_parquet(input_uri), limits)
    if not report.valid:
        raise DataContractError(
            f"data contract violated for {input_uri}: {'; '.join(report.violations)}"
        )
    log.info(
        "%s meets the data contract: %d rows, null_rate %.3f, minority_label_fraction %.3f",
        input_uri,
        report.rows,
        report.null_rate,
        report.minority_label_fraction,
    )
    return {
        "input": input_uri,
        "rows": report.rows,
        "null_rate": report.null_rate,
        "minority_label_fraction": report.minority_label_fraction,
        "valid": True,
    }
