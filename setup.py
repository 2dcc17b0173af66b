"""openood-diffood: DiffOOD as an OpenOOD v1.5 postprocessor plugin."""
import os

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
PTH = "openood_diffood.pth"


class BuildWithStartupHook(build_py):
    """Also ship ``openood_diffood.pth``, which loads the start-up hook (``openood_diffood.openood.hook``)."""

    def run(self):
        super().run()
        self.copy_file(os.path.join(HERE, PTH), os.path.join(self.build_lib, PTH), preserve_mode=0)

    def get_outputs(self, include_bytecode=True):
        return super().get_outputs(include_bytecode) + [os.path.join(self.build_lib, PTH)]


setup(
    name="openood-diffood",
    version=next(line.split('"')[1] for line in open(os.path.join(HERE, "openood_diffood", "version.py"))
                 if line.startswith("__version__")),
    description="DiffOOD (diffusion denoising for OOD detection) as an OpenOOD v1.5 postprocessor",
    long_description=open(os.path.join(HERE, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["openood_diffood", "openood_diffood.*"]),
    package_data={"openood_diffood": ["configs/postprocessors/*.yml", "assets/**/*"]},
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "diffusers>=0.30",
        "huggingface_hub>=0.20",
        "safetensors>=0.4",
        "accelerate>=0.30",
        "pytorch-ood>=0.4",
        "numpy>=1.24",
        "scikit-learn>=1.3",
        "scikit-image>=0.21",
        "matplotlib>=3.7",
        "pyyaml>=6",
        "tqdm>=4.60",
        "tabulate>=0.9",
    ],
    extras_require={"test": ["pytest>=7"]},
    entry_points={"console_scripts": ["openood-diffood=openood_diffood.cli:main"]},
    cmdclass={"build_py": BuildWithStartupHook},
)
