"""pss_keras: PSS-Net resource-adaptive supernets in Keras 3 / TensorFlow.

The pipeline, one module per step:
    specs, flops      the search space and cost of subnets (pure Python)
    layers, supernet  width-switchable layers and the MobileNet supernets
    pretrained        weights from keras.applications
    extraction        standalone Keras models of single subnets
"""

from pss_keras.extraction import extract_subnet
from pss_keras.flops import count_mflops, count_mflops_np, count_params
from pss_keras.pretrained import load_keras_applications_weights
from pss_keras.specs import SearchSpace, SubnetConfig, make_divisible
from pss_keras.supernet import Supernet, build_supernet

__all__ = [
    "SearchSpace",
    "SubnetConfig",
    "Supernet",
    "build_supernet",
    "count_mflops",
    "count_mflops_np",
    "count_params",
    "extract_subnet",
    "load_keras_applications_weights",
    "make_divisible",
]

__version__ = "0.1.0"
