"""Triton python-based backend ``cxrmesh_seg_ensemble`` (BLS): the mean of segmentation members' outputs.

Configs that say ``backend: "cxrmesh_seg_ensemble"`` (``lung_seg_ensemble``, on both profiles) run this
file, installed as ``<backend directory>/cxrmesh_seg_ensemble/model.py``. It holds no network weights.
For each batch it sends one BLS request per member, all in flight at once (``async_exec``), averages
the members' class probabilities (weighted by ``member_weights`` when the config gives them, else
equally) and, only if the client asked for it, also returns the members' probabilities stacked along
a new axis. The members are whatever the server serves under their names - ONNX Runtime models on
the CPU profile, TensorRT plans on the GPU one - so the same backend and config serve both. Tensor
names come from the config parameters written by ``cxrmesh.export.repository`` from
``cxrmesh.contracts.tensors``; this file states none of them:

* ``members`` - comma-separated member model names;
* ``member_weights`` - optional comma-separated non-negative weights in the same order (fitted on
  the validation split by ``cxrmesh train --only ensemble``); normalised to sum to 1;
* ``member_input`` / ``member_output`` - the members' image input and probability output;
* ``mean_output`` / ``stack_output`` - this model's averaged and stacked outputs.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils


class InvalidRequest(ValueError):
    """A request the model cannot run; becomes an INVALID_ARG error in that request's response."""


class MemberFailed(RuntimeError):
    """A member answered with an error; the message names the member."""


def _parameter(config: dict[str, Any], key: str) -> str:
    value = config.get("parameters", {}).get(key, {}).get("string_value", "")
    if not value:
        raise pb_utils.TritonModelException(f"config parameter '{key}' is required")
    return value


def _weights(config: dict[str, Any], n: int) -> np.ndarray:
    """The members' weights from the config (equal when absent), checked and normalised."""
    raw = config.get("parameters", {}).get("member_weights", {}).get("string_value", "")
    if not raw:
        return np.full(n, 1.0 / n)
    try:
        weights = np.array([float(w) for w in raw.split(",")], dtype=np.float64)
    except ValueError as exc:
        raise pb_utils.TritonModelException(f"member_weights must be numbers: {raw!r}") from exc
    if weights.shape != (n,) or (weights < 0).any() or weights.sum() <= 0:
        raise pb_utils.TritonModelException(
            f"member_weights must be {n} non-negative numbers with a positive sum, got {raw!r}"
        )
    return weights / weights.sum()


class TritonPythonModel:
    """Averages the members; one response per request, errors in the response."""

    def initialize(self, args: dict[str, str]) -> None:
        """Read member names and tensor roles from the config."""
        self.config = json.loads(args["model_config"])
        self.model_name = args["model_name"]
        self.members = [m.strip() for m in _parameter(self.config, "members").split(",") if m.strip()]
        self.member_input = _parameter(self.config, "member_input")
        self.member_output = _parameter(self.config, "member_output")
        self.mean_output = _parameter(self.config, "mean_output")
        self.stack_output = _parameter(self.config, "stack_output")
        self.weights = _weights(self.config, len(self.members))
        self.max_batch_size = int(self.config.get("max_batch_size", 0))
        (spec,) = self.config["input"]
        self.input_name = spec["name"]
        self.input_dtype = np.dtype(pb_utils.triton_string_to_numpy(spec["data_type"]))
        self.input_dims = tuple(int(d) for d in spec["dims"])
        self.output_dtypes = {
            t["name"]: np.dtype(pb_utils.triton_string_to_numpy(t["data_type"]))
            for t in self.config["output"]
        }
        self.cpu = getattr(pb_utils, "PreferredMemory", None)

    def _read(self, request: Any) -> np.ndarray:
        """The request's image, checked against the config (Triton checks too; this is the backstop)."""
        tensor = pb_utils.get_input_tensor_by_name(request, self.input_name)
        if tensor is None:
            raise InvalidRequest(f"{self.model_name}: missing input '{self.input_name}'")
        array = tensor.as_numpy()
        if array.dtype != self.input_dtype:
            raise InvalidRequest(
                f"{self.model_name}: input '{self.input_name}' has dtype {array.dtype}, "
                f"expected {self.input_dtype}"
            )
        dims = self.input_dims
        if array.ndim != len(dims) + 1 or any(
            d not in (-1, s) for d, s in zip(dims, array.shape[1:], strict=True)
        ):
            raise InvalidRequest(
                f"{self.model_name}: input '{self.input_name}' has shape {list(array.shape)}, "
                f"expected [batch, {', '.join(map(str, dims))}]"
            )
        if not 1 <= array.shape[0] <= self.max_batch_size:
            raise InvalidRequest(
                f"{self.model_name}: batch size {array.shape[0]} outside 1..{self.max_batch_size}"
            )
        return array

    async def _member(self, name: str, images: np.ndarray) -> np.ndarray:
        """One member's probabilities for the batch, in host memory whatever device the member ran on."""
        kwargs: dict[str, Any] = {}
        if self.cpu is not None:
            kwargs["preferred_memory"] = self.cpu(pb_utils.TRITONSERVER_MEMORY_CPU, 0)
        request = pb_utils.InferenceRequest(
            model_name=name,
            inputs=[pb_utils.Tensor(self.member_input, images)],
            requested_output_names=[self.member_output],
            **kwargs,
        )
        response = await request.async_exec()
        if response.has_error():
            raise MemberFailed(f"{self.model_name}: member {name} failed: {response.error().message()}")
        tensor = pb_utils.get_output_tensor_by_name(response, self.member_output)
        if tensor is None:
            raise MemberFailed(f"{self.model_name}: member {name} returned no '{self.member_output}'")
        return tensor.as_numpy()

    async def execute(self, requests: list[Any]) -> list[Any]:
        """Batch all valid requests into one call per member (members run concurrently), then split back."""
        responses: list[Any] = [None] * len(requests)
        valid: list[tuple[int, np.ndarray, set[str]]] = []
        for index, request in enumerate(requests):
            try:
                images = self._read(request)
            except InvalidRequest as error:
                responses[index] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(str(error), pb_utils.TritonError.INVALID_ARG)
                )
                continue
            wanted = set(request.requested_output_names()) or {self.mean_output, self.stack_output}
            valid.append((index, images, wanted))
        if not valid:
            return responses

        batch = np.concatenate([images for _, images, _ in valid]) if len(valid) > 1 else valid[0][1]
        try:
            probs = await asyncio.gather(*(self._member(name, batch) for name in self.members))
        except MemberFailed as error:
            for index, _, _ in valid:
                responses[index] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(error)))
            return responses

        stacked = np.stack(probs, axis=1)  # (batch, members, *member dims)
        mean = np.tensordot(stacked, self.weights, axes=([1], [0]))  # weighted over the members
        mean = mean.astype(self.output_dtypes[self.mean_output])
        start = 0
        for index, images, wanted in valid:
            stop = start + images.shape[0]
            tensors = []
            if self.mean_output in wanted:
                tensors.append(pb_utils.Tensor(self.mean_output, np.ascontiguousarray(mean[start:stop])))
            if self.stack_output in wanted:  # 5x the mean's bytes: only for clients that ask
                part = stacked[start:stop].astype(self.output_dtypes[self.stack_output], copy=False)
                tensors.append(pb_utils.Tensor(self.stack_output, np.ascontiguousarray(part)))
            responses[index] = pb_utils.InferenceResponse(output_tensors=tensors)
            start = stop
        return responses

    def finalize(self) -> None:
        """Nothing to release: the members own all state."""
