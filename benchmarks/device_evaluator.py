"""One run of OpenOOD's own ``Evaluator`` with ``postprocessor_name="diffood"`` on a small OpenOOD data root written
here (random PNGs in OpenOOD's layout, as the tests write it), a random ResNet18_32x32 and a tiny random
class-conditional UNet: it checks that the whole path (registry, config, setup, inference, metrics) runs on the
device, not what the numbers are. Part of ``benchmarks/device_check.sh``; on a CPU it runs with the package's
``.cuda()`` shim.

    python -m benchmarks.device_evaluator --device cuda --out benchmarks/results
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile
import time
from pathlib import Path

import torch
import yaml

TESTS = Path(__file__).resolve().parents[1] / "tests"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    spec = importlib.util.spec_from_file_location("diffood_test_helpers", TESTS / "conftest.py")
    helpers = importlib.util.module_from_spec(spec)  # the tests' OpenOOD layout and tiny models
    spec.loader.exec_module(helpers)
    write_openood_data_root, write_tiny_diffusion = helpers.write_openood_data_root, helpers.write_tiny_diffusion

    import openood_diffood
    from openood_diffood.openood.compat import cuda_calls_stay_put, require_openood
    from openood_diffood.openood.registry import config_path

    openood_diffood.register()
    Evaluator = require_openood("openood.evaluation_api").Evaluator
    ResNet18_32x32 = require_openood("openood.networks").ResNet18_32x32
    root = Path(tempfile.mkdtemp(prefix="diffood_evaluator_"))
    write_openood_data_root(root / "data", n_per_list=8)
    cfg = yaml.safe_load(open(config_path("diffood")))
    cfg["postprocessor"]["postprocessor_args"].update(timestep=40, stride=20, repeats=2)
    (root / "configs" / "postprocessors").mkdir(parents=True)
    (root / "configs" / "postprocessors" / "diffood.yml").write_text(yaml.safe_dump(cfg))
    os.environ["DIFFOOD_DIFFUSION"] = str(write_tiny_diffusion(root / "diffusion", num_classes=10, sample_size=32))
    torch.manual_seed(0)
    net = ResNet18_32x32(num_classes=10).to(args.device).eval()
    start = time.perf_counter()
    with cuda_calls_stay_put(announce=True):
        evaluator = Evaluator(net, id_name="cifar10", data_root=str(root / "data"), config_root=str(root / "configs"),
                              postprocessor_name="diffood", batch_size=8, num_workers=0)
        metrics = evaluator.eval_ood(fsood=False, progress=False)
    engine = evaluator.postprocessor.engine
    seconds = time.perf_counter() - start
    if not metrics.notna().all().all():
        raise SystemExit(f"the Evaluator's metrics have missing values:\n{metrics}")
    name = torch.cuda.get_device_name(engine.device) if engine.device.type == "cuda" else "cpu"
    slug = "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")
    out = Path(args.out) / f"device_evaluator_{slug}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    metrics.to_csv(out)
    print(metrics.to_string())
    print(f"OpenOOD Evaluator + diffood on {engine.device} ({name}), precision {engine.precision}, "
          f"batch size {engine.batch_size}: {seconds:.1f} s; metrics in {out}")


if __name__ == "__main__":
    main()
