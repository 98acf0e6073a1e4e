"""Drives kinfer-runtime's gRPC port with NVIDIA's own client, tritonclient.grpc, unchanged:
server/model health and metadata, inference with raw tensors (what tritonclient sends) and with
typed `contents` (through the same package's generated GRPCInferenceService stub), the request id,
a subset of outputs, and errors as gRPC status codes.

usage: triton_grpc.py HOST:PORT MODEL EXPECTED_JSON
Image models (expected.json with "images"): the images go as BYTES elements, raw JPEG/PNG bytes.
Prints one line per check and exits non-zero on the first mismatch.
"""

import json
import os
import sys

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

url, model, expected_path = sys.argv[1], sys.argv[2], sys.argv[3]
exp = json.load(open(expected_path))
client = grpcclient.InferenceServerClient(url=url)
stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(url))

assert client.is_server_live(), "server not live"
assert client.is_server_ready(), "server not ready"
assert client.is_model_ready(model), "model not ready"
meta = client.get_server_metadata()
assert meta.name == "kinfer-runtime", meta
mm = client.get_model_metadata(model)
assert mm.name == model and mm.platform == "onnxruntime_onnx", mm
print("metadata ok:", [(t.name, t.datatype, list(t.shape)) for t in list(mm.inputs) + list(mm.outputs)])


def typed_values(contents, datatype):
    field = {
        "FP32": "fp32_contents",
        "FP64": "fp64_contents",
        "INT64": "int64_contents",
        "INT32": "int_contents",
        "BYTES": "bytes_contents",
        "BOOL": "bool_contents",
    }[datatype]
    return list(getattr(contents, field))


def expect_error(fn, code, needle):
    try:
        fn()
    except InferenceServerException as e:
        assert e.status() == f"StatusCode.{code}", (e.status(), str(e))
        assert needle in e.message(), (needle, e.message())
        print(f"error ok ({code}):", e.message())
        return
    except grpc.RpcError as e:
        assert e.code().name == code, (e.code(), e.details())
        assert needle in e.details(), (needle, e.details())
        print(f"error ok ({code}):", e.details())
        return
    raise SystemExit(f"expected {code} containing {needle!r}")


if "images" in exp:
    # Image model: one raw JPEG/PNG per BYTES element; the server preprocesses them.
    images_dir = os.path.join(os.path.dirname(expected_path), "images")
    files = [im["file"] for im in exp["images"]]
    blobs = [open(os.path.join(images_dir, f), "rb").read() for f in files]
    tol = exp["tolerance"]
    x = grpcclient.InferInput(exp["input"], [len(blobs)], "BYTES")
    x.set_data_from_numpy(np.array(blobs, dtype=np.object_))
    r = client.infer(model, [x], outputs=[grpcclient.InferRequestedOutput(exp["output"])], request_id="img-1")
    assert r.get_response().id == "img-1", r.get_response().id
    probs = r.as_numpy(exp["output"])
    for im, row in zip(exp["images"], probs):
        assert np.allclose(row, im["probabilities"], atol=tol), (im["file"], row, im["probabilities"])
    print("raw image infer ok:", files)

    req = service_pb2.ModelInferRequest(model_name=model, id="img-2")
    t = req.inputs.add(name=exp["input"], datatype="BYTES", shape=[len(blobs)])
    t.contents.bytes_contents.extend(blobs)
    resp = stub.ModelInfer(req)
    assert resp.id == "img-2" and not resp.raw_output_contents, resp.id
    got = np.array(typed_values(resp.outputs[0].contents, "FP32")).reshape(list(resp.outputs[0].shape))
    for im, row in zip(exp["images"], got):
        assert np.allclose(row, im["probabilities"], atol=tol), (im["file"], row, im["probabilities"])
    print("typed image infer ok")
    expect_error(
        lambda: stub.ModelInfer(
            service_pb2.ModelInferRequest(
                model_name=model,
                inputs=[
                    service_pb2.ModelInferRequest.InferInputTensor(
                        name=exp["input"],
                        datatype="BYTES",
                        shape=[1],
                        contents=service_pb2.InferTensorContents(bytes_contents=[b"GIF89a not an image"]),
                    )
                ],
            )
        ),
        "INVALID_ARGUMENT",
        "element 0",
    )
    print("tritonclient.grpc: all checks passed")
    sys.exit(0)

