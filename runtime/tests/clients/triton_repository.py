"""Drives kinfer-runtime's model control with NVIDIA's own clients, unchanged: tritonclient.http
and tritonclient.grpc get_model_repository_index, load_model and unload_model, against a runtime
serving iris and tabular with KINFER_MODEL_CONTROL=explicit.

usage: triton_repository.py HOST:HTTP_PORT HOST:GRPC_PORT
Prints one line per check and exits non-zero on the first mismatch.
"""

import sys

import grpc
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

http_url, grpc_url = sys.argv[1], sys.argv[2]
h = httpclient.InferenceServerClient(url=http_url)
g = grpcclient.InferenceServerClient(url=grpc_url)

index = sorted((m["name"], m["version"], m["state"]) for m in h.get_model_repository_index())
assert index == [("iris", "1", "READY"), ("tabular", "1", "READY")], index
gindex = g.get_model_repository_index(as_json=True)["models"]
assert sorted((m["name"], m["state"]) for m in gindex) == [("iris", "READY"), ("tabular", "READY")], gindex
print("index ok:", index)

# Unload and load again on each port.
g.unload_model("tabular")
assert not h.is_model_ready("tabular"), "tabular still ready after a gRPC unload"
states = {m["name"]: (m["state"], m.get("reason")) for m in g.get_model_repository_index(as_json=True)["models"]}
assert states["tabular"] == ("UNAVAILABLE", "unloaded"), states
# `ready` is in the proto, not in tritonclient's signature: through the package's own stub.
stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(grpc_url))
ready = [m.name for m in stub.RepositoryIndex(service_pb2.RepositoryIndexRequest(ready=True)).models]
assert ready == ["iris"], ready
h.load_model("tabular")
assert g.is_model_ready("tabular"), "tabular not ready after an HTTP load"
h.unload_model("iris", unload_dependents=True)
assert not g.is_model_ready("iris")
g.load_model("iris")
assert h.is_model_ready("iris")
print("unload/load ok on both ports")


def expect_error(fn, needle):
    try:
        fn()
    except InferenceServerException as e:
        assert needle in e.message(), (needle, e.message())
        print("error ok:", e.message())
        return
    raise AssertionError(f"no error (wanted {needle!r})")


# A Triton model config has no meaning here: refused by name, the model keeps serving.
expect_error(lambda: h.load_model("iris", config='{"backend": "onnxruntime"}'), "'config' is not supported")
expect_error(lambda: g.load_model("iris", config='{"backend": "onnxruntime"}'), "'config' is not supported")
expect_error(lambda: g.unload_model("nope"), "model 'nope' not found")
assert h.is_model_ready("iris")
print("tritonclient model control: all checks passed")
