"""Triton python-based backend ``cxrmesh_onnxruntime``: runs a model's ``model.onnx`` with ONNX Runtime.

One generic implementation for every ONNX model of the CPU serving profile: their
``configs/cpu.pbtxt`` say ``backend: "cxrmesh_onnxruntime"``, and Triton runs this file (installed as
``<backend directory>/cxrmesh_onnxruntime/model.py``) for each of them, with the python backend's stub.
The ONNX file stays in the model repository, in the model's version folder
(``<model>/<version>/model.onnx``). Everything model-specific - tensor names, dtypes, dims, max batch
size - comes from the Triton model config, which the repository writer derives from
``cxrmesh.contracts.tensors``; this file states none of it. It runs inside the python-backend stub, so it
imports only numpy, onnxruntime and ``triton_python_backend_utils``.

Config parameters (all optional, string values):

* ``onnx_file`` - file name in the model's version folder (default ``model.onnx``);
* ``intra_op_threads`` - ONNX Runtime intra-op threads, ``0`` = ORT's default (one per core);
* ``allow_spinning`` - ``1`` lets idle ORT threads spin (lower latency, burns CPU that the other
  models on the same server might want); default ``0``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class InvalidRequest(ValueError):
    """A request the model cannot run; becomes an INVALID_ARG error in that request's response."""


def _parameter(config: dict[str, Any], key: str, default: str) -> str:
    value = config.get("parameters", {}).get(key, {}).get("string_value", "")
    return value if value != "" else default


class TritonPythonModel:
    """ONNX Runtime behind Triton: one ORT call per batch of compatible requests."""

    def initialize(self, args: dict[str, str]) -> None:
        """Open the ORT session and check it against the config: a mismatch fails the load, not a request."""
        self.config = json.loads(args["model_config"])
        self.model_name = args["model_name"]
        model_dir = Path(args["model_repository"]) / args["model_version"]
        self.max_batch_size = int(self.config.get("max_batch_size", 0))
        self.inputs = [
            (
                t["name"],
                np.dtype(pb_utils.triton_string_to_numpy(t["data_type"])),
                tuple(int(d) for d in t["dims"]),
            )
            for t in self.config["input"]
        ]
        self.outputs = {
            t["name"]: np.dtype(pb_utils.triton_string_to_numpy(t["data_type"]))
            for t in self.config["output"]
        }

        options = ort.SessionOptions()
        options.intra_op_num_threads = int(_parameter(self.config, "intra_op_threads", "0"))
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry(
            "session.intra_op.allow_spinning", _parameter(self.config, "allow_spinning", "0")
        )
        onnx_path = model_dir / _parameter(self.config, "onnx_file", "model.onnx")
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])

        session_inputs = {i.name for i in self.session.get_inputs()}
        session_outputs = {o.name for o in self.session.get_outputs()}
        config_inputs = {name for name, _, _ in self.inputs}
        if session_inputs != config_inputs or not set(self.outputs) <= session_outputs:
            raise pb_utils.TritonModelException(
                f"{self.model_name}: {onnx_path.name} has inputs {sorted(session_inputs)} and outputs "
                f"{sorted(session_outputs)}, but the config declares inputs {sorted(config_inputs)} and "
                f"outputs {sorted(self.outputs)}"
            )

    def _read(self, request: Any) -> dict[str, np.ndarray]:
        """The request's inputs, checked against the config (Triton checks first; this is the backstop)."""
        arrays: dict[str, np.ndarray] = {}
        batch: int | None = None
        for name, dtype, dims in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise InvalidRequest(f"{self.model_name}: missing input '{name}'")
            array = tensor.as_numpy()
            if array.dtype != dtype:
                raise InvalidRequest(
                    f"{self.model_name}: input '{name}' has dtype {array.dtype}, expected {dtype}"
                )
            shape = array.shape[1:] if self.max_batch_size > 0 else array.shape
            if len(shape) != len(dims) or any(d not in (-1, s) for d, s in zip(dims, shape, strict=True)):
                raise InvalidRequest(
                    f"{self.model_name}: input '{name}' has shape {list(array.shape)}, "
                    f"expected [batch, {', '.join(map(str, dims))}]"
                )
            if self.max_batch_size > 0:
                if batch is not None and array.shape[0] != batch:
                    raise InvalidRequest(f"{self.model_name}: inputs disagree on the batch size")
                batch = array.shape[0]
                if not 1 <= batch <= self.max_batch_size:
                    raise InvalidRequest(
                        f"{self.model_name}: batch size {batch} outside 1..{self.max_batch_size}"
                    )
            arrays[name] = array
        return arrays

    def execute(self, requests: list[Any]) -> list[Any]:
        """Run the dynamic batcher's requests; same-shaped ones share one ORT call, then split back."""
        responses: list[Any] = [None] * len(requests)
        groups: dict[tuple, list[tuple[int, dict[str, np.ndarray], list[str]]]] = {}
        for index, request in enumerate(requests):
            try:
                arrays = self._read(request)
            except InvalidRequest as error:
                responses[index] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(str(error), pb_utils.TritonError.INVALID_ARG)
                )
                continue
            wanted = [n for n in request.requested_output_names() if n in self.outputs] or list(self.outputs)
            # Requests whose non-batch dims agree can share one ORT call; unbatched models never do.
            key = tuple(a.shape[1:] for a in arrays.values()) if self.max_batch_size > 0 else (index,)
            groups.setdefault(key, []).append((index, arrays, wanted))

        for members in groups.values():
            names = sorted({n for _, _, wanted in members for n in wanted})
            feeds = {
                n: np.concatenate([a[n] for _, a, _ in members]) if len(members) > 1 else members[0][1][n]
                for n, _, _ in self.inputs
            }
            try:
                results = dict(zip(names, self.session.run(names, feeds), strict=True))
            except Exception as error:  # ORT's pybind errors share no base; each must become a response
                for index, _, _ in members:
                    responses[index] = pb_utils.InferenceResponse(
                        error=pb_utils.TritonError(f"{self.model_name}: ONNX Runtime failed: {error}")
                    )
                continue
            start = 0
            for index, arrays, wanted in members:
                stop = start + next(iter(arrays.values())).shape[0]
                tensors = [
                    pb_utils.Tensor(n, np.ascontiguousarray(results[n][start:stop], dtype=self.outputs[n]))
                    for n in wanted
                ]
                responses[index] = pb_utils.InferenceResponse(output_tensors=tensors)
                start = stop
        return responses

    def finalize(self) -> None:
        """Drop the session so ORT frees its arena before the stub exits."""
        self.session = None
