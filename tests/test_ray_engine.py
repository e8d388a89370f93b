"""``--engine ray`` on a real local Ray runtime: the same store as the local engine, row by row,
also after an actor is killed mid-run and after the driver is interrupted; the missing extra."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from helpers import write_image

from featx.errors import FeatxError
from featx.extraction import extract
from featx.options import ExtractOptions
from featx.store import load_features, store_info


@pytest.fixture(scope="module")
def ray_runtime():
    """One local Ray runtime (2 CPUs) shared by this module's tests, shut down after them."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    import helpers
    from ray import cloudpickle

    # The tests' TinyBackbone lives in tests/helpers.py, which Ray workers cannot import: ship
    # it by value.
    cloudpickle.register_pickle_by_value(helpers)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield ray
    ray.shutdown()
    cloudpickle.unregister_pickle_by_value(helpers)


def _run(src, bb, store, **kw):
    opts = ExtractOptions(**{"batch_size": 4, **kw})
    return extract(src, bb, store=store, options=opts)


def _ray(src, bb, store, **kw):
    return _run(src, bb, store, engine="ray", actors=1, **kw)


def _local(src, bb, store, **kw):
    return _run(src, bb, store, workers=0, **kw)


def assert_same_store(a, b, atol=1e-5):
    """Row by row: keys, labels, splits, classes, features; and the same failures."""
    fa, fb = load_features(a), load_features(b)
    assert list(fa.keys) == list(fb.keys)
    assert fa.y.tolist() == fb.y.tolist()
    assert (fa.split is None) == (fb.split is None)
    if fa.split is not None:
        assert list(fa.split) == list(fb.split)
    assert fa.classes == fb.classes
    np.testing.assert_allclose(fa.X, fb.X, rtol=0, atol=atol)
    ia, ib = store_info(a), store_info(b)
    fail_a = sorted((f["path"], f["reason"]) for f in ia["failed"])
    fail_b = sorted((f["path"], f["reason"]) for f in ib["failed"])
    assert fail_a == fail_b
    assert ia["n_items"] == ib["n_items"]


