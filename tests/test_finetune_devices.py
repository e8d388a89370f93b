"""Fine-tuning's device paths (#20): mixed precision, the gradient scaler, the CUDA random state
in checkpoints, prediction on a device.

Every test runs on the CPU here and, marked ``gpu``, on CUDA (``pytest -m gpu`` in
benchmarks/gpu_suite.sh), so the CUDA variant's code is the one the CPU run has exercised. The
CUDA random state's round trip through a checkpoint is checked on the CPU with torch.cuda's two
functions stood in for.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from test_finetune import FAMILY, colour_folder, register_ftest  # noqa: E402

CUDA = pytest.mark.gpu


@pytest.fixture(scope="module")
def acts(tmp_path_factory):
    from featx.backbones import load_backbone, unregister_family
    from featx.finetuning import compute_activations
    from featx.finetuning.cuts import unregister_cutter
    from featx.sources import open_source

    register_ftest()
    root = colour_folder(tmp_path_factory.mktemp("dev") / "c", per_class=6)
    yield compute_activations(load_backbone("ftnet"), open_source(root), "-2"), root
    unregister_family(FAMILY)
    unregister_cutter(FAMILY)


@pytest.mark.parametrize(
    "device,precision",
    [
        ("cpu", "fp16"),  # autocast fp16 and the gradient scaler, on the CPU
        pytest.param("cuda", "auto", marks=CUDA),  # bf16 on CUDA
        pytest.param("cuda", "fp16", marks=CUDA),
    ],
)
def test_tail_finetune_resumes_and_predicts_on_the_device(acts, tmp_path, monkeypatch, device,
                                                          precision):  # fmt: skip
    from featx.finetuning import finetune, load_finetuned, loop

    data, root = acts
    kw = dict(tail=1, epochs=2, patience=100, batch_size=8, heads=(), lr=0.01,
              device=device, precision=precision)  # fmt: skip
    whole = finetune(data, bundle=tmp_path / "whole.npz", **kw)
    want = "bf16" if precision == "auto" else precision
    assert f"({device}" in whole.result.solver and f"{want})" in whole.result.solver
    real = loop._save_checkpoint

    def save_then_die(path, state):
        real(path, state)
        raise KeyboardInterrupt  # killed right after epoch 1's checkpoint

    monkeypatch.setattr(loop, "_save_checkpoint", save_then_die)
    bundle = tmp_path / "tuned.npz"
    with pytest.raises(KeyboardInterrupt):
        finetune(data, bundle=bundle, **kw)
    monkeypatch.undo()
    saved = torch.load(tmp_path / "tuned.npz.ckpt", map_location="cpu", weights_only=True)
    if device == "cuda":
        assert saved["cuda_rng"].dtype == torch.uint8 and saved["cuda_rng"].numel() > 0
    else:
        assert saved["cuda_rng"] is None
    rep = finetune(data, bundle=bundle, **kw)
    assert rep.extra["resumed_from_epoch"] == 1 and len(rep.history) == 2
    a, b = whole.model.state_dict(), rep.model.state_dict()
    tol = 0 if device == "cpu" else 1e-3  # cuDNN's backward may sum in another order
    for k in a:
        torch.testing.assert_close(a[k].float(), b[k].float(), rtol=tol, atol=tol)
    files = [str(root / k) for k in data.keys[:4]]
    on_device = load_finetuned(rep.bundle, device=device).predict_proba(files)
    on_cpu = load_finetuned(rep.bundle, device="cpu").predict_proba(files)
    np.testing.assert_allclose(on_device, on_cpu, rtol=0, atol=1e-4)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_full_finetune_runs_on_the_device(acts, device):
    from featx.finetuning import finetune_full
    from featx.options import BackboneSpec

    _, root = acts
    rep = finetune_full(root, BackboneSpec(name="ftnet"), epochs=1, batch_size=8, heads=(),
                        lr=0.01, device=device)  # fmt: skip
    want = "bf16" if device == "cuda" else "fp32"
    assert f"({device}" in rep.result.solver and f"{want})" in rep.result.solver
    assert next(rep.model.parameters()).device.type == "cpu"  # handed back on the CPU


def test_cuda_random_state_round_trips_through_a_checkpoint(tmp_path, monkeypatch):
    """What a CUDA run writes and reads back, with torch.cuda's state functions stood in for:
    the state is saved as the uint8 tensor CUDA gives, survives ``weights_only`` loading, and is
    set again on the run's device."""
    from torch import nn

    from featx.finetuning import loop

    cuda_state = torch.arange(16, dtype=torch.uint8)
    got: list = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": cuda_state.clone())
    monkeypatch.setattr(
        torch.cuda, "set_rng_state", lambda state, device="cuda": got.append((state, device))
    )
    dev = torch.device("cuda", 0)
    model = nn.Linear(3, 2)
    optim = torch.optim.AdamW(model.parameters())
    gen = torch.Generator().manual_seed(3)
    state = loop._snapshot(loop._State(epoch=1), model, optim, gen, dev)
    state["fingerprint"] = "fp"
    path = tmp_path / "b.npz.ckpt"
    loop._save_checkpoint(path, state)
    saved = loop.load_checkpoint(path, "fp")
    assert saved is not None and torch.equal(saved["cuda_rng"], cuda_state)
    st = loop._restore(saved, model, optim, torch.Generator(), dev)
    assert st.epoch == 1 and len(got) == 1
    assert torch.equal(got[0][0], cuda_state) and got[0][1] == dev
    loop._restore(saved, model, optim, torch.Generator(), torch.device("cpu"))
    assert len(got) == 1  # a CPU run leaves CUDA's state alone
