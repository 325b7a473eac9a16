#!/usr/bin/env python3
"""Golden data for GLM-4V image input (coordinator/image/, tests/test_image.c).

Developers only, never run by CI (needs Pillow, numpy, torch, torchvision):
    pip install Pillow numpy torch torchvision
    python3 tests/image/make_image_golden.py [--out tests/image/data]

Makes small images in every format and layout the decoder takes (smooth
gradients, noise and hard-edged blocks, so resampling overshoot and any
rounding difference show) and, for each, the reference of glm4v-spec.md §4:

    T.Compose([T.Resize((S, S), interpolation=BICUBIC), T.ToTensor(),
               T.Normalize(CLIP_MEAN, CLIP_STD)])(Image.open(p).convert("RGB"))

at S = 56 and 112 (S = 1120 as checksums only). Stored compactly: the
normalised value of a pixel depends only on its channel and uint8 value, so
norm_table.f32 holds the 3 x 256 float32 values torchvision gives for 0..255
and each case stores the uint8 CHW image that, looked up in the table, IS the
reference tensor (the script asserts this bit for bit, so a torchvision that
did anything else than PIL resize + this table would stop it). The C test
compares its float output with the looked-up tensor and its uint8 resize with
the stored bytes.

Also the decoded RGB bytes' FNV-1a 64 checksum (PIL's convert("RGB").tobytes())
and bad files that must fail with a message (substring in golden.json).
"""
import argparse
import io
import json
import os
import struct
import zlib

import numpy as np
import PIL
import torch
import torchvision
import torchvision.transforms as T
from PIL import Image, features

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
SIZES = [56, 112]
BIG = 1120
SEED = 4096


def fnv1a64(b):
    h = 0xCBF29CE484222325
    for x in b:
        h ^= x
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return "%016x" % h


def fnv1a64_np(a):
    # same as fnv1a64 over a.tobytes(), in numpy chunks would be no faster; bytes are small enough
    return fnv1a64(a.tobytes())


