import os

import pytest
import torch

from mivae.config import TrainConfig
from mivae.errors import MivaeError
from mivae.hardware import bf16_supported, check_device, measure_threads, resolve_device, resolve_precision
from mivae.images.imputation import multiple_imputation, predict_proba
from mivae.models.classifiers import MLP
from mivae.models.type2 import VAEClassifier
from mivae.models.vae import VAE


def test_native_bf16_means_the_instructions_are_there(monkeypatch):
    from mivae import hardware

    monkeypatch.setattr(hardware, "cpu_flags", lambda: {"avx512f", "avx512bw"})  # emulates bf16 only
    assert not bf16_supported("cpu")
    monkeypatch.setattr(hardware, "cpu_flags", lambda: {"avx512f", "amx_bf16", "amx_tile"})
    assert bf16_supported("cpu")


def test_precision_is_forced_or_follows_the_hardware():
    assert resolve_precision("fp32") == torch.float32
    assert resolve_precision("bf16") == torch.bfloat16
    assert resolve_precision("auto") == (torch.bfloat16 if bf16_supported("cpu") else torch.float32)
    with pytest.raises(MivaeError, match="unknown precision 'fp16'; expected one of auto, bf16, fp32"):
        resolve_precision("fp16")


def test_auto_is_the_gpu_where_torch_sees_one_and_a_named_gpu_must_be_there(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") and TrainConfig().device == "cpu"
    with pytest.raises(MivaeError, match=r"^device 'cuda' is not available: this torch sees no GPU"):
        resolve_device("cuda")
    assert TrainConfig(device="cuda").device == "cuda"  # a run trained on a GPU is still read on a machine without
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    # one GPU, one name: "auto" and "cuda" both come back as cuda:0, as a study's unit keys record it
    assert (
        resolve_device("auto") == resolve_device("cuda") == torch.device("cuda:0") and TrainConfig().device == "cuda:0"
    )
    assert TrainConfig(device="cpu").device == "cpu" and resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(
        MivaeError, match=r"^device 'cuda:1' is not available: this torch sees 1 GPU\(s\), cuda:0 to cuda:0"
    ):
        resolve_device("cuda:1")
    for bad in ("tpu", "mps", "cuda:x", "", None):
        with pytest.raises(MivaeError, match="expected auto, cpu, cuda or cuda:N"):
            check_device(bad)
    with pytest.raises(MivaeError, match="^device 'meta' is not one mivae runs on"):
        TrainConfig(device="meta")


def test_measured_thread_count_is_a_valid_count():
    before = torch.get_num_threads()
    threads = measure_threads(size=256, repeats=3)
    assert 1 <= threads <= (os.cpu_count() or 1)
    assert torch.get_num_threads() == before  # measuring leaves the setting alone


def test_bf16_probabilities_stay_close_to_float32():
    torch.manual_seed(0)
    model = VAEClassifier(VAE((8, 8), (32,), 4), MLP((8, 8), 10, (32,))).eval()
    for p in model.parameters():  # large weights: confident, varied predictions, not near-uniform ones
        torch.nn.init.normal_(p, std=0.5)
    x, y = torch.rand(50, 8, 8), torch.randint(0, 10, (50,))
    full, low = predict_proba(model, x), predict_proba(model, x, dtype=torch.bfloat16)
    assert full.max(1).values.mean() > 0.5 and len(set(full.argmax(1).tolist())) > 2
    assert low.dtype == torch.float32  # probabilities accumulate in float32 whatever the matmuls
    assert (full - low).abs().max() < 0.05
    assert (full.argmax(1) == low.argmax(1)).float().mean() > 0.9
    a = multiple_imputation(model, x, y, 20, seed=1)
    b = multiple_imputation(model, x, y, 20, seed=1, dtype=torch.bfloat16)
    assert (a.proba - b.proba).abs().max() < 0.05
    assert next(model.parameters()).dtype == torch.float32  # the model itself is not cast
