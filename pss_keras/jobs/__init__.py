"""The contract every stage shares: a run's settings and the job directory.

    config      TrainConfig, DataConfig: a run's settings (run_config.json)
    resume      what may change when a run resumes (`conflicts`)
    targets     MetricTargets: the per-metric target lists of a command line
    directory   the job directory's layout, its files read and written (`Job`)
    tiers       tier records: retained (`RetainedTier`) and served (`ServedTier`)

Training writes a job directory; export, TFLite conversion and serving read
it through this package alone, which imports no TensorFlow and no training
code.
"""

from pss_keras._lazy import exports

_EXPORTS = {
    "TrainConfig": "config",
    "DataConfig": "config",
    "RUN_CONFIG": "directory",
    "CLASSES": "directory",
    "WEIGHTS": "directory",
    "RETAINED": "directory",
    "BN_STATS": "directory",
    "CHECKPOINTS": "directory",
    "LOGS": "directory",
    "LATENCY_TABLES": "directory",
    "DATA_SPLIT": "directory",
    "WEIGHTS_ORIGIN": "directory",
    "TIERS_SIGNATURE": "tiers",
    "TIER_TABLE_SIGNATURE": "tiers",
    "TIER_TABLE_INPUT": "tiers",
    "ENCODED_SUFFIX": "tiers",
    "ENCODED_INPUT": "tiers",
    "encoded_signature": "tiers",
    "RetainedTier": "tiers",
    "ServedTier": "tiers",
    "TIER_TABLE": "tiers",
    "served_tiers_from_outputs": "tiers",
    "split_dominated": "tiers",
    "write_run_config": "directory",
    "check_resume": "directory",
    "skip_bad_images_hint": "directory",
    "read_run_config": "directory",
    "write_weights_origin": "directory",
    "remove_weights_origin": "directory",
    "read_weights_origin": "directory",
    "write_split": "directory",
    "read_split": "directory",
    "latency_table_path": "directory",
    "write_classes": "directory",
    "save_bn_stats": "directory",
    "load_bn_stats": "directory",
    "write_retained": "directory",
    "read_retained": "directory",
    "Job": "directory",
}

__getattr__, __dir__ = exports(__name__, _EXPORTS)