@pytest.fixture
def messy_folder(image_folder):
    """The 12-image folder plus three files that do not decode."""
    (image_folder / "cat" / "empty.png").write_bytes(b"")
    (image_folder / "cat" / "notes.txt").write_text("not an image")
    good = (image_folder / "dog" / "0.jpg").read_bytes()
    (image_folder / "dog" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    return image_folder


def test_ray_store_equals_local_store_fresh_and_incremental(
    ray_runtime, messy_folder, tiny_backbone, tmp_path
):
    local, distributed = tmp_path / "local.h5", tmp_path / "ray.h5"
    r_local = _local(messy_folder, tiny_backbone, local)
    r = _ray(messy_folder, tiny_backbone, distributed)
    assert (r.engine, r.n_new, r.n_new_failed, r.n_items) == ("ray", 12, 3, 12)
    assert (r.device, r.precision, r.decode) == ("cpu", "fp32", "cpu")
    assert r_local.engine == "local"
    assert_same_store(local, distributed)
    assert {f["path"] for f in store_info(distributed)["failed"]} == {
        "cat/empty.png",
        "cat/notes.txt",
        "dog/truncated.jpg",
    }
    # Unchanged: nothing goes to Ray.
    assert _ray(messy_folder, tiny_backbone, distributed).noop
    # Incremental: one new, one changed, one removed; only the new and changed rows go to Ray.
    write_image(messy_folder / "eel" / "9.png", seed=99)
    write_image(messy_folder / "cat" / "0.jpg", seed=77, size=(30, 26))
    (messy_folder / "dog" / "1.png").unlink()
    r = _ray(messy_folder, tiny_backbone, distributed)
    assert (r.n_new, r.n_removed, r.n_items) == (2, 1, 12)
    _local(messy_folder, tiny_backbone, local)
    assert_same_store(local, distributed)


def test_killed_actor_is_restarted_and_the_store_is_the_same(
    ray_runtime, image_folder, tiny_backbone, tmp_path, monkeypatch
):
    from featx.ray_engine import CRASH_ENV

    marker = tmp_path / "actor-died-once"
    monkeypatch.setenv(CRASH_ENV, str(marker))
    distributed = tmp_path / "ray.h5"
    r = _ray(image_folder, tiny_backbone, distributed)
    assert marker.exists(), "the actor was not killed; the test proves nothing"
    assert int(marker.read_text()) > 0  # the pid of the process that os._exit()ed
    assert (r.n_new, r.n_failed) == (12, 0)
    local = tmp_path / "local.h5"
    _local(image_folder, tiny_backbone, local)
    assert_same_store(local, distributed)


def test_interrupted_ray_run_resumes_from_its_parts(
    ray_runtime, image_folder, tiny_backbone, tmp_path, monkeypatch
):
    """The driver stops after two part files (as after kill -9); the next run resumes them."""
    from featx.engines import get_engine

    engine = get_engine("ray", "image")
    real = engine.iter_batches

    def interrupted(*args, **kwargs):
        for n, batch in enumerate(real(*args, **kwargs)):
            if n == 2:
                raise KeyboardInterrupt
            yield batch

    monkeypatch.setattr(engine, "iter_batches", interrupted)
    distributed = tmp_path / "ray.h5"
    with pytest.raises(KeyboardInterrupt):
        _ray(image_folder, tiny_backbone, distributed, checkpoint_every=4)
    assert not distributed.exists()
    # the workers wrote parts of 4 rows themselves; those already durable are resumed
    n_parts = len(list((tmp_path / "ray.h5.parts").glob("part-*.h5")))
    assert n_parts >= 2
    monkeypatch.setattr(engine, "iter_batches", real)
    r = _ray(image_folder, tiny_backbone, distributed, checkpoint_every=4)
    assert (r.n_resumed, r.n_new, r.n_items) == (4 * n_parts, 12 - 4 * n_parts, 12)
    local = tmp_path / "local.h5"
    _local(image_folder, tiny_backbone, local)
    assert_same_store(local, distributed)


def test_csv_manifest_behind_a_file_uri(ray_runtime, image_folder, tiny_backbone, tmp_path):
    """A pyarrow filesystem URI (file:// here, s3:// on a cluster): keys relative to the CSV."""
    lines = ["path,label,split"]
    for i, p in enumerate(sorted(image_folder.rglob("*.*"))):
        rel = p.relative_to(image_folder.parent).as_posix()
        lines.append(f"{rel},{p.parent.name},{'test' if i % 3 == 0 else 'train'}")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    uri = manifest.as_uri()
    assert uri.startswith("file:///")
    distributed = tmp_path / "ray.h5"
    r = _ray(uri, tiny_backbone, distributed)
    assert (r.n_new, r.n_failed) == (12, 0)
    fs = load_features(distributed)
    assert fs.keys[0] == "imgs/cat/0.jpg" and set(fs.split) == {"test", "train"}
    # The same manifest read as a local path gives the same rows through the local engine.
    local = tmp_path / "local.h5"
    _local(manifest, tiny_backbone, local)
    assert_same_store(local, distributed)
    assert store_info(distributed)["source"]["uri"] == uri


def test_ray_options_are_checked_before_any_work(
    ray_runtime, image_folder, tiny_backbone, tmp_path
):
    store = tmp_path / "s.h5"
    with pytest.raises(FeatxError, match="leaves none to decode"):
        _run(image_folder, tiny_backbone, store, engine="ray", actors=2)
    with pytest.raises(FeatxError, match="GPU"):
        _run(image_folder, tiny_backbone, store, engine="ray", gpus_per_actor=1)
    with pytest.raises(FeatxError, match="--decode device is not available"):
        _run(image_folder, tiny_backbone, store, engine="ray", decode="device")
    with pytest.raises(FeatxError, match="--actors applies only with --engine ray"):
        _run(image_folder, tiny_backbone, store, actors=2)
    with pytest.raises(FeatxError, match="engine must be one of local, ray"):
        _run(image_folder, tiny_backbone, store, engine="spark")
    assert not store.exists() and not (tmp_path / "s.h5.parts").exists()


def test_missing_ray_extra_is_one_line_error(image_folder, tiny_backbone, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from featx.cli import cli

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(FeatxError, match=r"pip install 'featx\[ray\]'"):
        _run(image_folder, tiny_backbone, tmp_path / "s.h5", engine="ray")
    res = CliRunner().invoke(cli, ["extract", str(image_folder), "--engine", "ray"])
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --engine ray needs Ray Data")
    assert "Traceback" not in res.output


def test_pipeline_extract_table_takes_the_ray_keys(tmp_path):
    from featx.pipeline import load_pipeline

    p = tmp_path / "p.toml"
    p.write_text(
        'sources = ["sklearn:digits"]\nbackbones = ["efficientnet_lite0"]\nheads = ["knn"]\n'
        '[extract]\nengine = "ray"\nray_address = "auto"\nactors = 4\ngpus_per_actor = 1\n'
        "cpus_per_actor = 2\n"
    )
    from featx.ray_engine import RaySettings

    opts = ExtractOptions(**load_pipeline(p).extract)
    s = RaySettings.from_options(opts)
    assert (opts.engine, s.address, s.actors, s.gpus_per_actor, s.cpus_per_actor) == (
        "ray",
        "auto",
        4,
        1.0,
        2.0,
    )
    p.write_text(p.read_text().replace("actors = 4", "actor = 4"))
    with pytest.raises(FeatxError, match="unknown key 'actor'"):
        load_pipeline(p)


def test_decoding_runs_as_tasks_apart_from_the_model_actors(
    ray_runtime, image_folder, tiny_backbone, capsys
):
    """Ray Data must not fuse the decode tasks into the model actors (one process would then
    decode and infer in turn)."""
    from featx.ray_engine import build_dataset
    from featx.sources import open_source

    src = open_source(image_folder)
    opts = ExtractOptions(engine="ray", actors=1, batch_size=4)
    ds, _ = build_dataset(ray_runtime, tiny_backbone, src.items, src.reader(), opts, "cpu", "fp32")
    ds.explain()
    optimized = capsys.readouterr().out.split("Physical Plan (Optimized)")[1]
    assert "TaskPoolMapOperator[MapBatches(decode)]" in optimized
    assert "ActorPoolMapOperator[MapBatches(ModelActor)]" in optimized


def _toy_set(sep: float, seed: int, n_classes: int = 4, per_class: int = 15, dim: int = 6):
    from featx.features import FeatureSet

    rng = np.random.default_rng(seed)
    y = np.arange(per_class * n_classes) % n_classes
    X = rng.normal(size=(n_classes, dim))[y] * sep + rng.normal(size=(y.size, dim))
    keys = np.array([f"img{i:04d}" for i in range(y.size)])
    classes = tuple(f"c{i}" for i in range(n_classes))
    return FeatureSet(X=X.astype(np.float32), y=y, classes=classes, split=None, keys=keys)


def test_compare_fans_out_stores_x_heads_as_ray_tasks(ray_runtime):
    """The stretch goal: every (store, head) fit a Ray task; the same leaderboard as locally."""
    from featx.comparison import compare

    sets = {"weak": _toy_set(0.6, 1), "strong": _toy_set(1.5, 2)}
    failing = ("centroid", {"metric": "euclidean"}, "pca:500")  # more components than items
    heads = ["centroid", ("knn", {"k": 3}), ("ridge", {"alpha": 1.0}), failing]
    local = compare(sets, heads, seed=0)
    distributed = compare(sets, heads, seed=0, engine="ray")

    def summary(board):
        return sorted(
            (r.store, r.label, r.accuracy, r.balanced_accuracy, r.confusion_matrix.tolist())
            for r in board.results
        )

    assert len(local.results) == 6 and summary(distributed) == summary(local)
    # a head that fails while fitting is recorded the same way, and re-raised on request
    assert sorted((f.store, f.head, f.error) for f in distributed.failures) == sorted(
        (f.store, f.head, f.error) for f in local.failures
    )
    assert len(local.failures) == 2
    with pytest.raises(FeatxError, match="pca:500"):
        compare(sets, [failing], seed=0, engine="ray", on_error="raise")
    with pytest.raises(FeatxError, match="--ray-address applies only with --engine ray"):
        compare(sets, ["centroid"], ray_address="auto")


def test_non_utf8_names_through_the_ray_engine(ray_runtime, tiny_backbone, tmp_path):
    """The Ray engine carries keys and paths to its tasks as bytes (featx.keys): a non-UTF-8
    file name is extracted like any other, equal to the local engine (issue #23: the whole run
    failed, keys were handed to Arrow as strings)."""
    import os

    latin1 = os.fsdecode(b"caf\xe9")
    root = tmp_path / "src"
    for c, cls in enumerate(["a", latin1]):
        for i, name in enumerate(["0.png", f"{latin1}.png"]):
            write_image(root / cls / name, seed=10 * c + i)
    local, distributed = tmp_path / "local.h5", tmp_path / "ray.h5"
    _local(root, tiny_backbone, local)
    r = _ray(root, tiny_backbone, distributed)
    assert r.n_new == 4 and r.n_failed == 0
    assert_same_store(local, distributed)


def test_ray_engine_caches_the_same_activations(ray_runtime, image_folder, tmp_path):
    """--cache-activations through Ray actors: the wrapped backbone ships to them and the
    store's activations and features equal the local engine's (#20)."""
    from featx.backbones import load_backbone
    from featx.store import read_output

    bb = load_backbone("resnet18", weights="none", image_size=32)
    local, distributed = tmp_path / "local.h5", tmp_path / "ray.h5"
    _local(image_folder, bb, local, cache_activations="-2")
    r = _ray(image_folder, bb, distributed, cache_activations="-2")
    assert r.engine == "ray" and r.n_new == 12
    assert_same_store(local, distributed)
    a, b = read_output(local, "activations"), read_output(distributed, "activations")
    assert a.shape == b.shape and a.shape[0] == 12
    np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), rtol=0, atol=1e-2)


