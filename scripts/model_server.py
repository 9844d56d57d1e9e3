"""Serves an exported PSS model with the stand-in tensorflow_model_server.

    python scripts/model_server.py --model_dir=saved_models/quickstart \
        --model_name=quickstart --port=8500 --rest_api_port=8501 --threads=2

Loads the latest version as TF Serving does (session over the serve
MetaGraph, warm-up requests replayed; a model whose warm-up fails is
refused), prints the ports it serves on (--port=0 / --rest_api_port=0: any
free port, printed) and serves gRPC and REST until Ctrl-C;
--version_labels=stable:1 names versions for /labels/<label> as TF Serving's
model config does. See `pss_keras.testing.model_server`.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from absl import app, flags  # noqa: E402

flags.DEFINE_string("model_dir", None, "SavedModel version, or base path (latest version).")
flags.DEFINE_string("model_name", None, "Model name the requests use.")
flags.DEFINE_string("host", "127.0.0.1", "Address to bind (0.0.0.0: every interface).")
flags.DEFINE_integer("port", 8500, "gRPC port (0: any free port, printed).", lower_bound=0)
flags.DEFINE_integer("rest_api_port", 8501, "REST port (0: any free port).", lower_bound=0)
flags.DEFINE_integer("threads", None, "Session intra/inter-op threads.", lower_bound=1)
flags.DEFINE_integer("request_workers", 16, "Concurrent requests.", lower_bound=1)
flags.DEFINE_list("version_labels", [], "label:version,... (TF Serving's version_labels).")
flags.mark_flags_as_required(["model_dir", "model_name"])
F = flags.FLAGS


def main(argv):
    del argv
    from pss_keras.testing import model_server

    try:
        labels = {k: int(v) for k, v in (item.rsplit(":", 1) for item in F.version_labels)}
    except ValueError:
        sys.exit(
            f"error: --version_labels takes label:version,...; got {','.join(F.version_labels)}"
        )
    config = model_server.ServeConfig(
        F.model_dir, F.model_name, F.host, F.port, F.rest_api_port, F.threads, F.request_workers,
        labels,
    )  # fmt: skip
    try:
        model_server.serve_until_stopped(config)
    except (model_server.ModelRefused, OSError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    app.run(main)
