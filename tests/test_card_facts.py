"""Model facts in the model card's YAML metadata (read with huggingface_hub's ModelCard), old prose cards still read,
and the one warning when a model records no trained timestep range."""
import shutil
import warnings
from types import SimpleNamespace

import pytest
from diffusers import UNet2DModel
from huggingface_hub import ModelCard

from conftest import write_tiny_diffusion
from openood_diffood import DiffOOD, load_diffusion
from openood_diffood.config import ConfigError
from openood_diffood.models.card_facts import ModelFacts, card_header, read_facts
from openood_diffood.models.convert.card import null_class
from openood_diffood.models.convert.conversion import Conversion
from openood_diffood.train.trainer import model_card


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_tiny_diffusion(tmp_path_factory.mktemp("facts") / "model")


def with_card(model_dir, path, text):
    shutil.copytree(model_dir, path)
    (path / "README.md").write_text(text)
    return path


def test_train_writes_the_facts_as_card_metadata(tmp_path, model_dir):
    data = SimpleNamespace(classes=["a", "b", "c"], identity={"images": 9})
    text = model_card({"max_timestep": 50}, data, steps=1, loss=0.5, run={"device": "cpu"})
    path = with_card(model_dir, tmp_path / "m", text)
    assert ModelCard.load(path / "README.md").data.to_dict()["diffood"] == {"max_timestep": 50, "null_class": 3}
    backend = load_diffusion(path)
    assert (backend.max_timestep, backend.null_class) == (50, 3)


def test_card_null_class_is_the_default_null_class(tmp_path, model_dir):
    path = with_card(model_dir, tmp_path / "m", card_header(["x"], ModelFacts(null_class=0)) + "# card\n")
    assert load_diffusion(path).null_class == 0
    assert load_diffusion(path, null_class=2).null_class == 2  # the caller's choice wins
    assert load_diffusion(model_dir).null_class == 3  # no card: the last class embedding


def test_old_prose_cards_are_still_read(tmp_path, model_dir):
    path = with_card(model_dir, tmp_path / "m", "# old\n\n| setting | value |\n|---|---|\n| max_timestep | `600` |\n")
    assert read_facts(str(path)) == ModelFacts(max_timestep=600)
    with pytest.raises(ValueError, match="metadata 'diffood' holds a non-integer"):
        read_facts(str(with_card(model_dir, tmp_path / "bad", "---\ndiffood:\n  max_timestep: soon\n---\n")))


def test_converted_cards_record_the_null_class():
    unet = UNet2DModel(sample_size=8, block_out_channels=(8, 16), norm_num_groups=4, num_class_embeds=11,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    assert null_class(Conversion("ddim", "built-in", {"unet": unet}, {})) == 10
    plain_unet = UNet2DModel(sample_size=8, block_out_channels=(8, 16), norm_num_groups=4,
                             down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    assert null_class(Conversion("ddim", "built-in", {"unet": plain_unet}, {})) is None


def test_unknown_trained_range_is_said_once(tiny_net, model_dir, tmp_path):
    """--timestep 800 on a model without a model card ran without a word (issue 19)."""
    backend = load_diffusion(model_dir)
    with pytest.warns(UserWarning, match="does not record the timesteps it was trained on.*timestep 800"):
        engine = DiffOOD(tiny_net, backend, timestep=800)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        engine.replace(timestep=700)
        DiffOOD(tiny_net, backend, timestep=900)
        DiffOOD(tiny_net, with_card(model_dir, tmp_path / "m", card_header([], ModelFacts(max_timestep=900))),
                timestep=800)
    assert not [w for w in seen if "trained on" in str(w.message)]
    with pytest.raises(ConfigError, match="trained on timesteps below 900"):
        DiffOOD(tiny_net, tmp_path / "m", timestep=900)
