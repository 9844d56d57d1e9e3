"""Prints the per-layer channels, MFLOPs and parameters of one subnet.

    python scripts/profile_subnet.py --model_name=mobilenet_v1 --subnet=max
    python scripts/profile_subnet.py --model_name=mobilenet_v2 --subnet=160:0.75,1,1,1,1,1,1,1,1

The flags name the space as scripts/train.py does (--model_name,
--width_mult_range; --model and --width_range are accepted too).

Counting needs no TensorFlow and runs in milliseconds.
"""

import sys

from absl import app, flags  # noqa: E402

from pss_keras.cost import flops
from pss_keras.supernet import specs  # noqa: E402

_MODEL_NAME = flags.DEFINE_enum(
    "model_name", "mobilenet_v1", list(specs.MODEL_NAMES), "Architecture."
)
_SUBNET = flags.DEFINE_string(
    "subnet", "max", "max, min, random, RES:m1,...,mN, or a JSON object of the config."
)
_NUM_CLASSES = flags.DEFINE_integer("num_classes", 1000, "Classifier outputs.", lower_bound=1)
_WIDTH_SCALE = flags.DEFINE_float("width_scale", 1.0, "Global width scale of the supernet.")
_RESOLUTION_RANGE = flags.DEFINE_list("resolution_range", ["128", "224"], "min,max resolution.")
_RESOLUTION_STEP = flags.DEFINE_integer("resolution_step", 8, "Resolution grid step.")
_WIDTH_RANGE = flags.DEFINE_list(
    "width_mult_range", ["0.75", "1.0"], "min,max stage width multiplier."
)
# The names this script had before it agreed with scripts/train.py.
flags.DEFINE_alias("model", "model_name")
flags.DEFINE_alias("width_range", "width_mult_range")
_SEED = flags.DEFINE_integer("seed", None, "Seed for --subnet=random.")


def main(argv):
    del argv
    try:
        space = specs.SearchSpace(
            model_name=_MODEL_NAME.value,
            resolution_range=tuple(int(r) for r in _RESOLUTION_RANGE.value),
            resolution_step=_RESOLUTION_STEP.value,
            width_range=tuple(float(w) for w in _WIDTH_RANGE.value),
            width_scale=_WIDTH_SCALE.value,
            num_classes=_NUM_CLASSES.value,
        )
        config = specs.parse_subnet(_SUBNET.value, space, seed=_SEED.value)
    except ValueError as e:
        sys.exit(f"error: {e}")
    print(flops.format_profile(config, space.num_classes, space.width_scale))


if __name__ == "__main__":
    app.run(main)
