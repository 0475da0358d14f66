"""executor=local, the default: trials one after another in this process, strategy by strategy; no cluster."""

from collections.abc import Sequence
from functools import partial

from sweep.executors import Executor, JobSource
from sweep.job import Placement, TrialInputs, run_job
from sweep.workers import HOST, WORKER


class LocalExecutor(Executor):
    def run(self, studies: Sequence[JobSource], inputs: TrialInputs) -> None:
        for study in studies:
            with study.session():
                while (job := study.next_job()) is not None:
                    here = Placement(HOST, WORKER, sharing=study.plan.workers.live())
                    study.finish(job.key, run_job(job, inputs, partial(study.report_epoch, job.key), here))
