"""Makes the test images of the orientation example and their expected outputs.

  python examples/make_image_examples.py           # recompute expected.json from the committed images
  python examples/make_image_examples.py --images  # also re-render the images (needs Pillow)

The images are short lines of text rendered with Pillow's default font, upright and rotated by
180°, as PNG and JPEG, at sizes other than the model's 48x192 so that resizing is exercised.

expected.json holds, per image, the probabilities Python onnxruntime computes with the
preprocessing the server is configured with (KINFER_IMAGE_PREPROCESS in expected.json):
Pillow decode -> RGB -> resize to 192x48 (width x height) with bilinear filtering ->
(pixel / 255 - 0.5) / 0.5 -> NCHW. The server decodes with the `image` crate and resizes with
its bilinear (triangle) filter, which is not bit-identical to Pillow's, so the Rust tests compare
the predicted label exactly and the probabilities within an absolute tolerance (tolerance in
expected.json).
"""

import json
import os
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageDraw, ImageFont

HERE = os.path.dirname(os.path.abspath(__file__))
DIR = os.path.join(HERE, "models", "orientation")
LABELS = ["upright", "upside_down"]
PREPROCESS = "resize=48x192,mean=0.5,0.5,0.5,std=0.5,0.5,0.5,layout=nchw,channels=rgb"

# file, text, (width, height), font size, rotated by 180°
IMAGES = [
    ("upright.png", "Fresh apples 2kg", (240, 48), 30, False),
    ("upside_down.png", "Fresh apples 2kg", (240, 48), 30, True),
    ("upright.jpg", "Quality check OK", (256, 56), 32, False),
    ("upside_down.jpg", "Lot 42 bananas", (300, 60), 36, True),
]


def render(text, size, font_size, rotate):
    img = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=font_size)
    draw.text((6, (size[1] - font_size) // 2 - 2), text, fill=(20, 20, 20), font=font)
    return img.rotate(180) if rotate else img


def preprocess(path):
    img = Image.open(path).convert("RGB").resize((192, 48), Image.BILINEAR)
    x = np.asarray(img, dtype=np.float32) / 255.0
    x = (x - 0.5) / 0.5
    return x.transpose(2, 0, 1)[None]


def main():
    os.makedirs(os.path.join(DIR, "images"), exist_ok=True)
    if "--images" in sys.argv:
        for name, text, size, font_size, rotate in IMAGES:
            img = render(text, size, font_size, rotate)
            path = os.path.join(DIR, "images", name)
            if name.endswith(".jpg"):
                img.save(path, quality=85)
            else:
                img.save(path, optimize=True)
    sess = ort.InferenceSession(os.path.join(DIR, "model.onnx"))
    rows = []
    for name, _, _, _, rotate in IMAGES:
        probs = sess.run(None, {"x": preprocess(os.path.join(DIR, "images", name))})[0][0]
        label = LABELS[int(np.argmax(probs))]
        assert label == ("upside_down" if rotate else "upright"), (name, probs)
        rows.append({"file": name, "label": label, "probabilities": [float(p) for p in probs]})
    expected = {
        "model": "ch_ppocr_mobile_v2.0_cls (rapidocr-onnxruntime 1.4.4, Apache-2.0)",
        "input": "x",
        "output": sess.get_outputs()[0].name,
        "preprocess": PREPROCESS,
        "labels": LABELS,
        "tolerance": 0.02,
        "images": rows,
    }
    with open(os.path.join(DIR, "expected.json"), "w") as f:
        json.dump(expected, f, indent=2)
        f.write("\n")
    for r in rows:
        print(r)


if __name__ == "__main__":
    main()
