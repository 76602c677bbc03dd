"""``validate``: check the input features against the data contract before anything trains."""

from __future__ import annotations

import logging
from typing import Any, NoReturn

from trainer import storage
from trainer.contract import ContractLimits, check_contract
from trainer.errors import DataContractError, UnreadableFileError

log = logging.getLogger(__name__)


def run(input_uri: str, limits: ContractLimits, report_uri: str | None = None) -> dict[str, Any]:
    """The contract's measurements of ``input_uri``; DataContractError lists every broken rule.

    The verdict is also written to ``report_uri`` when given, valid or not: a failed pod pushes
    no xcom, and the run's notification reads why the data was refused from there.
    """
    try:
        frame = storage.read_parquet(input_uri)
    except UnreadableFileError as error:
        _refuse({"input": input_uri, "valid": False, "violations": [str(error)]}, report_uri)
    report = check_contract(frame, limits)
    verdict = {
        "input": input_uri,
        "rows": report.rows,
        "null_rate": report.null_rate,
        "minority_label_fraction": report.minority_label_fraction,
        "valid": report.valid,
        "violations": report.violations,
    }
    if not report.valid:
        _refuse(verdict, report_uri)
    if report_uri:
        storage.write_json(verdict, report_uri)
    log.info(
        "%s meets the data contract: %d rows, null_rate %.3f, minority_label_fraction %.3f",
        input_uri,
        report.rows,
        report.null_rate,
        report.minority_label_fraction,
    )
    return verdict


def _refuse(verdict: dict[str, Any], report_uri: str | None) -> NoReturn:
    if report_uri:
        storage.write_json(verdict, report_uri)
    raise DataContractError(
        f"data contract violated for {verdict['input']}: {'; '.join(verdict['violations'])}"
    )