inp = exp["inputs"][0]
x_np = np.array(inp["data"], dtype=np.float32).reshape(inp["shape"])


def check(outputs):
    """outputs: name -> numpy array."""
    for out in exp["outputs"]:
        got = outputs[out["name"]]
        assert list(got.shape) == out["shape"], (out["name"], got.shape, out["shape"])
        if out["datatype"] == "BYTES":
            got_list = [v.decode() if isinstance(v, bytes) else str(v) for v in got.ravel()]
            assert got_list == out["data"], (got_list, out["data"])
        else:
            want = np.array(out["data"]).reshape(out["shape"])
            assert np.allclose(got, want, rtol=1e-5, atol=1e-6), (out["name"], got, want)


# Raw tensors, both ways: what tritonclient.grpc sends and reads.
x = grpcclient.InferInput(inp["name"], list(x_np.shape), "FP32")
x.set_data_from_numpy(x_np)
outs = [grpcclient.InferRequestedOutput(o["name"]) for o in exp["outputs"]]
r = client.infer(model, [x], outputs=outs, request_id="triton-grpc-1")
assert r.get_response().id == "triton-grpc-1", r.get_response().id
assert r.get_response().model_name == model, r.get_response().model_name
check({o["name"]: r.as_numpy(o["name"]) for o in exp["outputs"]})
print("raw infer ok")

# No outputs named: all of them.
r = client.infer(model, [x])
check({o["name"]: r.as_numpy(o["name"]) for o in exp["outputs"]})
print("all outputs ok:", [o.name for o in r.get_response().outputs])

# A subset: only the last output comes back.
last = exp["outputs"][-1]["name"]
r = client.infer(model, [x], outputs=[grpcclient.InferRequestedOutput(last)])
assert [o.name for o in r.get_response().outputs] == [last], r.get_response().outputs
print("output subset ok:", last)

# Typed contents through the generated stub: the answer comes back typed.
req = service_pb2.ModelInferRequest(model_name=model, id="typed-1")
t = req.inputs.add(name=inp["name"], datatype="FP32", shape=inp["shape"])
t.contents.fp32_contents.extend(x_np.ravel().tolist())
resp = stub.ModelInfer(req)
assert resp.id == "typed-1" and not resp.raw_output_contents, resp
check(
    {
        o.name: np.array(typed_values(o.contents, o.datatype), dtype=object if o.datatype == "BYTES" else None).reshape(
            list(o.shape)
        )
        for o in resp.outputs
    }
)
print("typed infer ok")

# Errors: gRPC status codes with kinfer's message naming the field.
bad = grpcclient.InferInput("nope", list(x_np.shape), "FP32")
bad.set_data_from_numpy(x_np)
expect_error(lambda: client.infer(model, [bad]), "INVALID_ARGUMENT", "unknown input 'nope'")
short = grpcclient.InferInput(inp["name"], [1, 3], "FP32")
short.set_data_from_numpy(np.zeros((1, 3), dtype=np.float32))
expect_error(lambda: client.infer(model, [short]), "INVALID_ARGUMENT", f"input '{inp['name']}' has shape [1, 3]")
expect_error(lambda: client.infer("no-such-model", [x]), "NOT_FOUND", "model 'no-such-model' not found")
expect_error(lambda: client.infer(model, [x], model_version="7"), "NOT_FOUND", "version '7' not found")
expect_error(lambda: client.get_model_config(model), "UNIMPLEMENTED", "ModelConfig is not served here")
print("tritonclient.grpc: all checks passed")