def picture(rng, w, h, ch=3):
    """Gradients + noise + a few hard black/white blocks (bicubic overshoot, clipping)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    planes = []
    for c in range(ch):
        g = 255.0 * (0.5 + 0.5 * np.sin((x / w) * (2 + c) * np.pi + (y / h) * (1 + c) * 1.3 + c))
        planes.append(g)
    a = np.stack(planes, axis=-1) + rng.normal(0, 18, (h, w, ch))
    for _ in range(3):
        x0, y0 = rng.integers(0, w), rng.integers(0, h)
        a[y0:y0 + max(1, h // 5), x0:x0 + max(1, w // 6)] = rng.choice([0.0, 255.0])
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def png_bytes(w, h, bd, ct, pixels, interlace=False, extra=(), ihdr_crc_ok=True, idat_crc_ok=True):
    """A PNG from raw samples (pixels: uint8 or >u2 array (h, w, channels)), for what PIL cannot write:
    16-bit samples, Adam7 interlace, broken CRCs, lying headers."""
    def chunk(t, d, ok=True):
        crc = zlib.crc32(t + d) ^ (0 if ok else 0xFFFFFFFF)
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", crc)

    def rows_of(sub):
        return b"".join(b"\0" + sub[i].tobytes() for i in range(sub.shape[0]))

    if pixels is None:
        raw = b""
    elif not interlace:
        raw = rows_of(pixels)
    else:
        raw = b""
        for x0, y0, dx, dy in [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
                               (0, 1, 1, 2)]:
            sub = pixels[y0::dy, x0::dx]
            if sub.size:
                raw += rows_of(sub)
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, bd, ct, 0, 0, 1 if interlace else 0),
                                        ihdr_crc_ok)
    for t, d in extra:
        out += chunk(t, d)
    out += chunk(b"IDAT", zlib.compress(raw, 9), idat_crc_ok) + chunk(b"IEND", b"")
    return out


def save(img, **kw):
    b = io.BytesIO()
    img.save(b, **kw)
    return b.getvalue()


def make_images(rng):
    """name -> (bytes, note)."""
    out = {}
    out["rgb8_97x61.png"] = (save(Image.fromarray(picture(rng, 97, 61)), format="PNG"), "PNG RGB 8-bit")
    rgba = np.concatenate([picture(rng, 200, 150), rng.integers(0, 256, (150, 200, 1), dtype=np.uint8)], axis=-1)
    rgba[:20, :30, 3] = 0  # fully transparent pixels keep their colour: convert("RGB") drops alpha
    out["rgba_200x150.png"] = (save(Image.fromarray(rgba, "RGBA"), format="PNG"), "PNG RGBA: alpha dropped")
    out["gray_31x45.png"] = (save(Image.fromarray(picture(rng, 31, 45, 1)[..., 0], "L"), format="PNG"),
                             "PNG gray 8-bit")
    la = np.stack([picture(rng, 45, 31, 1)[..., 0], rng.integers(0, 256, (31, 45), dtype=np.uint8)], axis=-1)
    out["gray_alpha_45x31.png"] = (save(Image.fromarray(la, "LA"), format="PNG"), "PNG gray+alpha: alpha dropped")
    pal = Image.fromarray(picture(rng, 97, 61)).quantize(colors=200, method=Image.Quantize.MEDIANCUT)
    out["palette_97x61.png"] = (save(pal, format="PNG", transparency=bytes([0, 128] + [255] * 30)),
                                "PNG palette 8-bit with tRNS (ignored)")
    pal4 = Image.fromarray(picture(rng, 45, 31)).quantize(colors=16)
    out["palette4_45x31.png"] = (save(pal4, format="PNG", bits=4), "PNG palette 4-bit")
    g2 = (picture(rng, 33, 17, 1)[..., 0] >> 6).astype(np.uint8)
    packed = np.zeros((17, 9), np.uint8)
    for x in range(33):
        packed[:, x // 4] |= (g2[:, x] << (6 - 2 * (x % 4))).astype(np.uint8)
    out["gray2_33x17.png"] = (png_bytes(33, 17, 2, 0, packed), "PNG gray 2-bit (scaled x85)")
    rgb16 = (picture(rng, 61, 97).astype(np.uint16) * 257 + rng.integers(0, 257, (97, 61, 3))).astype(">u2")
    out["rgb16_61x97.png"] = (png_bytes(61, 97, 16, 2, rgb16), "PNG RGB 16-bit: PIL keeps the high byte")
    g16 = (picture(rng, 40, 30, 1).astype(np.uint16) * 3).astype(">u2")  # 0..765: PIL I;16 -> RGB clips at 255
    out["gray16_40x30.png"] = (png_bytes(40, 30, 16, 0, g16), "PNG gray 16-bit: PIL's I;16 clips to 255")
    rgba16 = (rng.integers(0, 65536, (30, 40, 4))).astype(">u2")
    out["rgba16_40x30.png"] = (png_bytes(40, 30, 16, 6, rgba16), "PNG RGBA 16-bit: high byte, alpha dropped")
    out["adam7_97x61.png"] = (png_bytes(97, 61, 8, 2, picture(rng, 97, 61), interlace=True), "PNG Adam7 interlaced")
    out["upscale_23x17.png"] = (save(Image.fromarray(picture(rng, 23, 17)), format="PNG"), "PNG, upscaled")
    out["width56_56x130.png"] = (save(Image.fromarray(picture(rng, 56, 130)), format="PNG"),
                                 "PNG, width = 56: no horizontal pass at S=56; Pillow 13 runs the vertical pass first at S=112")
    out["tall_40x150.png"] = (save(Image.fromarray(picture(rng, 40, 150)), format="PNG"),
                              "PNG, tall: Pillow 13 runs the vertical pass first at S=56 and 112")
    out["tall_3x320.png"] = (save(Image.fromarray(picture(rng, 3, 320)), format="PNG"),
                             "PNG, over 100:1: Pillow 12.2/12.3 and 13 run the vertical pass first")
    big = picture(rng, 400, 300)
    out["baseline_400x300.jpg"] = (save(Image.fromarray(big), format="JPEG", quality=85), "JPEG baseline 4:2:0")
    out["baseline444_200x150.jpg"] = (save(Image.fromarray(picture(rng, 200, 150)), format="JPEG", quality=90,
                                           subsampling=0), "JPEG baseline 4:4:4")
    out["s422_31x45.jpg"] = (save(Image.fromarray(picture(rng, 31, 45)), format="JPEG", quality=90, subsampling=1),
                             "JPEG 4:2:2, odd size")
    out["progressive_97x61.jpg"] = (save(Image.fromarray(picture(rng, 97, 61)), format="JPEG", quality=80,
                                         progressive=True), "JPEG progressive")
    out["gray_61x45.jpg"] = (save(Image.fromarray(picture(rng, 61, 45, 1)[..., 0], "L"), format="JPEG", quality=90),
                             "JPEG grayscale")
    cmyk = Image.fromarray(picture(rng, 64, 48, 4).reshape(48, 64, 4), "CMYK")
    out["cmyk_64x48.jpg"] = (save(cmyk, format="JPEG", quality=90), "JPEG CMYK (Adobe, inverted as PIL reads it)")
    if features.check("webp"):
        out["lossy_97x61.webp"] = (save(Image.fromarray(picture(rng, 97, 61)), format="WEBP", quality=80),
                                   "WebP lossy")
        wa = np.concatenate([picture(rng, 61, 45), rng.integers(0, 256, (45, 61, 1), dtype=np.uint8)], axis=-1)
        out["lossless_alpha_61x45.webp"] = (save(Image.fromarray(wa, "RGBA"), format="WEBP", lossless=True),
                                            "WebP lossless with alpha")
        out["lossy_alpha_61x45.webp"] = (save(Image.fromarray(wa, "RGBA"), format="WEBP", quality=80),
                                         "WebP lossy with alpha")
    return out


def make_bad(rng, good):
    """name -> (bytes, message substring)."""
    jpg = good["baseline_400x300.jpg"][0]
    prog = good["progressive_97x61.jpg"][0]
    png = good["rgb8_97x61.png"][0]
    bad = {}
    bad["truncated.jpg"] = (jpg[: len(jpg) * 6 // 10], "truncated JPEG")
    bad["truncated_progressive.jpg"] = (prog[: len(prog) // 2], "truncated JPEG")
    bad["header_only.jpg"] = (jpg[:300], "JPEG")
    bad["truncated.png"] = (png[: len(png) * 6 // 10], "truncated PNG")
    pic = picture(rng, 16, 16)
    bad["bad_idat_crc.png"] = (png_bytes(16, 16, 8, 2, pic, idat_crc_ok=False), "CRC error")
    bad["bad_ihdr_crc.png"] = (png_bytes(16, 16, 8, 2, pic, ihdr_crc_ok=False), "CRC error")
    bad["zero_width.png"] = (png_bytes(0, 16, 8, 2, None), "zero")
    # IHDR claims 100000 x 100000 (1e10 pixels); the IDAT is tiny
    bad["bomb_100000x100000.png"] = (png_bytes(100000, 100000, 8, 2, None), "decompression bomb")
    # a real JPEG whose SOF0 claims 30000 x 30000
    b = bytearray(good["gray_61x45.jpg"][0])
    i = b.index(b"\xff\xc0")
    b[i + 5:i + 9] = struct.pack(">HH", 30000, 30000)
    bad["bomb_30000x30000.jpg"] = (bytes(b), "decompression bomb")
    bad["image.gif"] = (save(Image.fromarray(pic), format="GIF"), "GIF")
    bad["image.bmp"] = (save(Image.fromarray(pic), format="BMP"), "BMP")
    bad["image.tiff"] = (save(Image.fromarray(pic), format="TIFF"), "TIFF")
    bad["empty.bin"] = (b"", "empty")
    r = bytes([0x42, 0x17]) + rng.integers(0, 256, 62, dtype=np.uint8).tobytes()
    bad["random.bin"] = (r, "unknown magic bytes 42 17")
    if "lossy_97x61.webp" in good:
        wb = good["lossy_97x61.webp"][0]
        bad["truncated.webp"] = (wb[: len(wb) // 2], "WebP")
    return bad


def reference(path, S):
    tf = T.Compose([T.Resize((S, S), interpolation=T.InterpolationMode.BICUBIC), T.ToTensor(),
                    T.Normalize(MEAN, STD)])
    img = Image.open(path).convert("RGB")
    t = tf(img).numpy()
    u8 = np.asarray(Image.open(path).convert("RGB").resize((S, S), Image.Resampling.BICUBIC)).transpose(2, 0, 1)
    return t, np.ascontiguousarray(u8)


OTHER_PILLOW = r"""
import json, sys
import numpy as np
import PIL
from PIL import Image
def fnv(b):
    h = 0xCBF29CE484222325
    for x in b:
        h ^= x
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return "%016x" % h
out = {"version": PIL.__version__, "cases": {}}
for p, name in json.loads(sys.argv[1]):
    rgb = Image.open(p).convert("RGB")
    c = {"rgb": fnv(rgb.tobytes())}
    for S in json.loads(sys.argv[2]):
        u8 = np.ascontiguousarray(np.asarray(rgb.resize((S, S), Image.Resampling.BICUBIC)).transpose(2, 0, 1))
        c[str(S)] = fnv(u8.tobytes())
    out["cases"][name] = c
