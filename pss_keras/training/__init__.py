"""PSS training: samplers, pools, the sandwich step, the run driver.

pools, sampling       subnet pools; conditional and prioritized samplers
trainer               the sandwich step (`PSSTrainer`)
subnet_trainer        one subnet trained alone (`SubnetTrainer`, ``--subnet``)
preflight             what a run checks and builds before its first step
fitting               the epochs as Keras fits, with their callbacks
callbacks             candidate choice, validation, the time estimate, TensorBoard
divergence            stopping a run that diverged (`DivergenceGuard`)
preemption            checkpoints inside an epoch; a clean stop on SIGTERM
checkpoints           atomic, resumable checkpoints
evaluation            post-training BN calibration and accuracy of subnets
selection             the end-of-run choice of one subnet per target
distribution, loop    tf.distribute strategies; the loop fit() cannot drive
run_plan, dry_run     what a run will do (its header); the dry run
driver                `train` and `evaluate_job`: a whole run
studies               the studies' rig: Imagenette, timed resumable runs, tier
                      choice and training FLOPs (scripts/compare_*.py)
"""

from pss_keras._lazy import exports

_EXPORTS = {
    "train": "driver",
    "evaluate_job": "driver",
}

__getattr__, __dir__ = exports(__name__, _EXPORTS)
