"""Drives kinfer-runtime with NVIDIA's own Open Inference Protocol client, tritonclient.http,
unchanged: server/model health and metadata, JSON inference, and binary tensors both ways.

usage: triton_http.py HOST:PORT MODEL EXPECTED_JSON
Prints one line per check and exits non-zero on the first mismatch.
"""

import json
import sys

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

url, model, expected_path = sys.argv[1], sys.argv[2], sys.argv[3]
exp = json.load(open(expected_path))
client = httpclient.InferenceServerClient(url=url)

assert client.is_server_live(), "server not live"
assert client.is_server_ready(), "server not ready"
assert client.is_model_ready(model), "model not ready"
meta = client.get_server_metadata()
assert meta["name"] == "kinfer-runtime", meta
assert "binary_tensor_data" in meta["extensions"], meta
mm = client.get_model_metadata(model)
assert mm["inputs"][0]["name"] == exp["inputs"][0]["name"], mm
print("metadata ok:", [(t["name"], t["datatype"], t["shape"]) for t in mm["inputs"] + mm["outputs"]])

inp = exp["inputs"][0]
x = np.array(inp["data"], dtype=np.float32).reshape(inp["shape"])


def check(result, binary):
    for out in exp["outputs"]:
        got = result.as_numpy(out["name"])
        assert got is not None, f"missing output {out['name']}"
        assert list(got.shape) == out["shape"], (out["name"], got.shape, out["shape"])
        if out["datatype"] == "BYTES":
            got_list = [v.decode() if isinstance(v, bytes) else str(v) for v in got.ravel()]
            assert got_list == out["data"], (got_list, out["data"])
        else:
            want = np.array(out["data"]).reshape(out["shape"])
            assert np.allclose(got, want, rtol=1e-5, atol=1e-6), (out["name"], got, want)
    print(f"infer ok (binary={binary})")


for binary in (False, True):
    i = httpclient.InferInput(inp["name"], list(x.shape), "FP32")
    i.set_data_from_numpy(x, binary_data=binary)
    outs = [httpclient.InferRequestedOutput(o["name"], binary_data=binary) for o in exp["outputs"]]
    check(client.infer(model, [i], outputs=outs, request_id="triton-1"), binary)

# Errors come back as the client's exception, carrying kinfer's message.
bad = httpclient.InferInput("nope", list(x.shape), "FP32")
bad.set_data_from_numpy(x, binary_data=False)
try:
    client.infer(model, [bad])
    raise SystemExit("expected an error for an unknown input")
except InferenceServerException as e:
    assert "unknown input 'nope'" in str(e), str(e)
    print("error ok:", e)
print("tritonclient: all checks passed")