print(json.dumps(out))
"""


def other_pillow(path, files):
    """Checksums of PIL's convert("RGB") and resize under another Pillow (pip install --target PATH Pillow==X):
    Pillow changed its resize pass order in 12.2 and 13.0 (image.h, image_pass_order)."""
    import subprocess
    import sys
    env = dict(os.environ, PYTHONPATH=path)
    r = subprocess.run([sys.executable, "-c", OTHER_PILLOW, json.dumps(files), json.dumps(SIZES + [BIG])], env=env,
                       check=True, capture_output=True, text=True)
    return json.loads(r.stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "data"))
    ap.add_argument("--other-pillow", action="append", default=[],
                    help="a folder with another Pillow (pip install --target DIR Pillow==12.1.0): its resize "
                         "checksums are stored too")
    args = ap.parse_args()
    os.makedirs(os.path.join(args.out, "bad"), exist_ok=True)
    rng = np.random.default_rng(SEED)

    # The normalisation table: torchvision's ToTensor + Normalize of the values 0..255.
    ramp = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)
    table = T.Normalize(MEAN, STD)(T.ToTensor()(Image.fromarray(ramp, "RGB"))).numpy()[:, 0, :]  # (3, 256)
    table.astype("<f4").tofile(os.path.join(args.out, "norm_table.f32"))

    good = make_images(rng)
    cases = []
    for name, (data, note) in good.items():
        p = os.path.join(args.out, name)
        with open(p, "wb") as f:
            f.write(data)
        im = Image.open(p)
        mode = im.mode
        rgb = im.convert("RGB")
        case = {"file": name, "note": note, "pil_mode": mode, "width": rgb.width, "height": rgb.height,
                "rgb_fnv1a64": fnv1a64(rgb.tobytes()), "sizes": {}}
        for S in SIZES + [BIG]:
            t, u8 = reference(p, S)
            looked = table[np.arange(3)[:, None, None], u8]
            assert looked.dtype == np.float32 and np.array_equal(looked.view(np.uint32), t.view(np.uint32)), \
                (name, S, "torchvision's tensor is not PIL resize + the table")
            if S == BIG:
                case["sizes"][str(S)] = {"u8_chw_fnv1a64": fnv1a64(u8.tobytes()),
                                         "f32_chw_fnv1a64": fnv1a64(t.astype("<f4").tobytes())}
            else:
                fn = "%s.s%d.u8" % (name, S)
                u8.tofile(os.path.join(args.out, fn))
                case["sizes"][str(S)] = {"u8_chw": fn}
        cases.append(case)

    files = [(os.path.join(args.out, c["file"]), c["file"]) for c in cases]
    for path in args.other_pillow:
        o = other_pillow(path, files)
        for c in cases:
            oc = o["cases"][c["file"]]
            assert oc["rgb"] == c["rgb_fnv1a64"], (c["file"], "Pillow %s decodes differently" % o["version"])
            for S in SIZES + [BIG]:
                c["sizes"][str(S)].setdefault("u8_chw_fnv1a64_by_pillow", {})[o["version"]] = oc[str(S)]
    for c in cases:  # this Pillow's own, beside the others'
        for S in SIZES + [BIG]:
            d = c["sizes"][str(S)]
            if S == BIG:
                own = d["u8_chw_fnv1a64"]
            else:
                with open(os.path.join(args.out, d["u8_chw"]), "rb") as f:
                    own = fnv1a64(f.read())
            d.setdefault("u8_chw_fnv1a64_by_pillow", {})[PIL.__version__] = own

    bad_cases = []
    for name, (data, msg) in make_bad(rng, good).items():
        with open(os.path.join(args.out, "bad", name), "wb") as f:
            f.write(data)
        bad_cases.append({"file": "bad/" + name, "error": msg})

    # A data URL of one PNG (the OpenAI image_url form), with line breaks as some clients send.
    import base64
    b64 = base64.b64encode(good["palette4_45x31.png"][0]).decode()
    with open(os.path.join(args.out, "palette4_45x31.png.dataurl"), "w") as f:
        f.write("data:image/png;base64," + "\n".join(b64[i:i + 76] for i in range(0, len(b64), 76)))

    meta = {"generator": "tests/image/make_image_golden.py",
            "versions": {"Pillow": PIL.__version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
                         "libjpeg_turbo": features.version_feature("libjpeg_turbo"),
                         "webp": features.version_module("webp")},
            "mean": MEAN, "std": STD, "sizes": SIZES, "big": BIG, "norm_table": "norm_table.f32",
            "images": cases, "bad": bad_cases,
            "data_url": {"file": "palette4_45x31.png.dataurl", "decodes_to": "palette4_45x31.png"}}
    with open(os.path.join(args.out, "golden.json"), "w") as f:
        json.dump(meta, f, indent=1)
    total = sum(os.path.getsize(os.path.join(dp, fn)) for dp, _, fns in os.walk(args.out) for fn in fns)
    print("wrote %d images, %d bad files, %d bytes in %s" % (len(cases), len(bad_cases), total, args.out))


if __name__ == "__main__":
    main()