def test_ray_workers_write_the_parts_and_the_driver_only_links_them(
    ray_runtime, image_folder, tiny_backbone, tmp_path
):
    """With --engine ray the workers write the part files (storage the cluster shares) and the
    driver's commit links them in as segments: it writes no feature byte itself (#21)."""
    import h5py

    from featx.store.segments import segment_dir

    distributed = tmp_path / "ray.h5"  # worker parts are linked whatever their size
    r = _ray(image_folder, tiny_backbone, distributed, checkpoint_every=4)
    assert (r.n_new, r.n_items) == (12, 12)
    info = store_info(distributed)
    assert (info["layout"], info["segments"]) == ("segments", 3)
    for seg in segment_dir(distributed).iterdir():
        with h5py.File(seg, "r") as f:  # each one a worker's part, linked without a copy
            assert f.attrs["format"] == "featx-store-part" and f.attrs["n_items"] == 4
    local = tmp_path / "local.h5"
    _local(image_folder, tiny_backbone, local)
    assert_same_store(local, distributed)


def test_ray_engine_caches_activations_next_to_layers(ray_runtime, image_folder, tmp_path):
    """--cache-activations with --layers through Ray actors: one tapped pass per batch; the
    groups and activations equal the local engine's (#20)."""
    from featx.backbones import load_backbone
    from featx.store import read_output

    bb = load_backbone("resnet18", weights="none", image_size=32)
    local, distributed = tmp_path / "local.h5", tmp_path / "ray.h5"
    kw = {"cache_activations": "-2", "layers": "last:2"}
    _local(image_folder, bb, local, **kw)
    r = _ray(image_folder, bb, distributed, **kw)
    assert r.engine == "ray" and r.n_new == 12
    assert_same_store(local, distributed)  # features and both layer groups
    assert [g.name for g in load_features(distributed).groups] == ["features", "layer3", "layer4"]
    a, b = read_output(local, "activations"), read_output(distributed, "activations")
    assert a.shape == b.shape and a.shape[0] == 12
    np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), rtol=0, atol=1e-2)
