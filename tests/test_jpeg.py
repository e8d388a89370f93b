"""``--decode device``: JPEG bytes decoded, oriented, resized and cropped where the model runs.

Everything here runs on the CPU device (torchvision's libjpeg decoder), which exercises the same
code as CUDA except the decoder itself; test_gpu.py runs the nvJPEG version.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import write_image
from PIL import Image, ImageOps

from featx.errors import FeatxError
from featx.extraction import ExtractOptions, extract
from featx.jpeg import decode_batch, orient, resize_crop, resolve_decode, sniff
from featx.preprocess import Preprocess
from featx.store import load_features, store_info


def _photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth content (JPEG-friendly, so decoders and filters agree closely), with detail."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack(
        [127 + 100 * np.sin(xx / (7 + seed) + c) * np.cos(yy / (11 + c)) for c in range(3)],
        axis=-1,
    )
    return np.clip(base + rng.normal(0, 4, base.shape), 0, 255).astype(np.uint8)


def _jpeg(path, arr: np.ndarray, orientation: int = 1, mode: str = "RGB"):
    img = Image.fromarray(arr)
    if mode != "RGB":
        img = img.convert(mode)
    kw = {"quality": 95}
    if orientation != 1:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kw["exif"] = exif.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, "JPEG", **kw)
    return path


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_matches_pillow_exif_transpose(tmp_path, orientation):
    arr = np.random.default_rng(orientation).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = orientation
    img.info["exif"] = exif.tobytes()
    want = np.asarray(ImageOps.exif_transpose(img))
    got = orient(torch.from_numpy(arr).permute(2, 0, 1), orientation).permute(1, 2, 0).numpy()
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
@pytest.mark.parametrize("size", [(375, 500), (500, 375), (64, 64), (300, 260)])
def test_resize_crop_matches_the_pillow_path(size, interpolation):
    pre = Preprocess(crop_size=224, resize_size=256, interpolation=interpolation)
    arr = _photo(*size)
    want = pre.to_uint8(Image.fromarray(arr)).int()
    got = resize_crop([torch.from_numpy(arr).permute(2, 0, 1).contiguous()], pre)[0].int()
    assert got.shape == want.shape == (3, 224, 224)
    diff = (got - want).abs()
    assert diff.float().mean() < 0.6  # same geometry (a shifted crop would differ by ~10)
    if interpolation == "nearest":  # the same source pixel, but for coordinates on a tie
        assert (diff == 0).float().mean() > 0.97
    else:  # antialiased filters that differ only in rounding
        assert diff.max() <= 3


def test_resize_crop_groups_mixed_sizes_in_order():
    pre = Preprocess(crop_size=16, resize_size=18)
    sizes = [(30, 40), (40, 30), (30, 40), (18, 18)]
    imgs = [
        torch.from_numpy(_photo(h, w, i)).permute(2, 0, 1).contiguous()
        for i, (h, w) in enumerate(sizes)
    ]
    batch = resize_crop(imgs, pre)
    for i, im in enumerate(imgs):
        one = resize_crop([im], pre)[0]
        assert torch.equal(batch[i], one)


def test_sniff_accepts_only_what_the_device_decodes(tmp_path):
    ok = _jpeg(tmp_path / "ok.jpg", _photo(20, 24), orientation=6)
    gray = _jpeg(tmp_path / "gray.jpg", _photo(20, 24), mode="L")
    cmyk = _jpeg(tmp_path / "cmyk.jpg", _photo(20, 24), mode="CMYK")
    png = write_image(tmp_path / "p.png", 1)
    data = ok.read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.jpg").write_bytes(b"not a jpeg at all")
    (tmp_path / "empty.jpg").write_bytes(b"")
    raw, o = sniff(str(ok))
    assert o == 6 and raw.dtype == torch.uint8 and bytes(raw.numpy()) == data
    assert sniff(str(gray)) is not None
    for bad in (cmyk, png, tmp_path / "trunc.jpg", tmp_path / "junk.jpg", tmp_path / "empty.jpg"):
        assert sniff(str(bad)) is None, bad.name
    assert sniff(str(tmp_path / "missing.jpg")) is None


def test_decode_batch_retries_one_by_one_and_reports_rejects(tmp_path):
    pre = Preprocess(crop_size=16, resize_size=18)
    good = [sniff(str(_jpeg(tmp_path / f"{i}.jpg", _photo(20 + i, 24, i))))[0] for i in range(3)]
    junk = torch.frombuffer(
        bytearray(b"\xff\xd8\xff\xe0" + b"\x00" * 64 + b"\xff\xd9"), dtype=torch.uint8
    )
    batch, ok, rejected = decode_batch([good[0], junk, good[1], good[2]], [1, 1, 1, 1], pre, "cpu")
    assert ok == [0, 2, 3] and rejected == [1]
    assert batch.shape == (3, 3, 16, 16) and batch.dtype == torch.uint8
    alone, _, _ = decode_batch([good[1]], [1], pre, "cpu")
    assert torch.equal(batch[1], alone[0])


def test_resolve_decode(monkeypatch, caplog):
    import featx.jpeg as jpeg

    cpu, cuda, mps = torch.device("cpu"), torch.device("cuda"), torch.device("mps")
    assert resolve_decode("auto", cpu) == "cpu"
    assert resolve_decode("auto", mps) == "cpu"
    assert resolve_decode("device", cpu) == "device"  # torchvision's CPU decoder, main process
    monkeypatch.setattr(jpeg, "decoder_problem", lambda dev: None)
    assert resolve_decode("auto", cuda) == "device"
    # A CUDA decoder that does not work: auto falls back with a warning, explicit is an error.
    monkeypatch.setattr(jpeg, "decoder_problem", lambda dev: "nvjpeg missing")
    with caplog.at_level("WARNING", logger="featx.jpeg"):
        assert resolve_decode("auto", cuda) == "cpu"
    assert "nvjpeg missing" in caplog.text
    with pytest.raises(FeatxError, match="nvjpeg missing.*--decode cpu"):
        resolve_decode("device", cuda)
    with pytest.raises(FeatxError, match="--decode"):
        resolve_decode("gpu", cpu)
    with pytest.raises(FeatxError, match="--decode cpu"):
        resolve_decode("device", mps)


def test_decoder_problem_probes_the_real_decoder():
    from featx.jpeg import decoder_problem

    assert decoder_problem(torch.device("cpu")) is None
    if not torch.cuda.is_available():
        assert decoder_problem(torch.device("cuda")) is not None


def _cos(a, b):
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_device_decode_extraction_matches_cpu_decode(tmp_path, tiny_backbone):
    """Mixed folder: JPEGs (some rotated by EXIF, one greyscale) take the device path; PNG,
    CMYK, truncated and junk files take the CPU path; features and failures agree."""
    root = tmp_path / "imgs"
    for i in range(10):
        _jpeg(root / "a" / f"{i}.jpg", _photo(40 + 3 * i, 56, i), orientation=1 + i % 8)
    _jpeg(root / "b" / "gray.jpg", _photo(40, 50, 11), mode="L")
    _jpeg(root / "b" / "cmyk.jpg", _photo(40, 50, 12), mode="CMYK")
    write_image(root / "b" / "p.png", 13)
    data = (root / "a" / "0.jpg").read_bytes()
    (root / "b" / "trunc.jpg").write_bytes(data[: len(data) // 2])
    (root / "b" / "junk.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x01" * 64 + b"\xff\xd9")
    runs = {}
    for decode in ("cpu", "device"):
        opts = ExtractOptions(device="cpu", workers=0, batch_size=5, decode=decode)
        r = extract(root, tiny_backbone, store=tmp_path / f"{decode}.h5", options=opts)
        assert r.decode == decode
        runs[decode] = (r, load_features(r.store), store_info(r.store))
    (rc, fc, ic), (rd, fd, idd) = runs["cpu"], runs["device"]
    assert (rd.n_items, rd.n_failed) == (rc.n_items, rc.n_failed) == (13, 2)
    assert {f["path"] for f in idd["failed"]} == {f["path"] for f in ic["failed"]}
    assert list(fd.keys) == list(fc.keys)
    assert _cos(fd.X, fc.X).min() > 0.999


def test_device_decode_with_workers_and_cli(tmp_path, tiny_backbone):
    from click.testing import CliRunner

    from featx.cli import cli

    root = tmp_path / "imgs"
    for i in range(6):
        _jpeg(root / "c" / f"{i}.jpg", _photo(30, 40, i))
    r = CliRunner().invoke(
        cli,
        [
            "extract",
            str(root),
            "-b",
            "resnet18",
            "--weights",
            "none",
            "--image-size",
            "32",
            "--device",
            "cpu",
            "--decode",
            "device",
            "--workers",
            "2",
            "--batch-size",
            "4",
            "--store",
            str(tmp_path / "s.h5"),
            "-q",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    assert '"decode": "device"' in r.output and '"n_items": 6' in r.output
    r = CliRunner().invoke(cli, ["extract", str(root), "--decode", "gpu"])
    assert r.exit_code != 0 and "gpu" in r.output
