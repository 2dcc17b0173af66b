"""The code paths that run only on a GPU, driven on the CPU through their seams (an injected memory query, the
``auto`` precision per device type, compile by backend name, a faked ``torch.cuda.is_available``), and the same
paths on a real GPU in the tests marked ``cuda`` (skipped, with that reason, where CUDA is absent)."""
import pytest
import torch

from openood_diffood import DiffOOD, load_diffusion
from openood_diffood.openood.compat import cuda_calls_stay_put
from openood_diffood.runtime import execution
from openood_diffood.runtime.engine import AUTO_MEMORY_FRACTION
from openood_diffood.runtime.memory import device_memory

KW = dict(timestep=100, stride=50, repeats=2, guidance=3.0)


class FakeMemory:
    """A device whose free memory is 100 bytes and whose micro-batch of n images peaks at 10 + 3 n bytes; each
    probe really runs the engine's code."""

    def __init__(self):
        self.probed = []

    def budget(self, fraction):
        return int(fraction * 100)

    def peak(self, run, batch_size):
        run(batch_size)
        self.probed.append(batch_size)
        return 10 + 3 * batch_size


def test_auto_batch_size_probes_memory_with_combine_energy(tiny_net, tiny_diffusion_dir, images):
    """The memory probe of ``batch_size: auto`` crashed with combine: energy ('NoneType' object has no attribute
    'combine': the probe's combine=None was dropped)."""
    engine = DiffOOD(tiny_net, tiny_diffusion_dir, batch_size="auto", combine="energy", **KW)
    assert engine.memory is None  # the CPU rule, unless a memory query is given
    engine.memory = FakeMemory()
    engine.calibrate(images[:4])
    out = engine.score(images)
    assert engine.memory.probed == [1, 4]
    assert engine.batch_size == 16  # (0.8 x 100 - 10) / 3 = 23 images fit; the power of two below
    assert AUTO_MEMORY_FRACTION == 0.8
    fixed = DiffOOD(tiny_net, tiny_diffusion_dir, batch_size=16, combine="energy", **KW)
    fixed.calibration = engine.calibration
    torch.testing.assert_close(out.score, fixed.score(images).score, rtol=0, atol=1e-6)


def test_memory_is_measured_on_cuda_devices_only():
    assert device_memory(torch.device("cpu")) is None
    assert type(device_memory(torch.device("cuda:1"))).__name__ == "CudaMemory"  # built lazily: no CUDA call yet


def test_auto_precision_follows_the_device_type(tiny_net, tiny_diffusion_dir, images, monkeypatch):
    """``auto`` is bf16 autocast on CUDA; switched on for the CPU, the network runs in bf16 and the scores stay
    close to fp32's (and the score cache's key says bf16)."""
    fp32 = DiffOOD(tiny_net, tiny_diffusion_dir, **KW)
    assert fp32.precision == "fp32"
    monkeypatch.setitem(execution.AUTO_PRECISION, "cpu", "bf16")
    bf16 = DiffOOD(tiny_net, tiny_diffusion_dir, **KW)
    assert bf16.precision == "bf16" and bf16.identity()["precision"] == "bf16"
    dtypes = []
    hook = bf16.diffusion.unet.conv_in.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    try:
        low = bf16.score(images).score
    finally:
        hook.remove()
    assert set(dtypes) == {torch.bfloat16}
    high = fp32.score(images).score
    assert not torch.equal(low, high)
    torch.testing.assert_close(low, high, rtol=0.05, atol=0.01)


def test_compile_names_the_torch_compile_backend(tiny_net, tiny_diffusion_dir, monkeypatch):
    """``compile: true`` is inductor (it needs a C++ or CUDA compiler: the cuda test runs it), a name is that
    backend, both with static shapes; compiled scores equal eager ones in tests/test_solvers.py."""
    calls = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: calls.append(kw) or fn)
    for value in (True, "aot_eager"):
        DiffOOD(tiny_net, tiny_diffusion_dir, compile=value, **KW)
    assert calls == [dict(backend="inductor", dynamic=False), dict(backend="aot_eager", dynamic=False)]


def test_cuda_calls_are_left_alone_where_cuda_is_available(monkeypatch, capsys):
    tensor_cuda, module_cuda = torch.Tensor.cuda, torch.nn.Module.cuda
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with cuda_calls_stay_put(announce=True) as active:
        assert active is False
        assert torch.Tensor.cuda is tensor_cuda and torch.nn.Module.cuda is module_cuda
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    x = torch.ones(2)
    with cuda_calls_stay_put(announce=True) as active:
        assert active is True and x.cuda() is x
    assert "CUDA is not available" in capsys.readouterr().err
    assert torch.Tensor.cuda is tensor_cuda and torch.nn.Module.cuda is module_cuda


# ---------------------------------------------------------------------------------------------- on a real GPU
@pytest.mark.cuda
def test_cuda_auto_batch_size_and_bf16_scores(tiny_net, tiny_diffusion_dir, images):
    """On a GPU: ``batch_size: auto`` measures real memory (with combine: energy), ``auto`` precision is bf16, and
    the scores stay close to fp32 on the CPU."""
    cpu = DiffOOD(tiny_net, tiny_diffusion_dir, combine="energy", **KW)
    cpu.calibrate(images)
    gpu = DiffOOD(tiny_net, tiny_diffusion_dir, device="cuda", batch_size="auto", combine="energy", **KW)
    gpu.calibrate(images)
    out = gpu.score(images)
    assert gpu.precision == "bf16" and gpu.memory is not None
    assert isinstance(gpu.batch_size, int) and gpu.batch_size >= 1 and gpu.batch_size & (gpu.batch_size - 1) == 0
    torch.testing.assert_close(out.score, cpu.score(images).score, rtol=0.05, atol=0.05)
    exact = DiffOOD(tiny_net, tiny_diffusion_dir, device="cuda", precision="fp32", combine="energy", **KW)
    exact.calibration = cpu.calibration
    torch.testing.assert_close(exact.score(images).score, cpu.score(images).score, rtol=1e-4, atol=1e-5)


@pytest.mark.cuda
def test_cuda_inductor_compile_scores_as_eager(tiny_net, tiny_diffusion_dir, images):
    torch._dynamo.reset()
    try:
        kw = dict(device="cuda", precision="fp32", batch_size=3, **KW)
        compiled = DiffOOD(tiny_net, load_diffusion(tiny_diffusion_dir), compile=True, **kw)
        eager = DiffOOD(tiny_net, load_diffusion(tiny_diffusion_dir), **kw)
        torch.testing.assert_close(compiled.score(images).score, eager.score(images).score, rtol=1e-4, atol=1e-5)
    finally:
        torch._dynamo.reset()


@pytest.mark.cuda
def test_cuda_calls_move_tensors_on_a_gpu():
    with cuda_calls_stay_put() as active:
        assert active is False and torch.ones(1).cuda().is_cuda
