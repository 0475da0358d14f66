"""executor=local, the default: trials one after another in this process, strategy by strategy; no cluster."""

from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING

from sweep.executors import Executor
from sweep.job import Placement, TrialInputs, run_job
from sweep.workers import HOST, WORKER

if TYPE_CHECKING:
    from sweep.study import StrategyStudy


class LocalExecutor(Executor):
    def run(self, studies: Sequence["StrategyStudy"], inputs: TrialInputs) -> None:
        for study in studies:
            with study.session():
                while (job := study.next_job()) is not None:
                    here = Placement(HOST, WORKER, sharing=study.plan.workers.live())
                    study.finish(job.key, run_job(job, inputs, partial(study.report_epoch, job.key), here))
