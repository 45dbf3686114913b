import pytest

from aigc.config import RunConfig, TrainConfig, apply_sets, data_config, parse_set_value
from aigc.errors import AigcError
from aigc.models.vae import VAEConfig
from aigc.recipes import build_config


def cfg(dataset="shapes"):
    return RunConfig("vae", data_config(dataset), VAEConfig(), TrainConfig())


def test_set_values_are_toml():
    assert parse_set_value("3e-4") == 3e-4
    assert parse_set_value("true") is True
    assert parse_set_value('["green triangle", "yellow circle"]') == ["green triangle", "yellow circle"]
    assert parse_set_value("conv") == "conv"                      # bare word -> string


def test_set_dotted_bare_and_errors():
    c = cfg()
    apply_sets(c, ["lr=3e-4", "data.holdout=[\"green triangle\"]", "model.z_dim=8", "steps=5"])
    assert c.train.lr == 3e-4 and c.data.holdout == ["green triangle"] and c.model.z_dim == 8 and c.train.steps == 5
    with pytest.raises(AigcError, match="unknown config key 'lrr'.*did you mean 'lr'"):
        apply_sets(c, ["lrr=1"])
    with pytest.raises(AigcError, match="wrong type for train.steps"):
        apply_sets(c, ["steps=abc"])
    with pytest.raises(AigcError, match="wrong type for model.z_dim"):
        apply_sets(c, ["z_dim=1.5"])
    with pytest.raises(AigcError, match="key=value"):
        apply_sets(c, ["lr"])
    with pytest.raises(AigcError, match="unknown config section"):
        apply_sets(c, ["foo.lr=1"])


def test_each_dataset_has_its_own_options():
    """A dataset's config holds its own options: another dataset's option is an unknown key, not ignored."""
    with pytest.raises(AigcError, match="unknown config key 'data.holdout'"):
        apply_sets(cfg("mnist"), ["data.holdout=[\"green triangle\"]"])
    with pytest.raises(AigcError, match="unknown config key 'tokenizer'"):
        apply_sets(cfg("shapes"), ["tokenizer=bpe"])
    c = cfg("moving-mnist")
    apply_sets(c, ["digits=2", "frames=8"])
    assert (c.data.digits, c.data.frames) == (2, 8)


def test_precedence_preset_config_flags_set(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[train]\nlr = 0.005\nsteps = 7\n[model]\nz_dim = 3\n')
    c = build_config("vae", "mnist", str(f), ["steps=9"], {"train.steps": 8, "train.seed": 4})
    assert c.train.lr == 0.005 and c.model.z_dim == 3 and c.train.steps == 9 and c.train.seed == 4
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nlr=")
    with pytest.raises(AigcError, match="not valid TOML"):
        build_config("vae", "mnist", str(bad), [], {})


def test_unknown_family_lists_valid():
    with pytest.raises(AigcError, match="valid: captioner, diffusion, gan, gpt, text-gan, tts, vae, video-diffusion, "
                                        "video-gan"):
        build_config("vea", "mnist", None, [], {})


def test_a_value_outside_its_choices_names_the_option_the_choices_and_the_value():
    for family, key, choices in (("diffusion", 'model.schedule="cosin"',
                                  "model.schedule must be 'linear' or 'cosine'"),
                                 ("gan", 'arch="mpl"', "model.arch must be 'mlp' or 'dcgan' for the GAN"),
                                 ("video-diffusion", 'temporal_conv="2d"',
                                  "model.temporal_conv must be '1d', 'separated' or 'dynamic'")):
        data = "moving-shapes" if family.startswith("video") else "mnist"
        with pytest.raises(AigcError) as e:
            build_config(family, data, None, [key], {})
        assert str(e.value) == f"{choices}, got '{key.split('=')[1][1:-1]}'"
