"""Every config composes: each option of each group, each experiment, the debug modes."""

from __future__ import annotations

from pathlib import Path

import hydra
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from proteinperf.model import ModelConfig
from proteinperf.train import register_resolvers

CONF = Path(__file__).resolve().parents[2] / "conf"
GROUPS = (
    "model",
    "optim",
    "data",
    "trainer",
    "logger",
    "callbacks",
    "experiment",
    "debug",
    "paths",
)


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose_train(*overrides: str, tmp: Path = Path("/nonexistent")):
    register_resolvers()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose(
            "train", overrides=[f"paths.output_dir={tmp}", *overrides], return_hydra_config=True
        )
    with open_dict(cfg):
        hydra_node = cfg.pop("hydra")
    OmegaConf.resolve(cfg)
    return cfg, hydra_node


def check_model(cfg) -> ModelConfig:
    fields = OmegaConf.to_container(cfg.model)
    objective, _ = fields.pop("objective"), fields.pop("init_from")
    config = ModelConfig.from_dict(fields)  # every key is a real field, values are valid
    assert config.causal == (objective == "clm")
    assert cfg.data.objective == objective
    return config


def test_defaults():
    cfg, hydra_node = compose_train()
    config = check_model(cfg)
    assert (config.attention, config.causal) == ("favor_relu", False)
    assert cfg.data.data_path.endswith("data/swissprot_20k.fasta.gz")  # diverse, clustered
    assert cfg.data.clusters_file.endswith("data/swissprot_20k.clusters50.tsv.gz")
    assert cfg.trainer.accelerator == "cpu" and cfg.trainer.gradient_clip_val == 0.5
    assert cfg.optim.name == "adamw" and list(cfg.optim.betas) == [0.9, 0.98]
    assert cfg.optim.eps == 1e-9 and cfg.optim.lr == 1e-3 and cfg.optim.weight_decay == 0.1
    assert list(cfg.logger) == ["csv"]
    assert "model_checkpoint" in cfg.callbacks and cfg.callbacks.model_checkpoint.save_last
    assert "/outputs/train/runs/" in hydra_node.run.dir


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_composes(group, tmp_path):
    for option in options(group):
        cfg, _ = compose_train(f"{group}={option}", tmp=tmp_path)
        check_model(cfg)
        for node in ("data", "trainer"):
            assert "_target_" in cfg[node]


@pytest.mark.parametrize("experiment", options("experiment"))
def test_experiments(experiment, tmp_path):
    cfg, _ = compose_train(f"experiment={experiment}", tmp=tmp_path)
    config = check_model(cfg)
    dm = hydra.utils.instantiate(cfg.data, _convert_="all")  # arguments fit the DataModule
    assert dm.hparams.max_length <= config.max_len or config.positional != "learned"
    if experiment.startswith("paper_"):
        assert (config.n_layers, config.n_heads, config.d_model) == (36, 8, 512)
        assert (config.d_ff, config.nb_features) == (1024, 256)
        assert cfg.trainer.strategy == "ddp"
    expected = {"paper_uni": (True, "clm"), "paper_bid": (False, "mlm")}
    if experiment in expected:
        assert (config.causal, cfg.model.objective) == expected[experiment]
    if experiment == "paper_concat8192":
        assert cfg.data.concatenated and cfg.data.max_length == 8192


def test_cpu_trainers_instantiate(tmp_path):
    for option in ("cpu", "default", "ddp_cpu"):
        cfg, _ = compose_train(
            f"trainer={option}", "trainer.enable_progress_bar=false", tmp=tmp_path
        )
        trainer = hydra.utils.instantiate(cfg.trainer, logger=False)
        assert trainer.max_steps == cfg.trainer.max_steps


def test_loggers_stay_offline(tmp_path, monkeypatch):
    from proteinperf import train

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg, _ = compose_train("logger=many_loggers", tmp=tmp_path)
    assert set(cfg.logger) == {"csv", "tensorboard", "wandb"}
    train._default_wandb_offline(cfg)
    import os

    assert os.environ["WANDB_MODE"] == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    train._default_wandb_offline(cfg)
    assert os.environ["WANDB_MODE"] == "disabled"


def test_run_ids_are_unique_and_shared_by_external_ranks(tmp_path, monkeypatch):
    from proteinperf.train import run_id

    for name in ("PROTEINPERF_RUN_ID", "SLURM_JOB_ID", "TORCHELASTIC_RUN_ID", "SLURM_JOB_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    first = run_id(str(tmp_path))
    (tmp_path / first).mkdir()
    assert run_id(str(tmp_path)) != first
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    assert run_id(str(tmp_path)) == "slurm-42"  # the job's folder, found again on requeue


@pytest.mark.parametrize(
    "override, key",
    [("model.d_modle=3", "d_modle"), ("optim.lrr=1", "lrr"), ("+model.d_modle=3", "d_modle")],
)
def test_misspelt_keys_fail_naming_the_key(override, key):
    with pytest.raises(Exception) as info:  # `+` forces the key in; the module refuses it
        cfg, _ = compose_train(override)
        hydra.utils.instantiate(cfg.module, _convert_="all")
    chain, err = [], info.value
    while err is not None:
        chain.append(str(err))
        err = err.__cause__
    assert key in "\n".join(chain)


def test_module_is_built_from_config(tmp_path):
    from proteinperf.lightning_module import ProteinLM
    from proteinperf.optim import OptimConfig

    cfg, _ = compose_train("model=tiny", "model=performer_causal", "optim.lr=3e-4", tmp=tmp_path)
    module = hydra.utils.instantiate(cfg.module, _convert_="all")
    assert isinstance(module, ProteinLM) and module.hparams.objective == "clm"
    assert module.hparams.optim["lr"] == 3e-4
    # conf/optim/default.yaml states only what differs from OptimConfig's defaults
    defaults = OptimConfig()
    assert cfg.optim.warmup_steps == 50 and defaults.warmup_steps == 0
    assert (cfg.optim.name, list(cfg.optim.betas)) == (defaults.name, defaults.betas)


def test_renamed_modules_left_no_aliases():
    import importlib

    renamed = ("proteinperf.training", "proteinperf.attention.kernels", "proteinperf.models",
               "proteinperf.data.kernels")  # fmt: skip
    for old in renamed:
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module(old)
    from proteinperf import checkpoint, train
    from proteinperf.inference import common, mutations, score

    leftovers = [(train, "summary"), (common, "plan_batches"), (checkpoint, "build_model"),
                 (mutations, "resolve_strategy"), (score, "resolve_strategy")]  # fmt: skip
    assert not [name for module, name in leftovers if hasattr(module, name)]
