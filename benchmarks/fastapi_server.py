"""The baseline of `make bench`: the FastAPI + uvicorn + onnxruntime server teams write today.

It serves one ONNX model with the same request bodies as kinfer:
- KServe V1:  POST /v1/models/{name}:predict   {"instances": [[...], ...]} -> {"predictions": [...]}
- OIP v2:     POST /v2/models/{name}/infer     {"inputs": [{"name", "shape", "datatype", "data"}]}
- readiness:  GET  /v2/health/ready

Written the idiomatic way (pydantic request models, numpy, one onnxruntime InferenceSession per
worker process, `async def` handlers: the faster choice for a model this small, since running it
inline costs less than a hop to the thread pool). Configured by environment variables, because
uvicorn imports it once per worker:

    BASELINE_MODEL=examples/models/tabular/model.onnx BASELINE_NAME=tabular BASELINE_THREADS=1 \
        uvicorn benchmarks.fastapi_server:app --host 127.0.0.1 --port 9001 --workers 2
"""

from __future__ import annotations

import os
from typing import Any, Optional

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

MODEL_PATH = os.environ.get("BASELINE_MODEL", "examples/models/tabular/model.onnx")
MODEL_NAME = os.environ.get("BASELINE_NAME", "model")
THREADS = int(os.environ.get("BASELINE_THREADS", "1"))

_opts = ort.SessionOptions()
_opts.intra_op_num_threads = THREADS
_opts.inter_op_num_threads = 1
session = ort.InferenceSession(MODEL_PATH, sess_options=_opts, providers=["CPUExecutionProvider"])
INPUT = session.get_inputs()[0].name
OUTPUTS = [o.name for o in session.get_outputs()]

_DTYPES = {np.dtype(np.float32): "FP32", np.dtype(np.float64): "FP64", np.dtype(np.int64): "INT64",
           np.dtype(np.int32): "INT32", np.dtype(np.bool_): "BOOL"}

app = FastAPI(title="baseline")


class V1Request(BaseModel):
    instances: list[list[float]]


class V2Tensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]


class V2Request(BaseModel):
    id: Optional[str] = None
    inputs: list[V2Tensor]


def _predict(x: np.ndarray) -> list[np.ndarray]:
    return session.run(OUTPUTS, {INPUT: x})


@app.get("/v2/health/ready")
async def ready() -> dict:
    return {"ready": True}


@app.post("/v1/models/{target}")
async def v1_predict(target: str, req: V1Request) -> dict:
    if target != f"{MODEL_NAME}:predict":
        raise HTTPException(status_code=404, detail=f"no model {target}")
    x = np.asarray(req.instances, dtype=np.float32)
    outs = _predict(x)
    if len(outs) == 1:
        return {"predictions": outs[0].tolist()}
    cols = [o.tolist() for o in outs]
    return {"predictions": [{name: col[i] for name, col in zip(OUTPUTS, cols)} for i in range(x.shape[0])]}


@app.post("/v2/models/{name}/infer")
async def v2_infer(name: str, req: V2Request) -> dict:
    if name != MODEL_NAME:
        raise HTTPException(status_code=404, detail=f"no model {name}")
    t = req.inputs[0]
    x = np.asarray(t.data, dtype=np.float32).reshape(t.shape)
    outs = _predict(x)
    tensors = []
    for out_name, o in zip(OUTPUTS, outs):
        if o.dtype.kind in ("U", "S", "O"):
            datatype = "BYTES"
        else:
            datatype = _DTYPES.get(o.dtype, str(o.dtype).upper())
        tensors.append({"name": out_name, "datatype": datatype, "shape": list(o.shape),
                        "data": o.reshape(-1).tolist()})
    resp = {"model_name": MODEL_NAME, "model_version": "1", "outputs": tensors}
    if req.id is not None:
        resp["id"] = req.id
    return resp
