"""PSS training: samplers, pools, the sandwich step, the run driver.

pools, sampling       subnet pools; conditional and prioritized samplers
trainer               the sandwich step (`PSSTrainer`)
callbacks             candidate choice, validation, divergence guard, progress
checkpoints           atomic, resumable checkpoints
evaluation            post-training BN calibration and accuracy of subnets
selection             the end-of-run choice of one subnet per target
distribution, loop    tf.distribute strategies; the loop fit() cannot drive
run_plan              the dry run: what a configuration would do
driver                `train` and `evaluate_job`: a whole run
"""

from pss_keras._lazy import exports

_EXPORTS = {
    "train": "driver",
    "evaluate_job": "driver",
}

__getattr__, __dir__ = exports(__name__, _EXPORTS)
