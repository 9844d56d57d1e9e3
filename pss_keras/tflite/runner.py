"""Running .tflite classifiers with the LiteRT interpreter (ai-edge-litert).

`TFLiteRunner` takes float32 pixel batches whatever the file's input type:
integer inputs are quantized with the tensor's scale and zero point as an app
would, integer outputs dequantized back to float logits.
"""

from __future__ import annotations

import numpy as np

from pss_keras.utils import timing


def _interpreter(model_content=None, model_path=None, num_threads=1):
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_content=model_content, model_path=model_path, num_threads=num_threads)


def tensor_info(detail) -> dict:
    """A tensor's name, shape (-1: dynamic), dtype, scale and zero point."""
    scale, zero_point = detail["quantization"]
    return {
        "name": detail["name"],
        "shape": [int(d) for d in detail["shape_signature"]],
        "dtype": np.dtype(detail["dtype"]).name,
        "scale": float(scale),
        "zero_point": int(zero_point),
    }


def quantize_input(x: np.ndarray, detail) -> np.ndarray:
    """Float pixels -> the interpreter input's dtype (as an app would)."""
    dtype = np.dtype(detail["dtype"])
    if dtype == np.float32:
        return x.astype(np.float32)
    scale, zero_point = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zero_point), info.min, info.max).astype(dtype)


def dequantize_output(y: np.ndarray, detail) -> np.ndarray:
    if np.dtype(detail["dtype"]) == np.float32:
        return y
    scale, zero_point = detail["quantization"]
    return (y.astype(np.float32) - zero_point) * scale


class TFLiteRunner:
    """Runs a .tflite classifier on float pixel batches (any batch size)."""

    def __init__(self, model_content=None, model_path=None, num_threads: int = 1):
        self.interpreter = _interpreter(model_content, model_path, num_threads)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self._batch = int(self.input["shape"][0])

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        """Float32 pixels [b, r, r, 3] -> float32 logits [b, classes]."""
        it = self.interpreter
        if pixels.shape[0] != self._batch:
            it.resize_tensor_input(self.input["index"], list(pixels.shape))
            it.allocate_tensors()
            self._batch = pixels.shape[0]
        it.set_tensor(self.input["index"], quantize_input(pixels, self.input))
        it.invoke()
        return dequantize_output(it.get_tensor(self.output["index"]), self.output)

    def latency_ms(self, pixels: np.ndarray, repeats: int, warmup: int = 0, clock=None) -> float:
        """Median wall time of one batch-1 invoke over ``repeats`` runs,
        after ``warmup`` untimed ones (`timing.median_ms`, read on ``clock``)."""
        self(pixels[:1])  # sets the input; the timed runs invoke on it
        return timing.median_ms(self.interpreter.invoke, repeats, warmup=warmup, clock=clock)
