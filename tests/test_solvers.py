"""Solvers against diffusers' own schedulers, and the one-device fast path (no host reads, static shapes)."""
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, PNDMScheduler

from openood_diffood import DiffOOD, DiffOODSettings, load_diffusion
from openood_diffood.method.diffood import guided_noise
from openood_diffood.method.solvers import SOLVERS, network_evaluations, solver_timesteps
from openood_diffood.models.diffusion import DiffusionBackend


def denoise(name, backend, z, t, stride, labels, w):
    """Solver ``name`` from timestep t with the guided noise of ``backend``."""
    return SOLVERS[name](guided_noise(backend, labels, w), z, solver_timesteps(t, stride), backend.schedule)


@pytest.fixture(scope="module")
def backend(tiny_diffusion_dir):
    return load_diffusion(tiny_diffusion_dir)


def _scheduler_loop(name, model_dir, backend, z, t, stride, labels, w):
    """Denoise with the diffusers scheduler's own set_timesteps/step, started at timestep t; returns (z, evals)."""
    steps = solver_timesteps(t, stride)
    if name == "ddim":
        sched = DDIMScheduler.from_pretrained(model_dir, subfolder="scheduler", clip_sample=False,
                                              set_alpha_to_one=False, steps_offset=0, timestep_spacing="leading")
        sched.set_timesteps(1000 // stride)
        assert [int(s) for s in sched.timesteps if 0 < s <= t] == steps
        kwargs = {"eta": 0.0}
    elif name == "dpmpp2m":
        sched = DPMSolverMultistepScheduler.from_pretrained(
            model_dir, subfolder="scheduler", algorithm_type="dpmsolver++", solver_order=2,
            final_sigmas_type="sigma_min")
        sched.set_timesteps(timesteps=steps)
        kwargs = {}
    else:  # PNDM steps a fixed 1000 // num_inference_steps; the PLMS warm-up repeats the second timestep
        sched = PNDMScheduler.from_pretrained(model_dir, subfolder="scheduler", skip_prk_steps=True,
                                              set_alpha_to_one=False, steps_offset=0)
        sched.set_timesteps(1000 // stride)
        assert 1000 // sched.num_inference_steps == stride
        steps = steps[:2] + steps[1:]
        kwargs = {}
    eps_fn = guided_noise(backend, labels, w)
    for s in steps:
        z = sched.step(eps_fn(z, int(s)), int(s), z, **kwargs).prev_sample
    return z, len(steps)


@pytest.mark.parametrize("name", ["ddim", "dpmpp2m", "plms"])
@pytest.mark.parametrize("t,stride", [(300, 20), (300, 100), (200, 40)])
def test_solver_equals_diffusers_scheduler(name, t, stride, backend, tiny_diffusion_dir):
    torch.manual_seed(0)
    z, labels, w = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 1]), 3.0
    with torch.no_grad():
        expected, evals = _scheduler_loop(name, tiny_diffusion_dir, backend, z.clone(), t, stride, labels, w)
        ours = denoise(name, backend, z, t, stride, labels, w)
    assert evals == network_evaluations(name, t, stride)
    assert not torch.allclose(ours, z, atol=1e-2)  # the solver really moved the sample
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)


def test_solvers_differ_from_each_other(backend):
    """Same start, different integrators: a lookup that ignored the solver name would pass the test above only
    for DDIM, so check the solvers' results are distinct (while all near the same ODE solution)."""
    torch.manual_seed(1)
    z, labels = torch.randn(2, 3, 8, 8), torch.tensor([0, 2])
    with torch.no_grad():
        outs = {n: denoise(n, backend, z, 300, 100, labels, 2.0) for n in ("ddim", "dpmpp2m", "plms")}
    for a, b in [("ddim", "dpmpp2m"), ("ddim", "plms"), ("dpmpp2m", "plms")]:
        assert (outs[a] - outs[b]).abs().max() > 1e-4


