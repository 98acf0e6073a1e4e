"""Makes the example models and their expected outputs.

Each model is a real scikit-learn model exported with skl2onnx; the expected outputs are
computed by Python onnxruntime on the same file, so the Rust tests compare the server's answers
with ONNX Runtime's own. Run with `make models` (installs scikit-learn into .tools/modelgen).

  iris     LogisticRegression, 4 float features -> int64 label + 3 class probabilities
  tabular  GradientBoostingClassifier, 30 float features -> string label ("legit"/"fraud")
           + 2 probabilities (stands in for a fraud / bot score)
  mlp      MLPRegressor (64, 64), 30 float features -> 1 float score
  iris_zipmap  the iris model exported with ZipMap left on (sequence of maps); the runtime
           refuses it at load with a message that says to export with zipmap disabled
"""

import json
import os

import numpy as np
import onnxruntime as ort
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_iris, make_classification, make_regression
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPRegressor

HERE = os.path.dirname(os.path.abspath(__file__))
OPSET = {"": 17, "ai.onnx.ml": 3}
RNG = np.random.default_rng(7)

DTYPES = {
    np.dtype(np.float32): "FP32",
    np.dtype(np.float64): "FP64",
    np.dtype(np.int64): "INT64",
    np.dtype(np.int32): "INT32",
    np.dtype(np.bool_): "BOOL",
}


def tensor(name, arr):
    arr = np.asarray(arr)
    if arr.dtype.kind in ("U", "O"):
        return {"name": name, "datatype": "BYTES", "shape": list(arr.shape), "data": [str(v) for v in arr.ravel()]}
    return {"name": name, "datatype": DTYPES[arr.dtype], "shape": list(arr.shape), "data": arr.ravel().tolist()}


def save(name, onx, x, input_name, note):
    d = os.path.join(HERE, "models", name)
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "model.onnx")
    with open(path, "wb") as f:
        f.write(onx.SerializeToString())
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    outs = sess.run(None, {input_name: x})
    expected = {
        "model": name,
        "note": note,
        "inputs": [tensor(input_name, x)],
        "outputs": [tensor(o.name, v) for o, v in zip(sess.get_outputs(), outs)],
    }
    with open(os.path.join(d, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")
    print(f"{name}: {os.path.getsize(path)} bytes, outputs {[o.name for o in sess.get_outputs()]}")


def main():
    iris = load_iris()
    X, y = iris.data.astype(np.float32), iris.target
    clf = LogisticRegression(max_iter=500).fit(X, y)
    onx = to_onnx(clf, initial_types=[("input", FloatTensorType([None, 4]))], target_opset=OPSET, options={id(clf): {"zipmap": False}})
    save("iris", onx, X[[0, 50, 100, 25, 75, 120]], "input", "iris LogisticRegression; labels 0=setosa 1=versicolor 2=virginica")

    onx_zip = to_onnx(clf, initial_types=[("input", FloatTensorType([None, 4]))], target_opset=OPSET)
    d = os.path.join(HERE, "models", "iris_zipmap")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "model.onnx"), "wb") as f:
        f.write(onx_zip.SerializeToString())

    Xt, yt = make_classification(n_samples=4000, n_features=30, n_informative=12, weights=[0.9, 0.1], random_state=3)
    Xt = Xt.astype(np.float32)
    labels = np.where(yt == 1, "fraud", "legit")
    gbc = GradientBoostingClassifier(n_estimators=60, max_depth=3, random_state=3).fit(Xt, labels)
    onx = to_onnx(gbc, initial_types=[("input", FloatTensorType([None, 30]))], target_opset=OPSET, options={id(gbc): {"zipmap": False}})
    pick = np.concatenate([np.where(yt == 1)[0][:3], np.where(yt == 0)[0][:5]])
    save("tabular", onx, Xt[pick], "input", "30-feature GradientBoostingClassifier; string labels legit/fraud")

    Xm, ym = make_regression(n_samples=3000, n_features=30, noise=0.1, random_state=5)
    Xm = Xm.astype(np.float32)
    mlp = MLPRegressor(hidden_layer_sizes=(64, 64), max_iter=300, random_state=5).fit(Xm, ym / 100.0)
    onx = to_onnx(mlp, initial_types=[("input", FloatTensorType([None, 30]))], target_opset=OPSET)
    save("mlp", onx, Xm[:8], "input", "MLPRegressor (64, 64) on 30 features; one float output per row")


if __name__ == "__main__":
    main()
