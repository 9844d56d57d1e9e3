"""The model: search space, architecture plan, switchable layers, the supernet.

specs        the search space and one subnet's configuration (no TF)
blocks       the architecture plan every consumer walks (no TF)
layers       width-switchable Keras layers
model        `Supernet`: MobileNetV1/V2 with one active subnet at a time
extraction   a standalone Keras model of one subnet
keras_applications   keras.applications' MobileNets: alphas, files, layer names, the copy
pretrained   a run's initial weights (--init_from: ImageNet, a file, a job)
torch_files  PyTorch (torch.save zip) checkpoints read with NumPy, no torch
reference_checkpoint   the official PSS-Net checkpoints as our supernet
"""

from pss_keras._lazy import exports

_EXPORTS = {
    "SearchSpace": "specs",
    "SubnetConfig": "specs",
    "make_divisible": "blocks",
    "BatchNormStats": "model",
    "resize_to": "model",
    "Supernet": "model",
    "build_supernet": "model",
    "extract_subnet": "extraction",
    "initialize_supernet": "pretrained",
    "load_keras_applications_weights": "keras_applications",
    "CheckpointError": "torch_files",
    "read_checkpoint": "torch_files",
    "ReferenceCheckpoint": "reference_checkpoint",
    "load_reference_checkpoint": "reference_checkpoint",
    "reference_subnet": "reference_checkpoint",
}

__getattr__, __dir__ = exports(__name__, _EXPORTS)
