"""Writes a valid ONNX model of about N*N*4 bytes (Y = X @ W, W an N×N float initializer) without
the onnx package: the protobuf is encoded by hand. For the `cold` benchmark's time to ready.
With `--score`, Y = (X @ W) @ V with V an N×1 column: one output per row, a dense layer whose run
time grows with N while the response stays one number per row (the batching benchmark's model).
Usage: make_big_onnx.py OUT N [--score]"""

import struct
import sys


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def fv(field: int, v: int) -> bytes:
    return varint(field << 3) + varint(v)


def fb(field: int, b: bytes) -> bytes:
    return varint(field << 3 | 2) + varint(len(b)) + b


def value_info(name: str, dims: list) -> bytes:
    shape = b"".join(fb(1, fb(2, d.encode()) if isinstance(d, str) else fv(1, d)) for d in dims)
    tensor_type = fv(1, 1) + fb(2, shape)  # FLOAT
    return fb(1, name.encode()) + fb(2, fb(1, tensor_type))


def main() -> None:
    out, n = sys.argv[1], int(sys.argv[2])
    score = "--score" in sys.argv[3:]
    # Deterministic, not compressible by accident: a small LCG.
    raw = bytearray(n * n * 4)
    x = 12345
    for i in range(0, len(raw), 4096):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        struct.pack_into("<f", raw, i, (x % 1000) / 1e6)
    weight = fv(1, n) + fv(1, n) + fv(2, 1) + fb(8, b"W") + fb(9, bytes(raw))
    if score:
        col = struct.pack(f"<{n}f", *[((i * 7) % 13 - 6) / 100.0 for i in range(n)])
        column = fv(1, n) + fv(1, 1) + fv(2, 1) + fb(8, b"V") + fb(9, col)
        hidden = fb(1, b"X") + fb(1, b"W") + fb(2, b"H") + fb(3, b"hidden") + fb(4, b"MatMul")
        head = fb(1, b"H") + fb(1, b"V") + fb(2, b"Y") + fb(3, b"score") + fb(4, b"MatMul")
        graph = (
            fb(1, hidden)
            + fb(1, head)
            + fb(2, b"dense")
            + fb(5, weight)
            + fb(5, column)
            + fb(11, value_info("X", ["batch", n]))
            + fb(12, value_info("Y", ["batch", 1]))
        )
    else:
        node = fb(1, b"X") + fb(1, b"W") + fb(2, b"Y") + fb(3, b"matmul") + fb(4, b"MatMul")
        graph = (
            fb(1, node)
            + fb(2, b"big")
            + fb(5, weight)
            + fb(11, value_info("X", ["batch", n]))
            + fb(12, value_info("Y", ["batch", n]))
        )
    model = fv(1, 8) + fb(2, b"kinfer-bench") + fb(7, graph) + fb(8, fb(1, b"") + fv(2, 17))
    with open(out, "wb") as f:
        f.write(model)


if __name__ == "__main__":
    main()