def test_network_evaluations_counted(backend):
    calls = []
    original = backend.network

    def counting(z, t, labels):
        calls.append(z.shape[0])
        return original(z, t, labels)

    backend.network = counting
    try:
        with torch.no_grad():
            for name, expected in [("ddim", 15), ("dpmpp2m", 15), ("plms", 16)]:
                calls.clear()
                denoise(name, backend, torch.randn(3, 3, 8, 8), 300, 20, torch.tensor([0, 1, 2]), 3.0)
                assert network_evaluations(name, 300, 20) == expected
                assert calls == [6] * expected  # one batched call per evaluation: conditional + null together
    finally:
        del backend.network


class _MetaBackend(DiffusionBackend):
    """A linear 'network' that works on the meta device, where reading any value back to the host raises."""

    def network(self, z, t, labels):
        return z * 0.5 + t.view(-1, 1, 1, 1) * 1e-3


@pytest.mark.parametrize("name", ["ddim", "dpmpp2m", "plms"])
def test_denoising_loop_never_reads_from_the_device(name):
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    backend = _MetaBackend(abar, num_classes=3, null_class=3, sample_size=8)  # reads the schedule once, here
    backend.to("meta")
    with pytest.raises(Exception):  # the check has teeth: a host read of a meta tensor fails
        float(backend.alphas_cumprod[300])
    z, labels = torch.empty(4, 3, 8, 8, device="meta"), torch.zeros(4, dtype=torch.long, device="meta")
    out = denoise(name, backend, z, 300, 20, labels, 3.0)
    assert out.device.type == "meta" and out.shape == z.shape


def test_unknown_solver_is_named():
    with pytest.raises(ValueError, match="solver must be one of ddim, dpmpp2m, plms, got 'euler'"):
        DiffOODSettings(solver="euler")


def test_engine_uses_the_configured_solver(tiny_net, backend, images):
    a = DiffOOD(tiny_net, backend, timestep=200, stride=50, repeats=1, solver="ddim").score(images).score
    b = DiffOOD(tiny_net, backend, timestep=200, stride=50, repeats=1, solver="plms").score(images).score
    assert not torch.allclose(a, b)


def test_compile_pads_to_one_static_shape(tiny_net, tiny_diffusion_dir, images):
    """Under compile every network call has the micro-batch's shape (one graph), and scores equal eager ones."""
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(tuple(example_inputs[0].shape) if example_inputs else None)
        return gm.forward

    torch._dynamo.reset()
    kw = dict(timestep=100, stride=50, repeats=2, guidance=2.0)
    eager = DiffOOD(tiny_net, load_diffusion(tiny_diffusion_dir), batch_size=3, **kw)
    compiled = DiffOOD(tiny_net, load_diffusion(tiny_diffusion_dir), batch_size=3, compile=counting_backend, **kw)
    for n in (8, 5, 1):  # 3 + 3 + 2, 3 + 2, 1: the short micro-batches are padded to 3
        torch.testing.assert_close(compiled.score(images[:n]).score, eager.score(images[:n]).score,
                                   rtol=0, atol=1e-6)
    assert len(set(graphs)) == 1 and len(graphs) == 1, graphs
    torch._dynamo.reset()


def test_auto_batch_size_on_cpu(tiny_net, backend, images):
    engine = DiffOOD(tiny_net, backend, batch_size="auto", timestep=100, stride=50, repeats=1)
    assert engine.batch_size == "auto"
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        engine.score(images[:2])
    finally:
        torch.set_num_threads(threads)
    assert engine.batch_size == 48  # 32 network samples per thread and call: 96 = 48 images x the guidance pair
    with pytest.raises(ValueError, match="batch_size must be an integer, got 'big'"):
        DiffOOD(tiny_net, backend, batch_size="big")
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        DiffOOD(tiny_net, backend, batch_size=0)
    assert engine.precision == "fp32"
