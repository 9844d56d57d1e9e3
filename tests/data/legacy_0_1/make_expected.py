import json, numpy as np, sys
from pss_keras import jobs, extraction
from pss_keras.supernet import BatchNormStats
import tensorflow as tf
root = sys.argv[1]
job = jobs.Job(root + "/job")
tier = job.retained[0]
config, stats = job.tier(tier)
rng = np.random.default_rng(0)
images = rng.integers(0, 256, size=(2, 40, 40, 3), dtype=np.uint8)
model = extraction.extract_subnet(job.supernet, config, stats, pixel_input=True)
print(model.input_shape)
logits_job = np.asarray(model(images.astype("float32")))
loaded = tf.saved_model.load(root + "/export/1")
out = loaded.signatures[tier.name](images=tf.constant(images))
print({k: v.shape for k, v in out.items()})
json.dump({"tier": tier.name, "image_seed": 0, "image_shape": [2, 40, 40, 3],
           "extracted_logits": logits_job.tolist(),
           "export_outputs": {k: np.asarray(v).tolist() for k, v in out.items() if np.asarray(v).dtype.kind == "f"}},
          open(root + "/expected.json", "w"), indent=1)
