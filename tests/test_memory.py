"""The post-training memory plan: exact parameter counts from a config on the meta device, the terms in closed
form, and a refusal before anything loads when a job cannot fit."""

import pytest
from hydra import compose, initialize
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from geomsweep.config.checks import check
from geomsweep.config.schema import LoraSettings
from geomsweep.config.toy import ToyConfig
from geomsweep.estimate.memory import count_parameters, plan_memory
from geomsweep.estimate.peak import GIB
from geomsweep.sources.toy.pretrain import model_config as toy_model_config
from tests.conftest import TINY_TOY, run_app


def settings(*overrides):
    with initialize(version_base="1.3", config_path="../conf"):
        return check(compose("config", overrides=list(overrides)))


def test_parameter_counts_from_the_meta_device_equal_the_built_model_and_peft():
    config = toy_model_config(ToyConfig(**TINY_TOY), 512)
    lora = LoraSettings(r=4)
    parameters, adapted = count_parameters(config, lora)
    model = AutoModelForCausalLM.from_config(config)
    assert parameters == sum(p.numel() for p in model.parameters())
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    trainable, _ = peft_model.get_nb_trainable_parameters()
    assert adapted == trainable


def test_the_plan_moves_with_the_method_and_its_arguments():
    """How each setting moves the plan, without restating its constants; what the plan is worth against a measured
    peak is the real lane's (test_post_training.py: a LoRA SFT of SmolLM2, planned vs measured within 1.5x)."""

    def plan(*overrides, dtype="float32"):
        base = ["model.toy.hidden_size=32", "++method.args.max_length=64", "++method.args.gradient_checkpointing=false"]
        return plan_memory(settings(*base, *overrides), "cpu", dtype)

    dpo, sft = plan("method=dpo"), plan("method=sft")
    # a full fine-tune: gradients as large as the weights, AdamW's two states twice that; DPO a frozen reference too
    assert dpo.gradients == dpo.weights and dpo.optimizer == 2 * dpo.weights and dpo.reference == dpo.weights
    assert sft.reference == 0 and sft.parameters == dpo.parameters
    # activations scale with the batch; gradient checkpointing keeps fewer of them
    one, two = (
        plan("method=dpo", "++method.args.per_device_train_batch_size=1"),
        plan("method=dpo", "++method.args.per_device_train_batch_size=2"),
    )
    assert two.activations == 2 * one.activations
    assert plan("method=dpo", "++method.args.gradient_checkpointing=true").activations < dpo.activations
    # what method.args leaves out is TRL's own default (DPOConfig: beta 0.1, so a reference model)
    assert plan_memory(settings("method=dpo", "model.toy.hidden_size=32"), "cpu", "float32").reference > 0
    # LoRA: the adapters are trained (in float32, as peft keeps them) and the policy without them is the reference
    lora = plan("method=dpo", "method.peft=lora", dtype="bfloat16")
    assert lora.reference == 0 and 0 < lora.trainable < dpo.trainable
    assert lora.weights == lora.parameters * 2 + lora.trainable * 4 and lora.gradients == lora.trainable * 4
    assert dpo.fits and dpo.available > GIB


def test_a_job_that_cannot_fit_stops_before_loading_with_the_figures(tmp_path, cache_dir):
    proc = run_app(["model=olmo-7b", "method=dpo"], tmp_path, cache_dir, check=False)  # no hub here: nothing loads
    assert proc.returncode == 1
    message = proc.stderr.strip().splitlines()[-1]
    # the blocker first: no hub here and no copy in the cache; then the plan's figures
    assert message.startswith("geomsweep: invalid config: model=olmo-7b (allenai/OLMo-7B-hf) is not available offline")
    assert "; and method=dpo on model=olmo-7b does not fit: memory plan" in message
    assert "total 149.8 GiB against" in message and "method.peft=lora" in message
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize(
    ("available_gib", "said"),
    [
        (50, "Options that fit: method.peft=lora (48.3 GiB)"),
        (35, "Options that fit: method.peft=lora method.args.per_device_train_batch_size=1 (31.7 GiB)"),
        (
            30,
            "No change of method.peft, gradient checkpointing or batch size fits cpu (the smallest, method.peft=lora "
            "method.args.per_device_train_batch_size=1, needs 31.7 GiB): a device with more memory",
        ),
    ],
)
def test_a_refusal_suggests_only_changes_that_fit(monkeypatch, available_gib, said):
    from geomsweep.estimate import memory

    monkeypatch.setattr(memory, "device_memory", lambda device: available_gib * GIB)
    dpo = settings("model=olmo-7b", "method=dpo")
    plan = plan_memory(dpo, "cpu", "float32")
    assert not plan.fits and said in memory.refusal(plan, dpo, "float32")


@pytest.mark.parametrize(
    ("peft", "trained", "total"), [([], "6,854,541,312", "149.8"), (["method.peft=lora"], "39,845,888", "48.3")]
)
def test_plan_true_prints_the_plan_of_a_7b_dpo_and_stops(tmp_path, cache_dir, peft, trained, total):
    proc = run_app(["model=olmo-7b", "method=dpo", "plan=true", *peft], tmp_path, cache_dir)
    assert f"{trained} of 6,854,541,312 parameters trained" in proc.stdout and f"total {total} GiB" in proc.stdout
    assert not (tmp_path / "mlflow.db").exists()


def test_processes_hold_a_copy_each_unless_sharded_and_share_a_cpus_ram():
    one = plan_memory(settings("method=dpo", "++method.args.max_length=64"), "cpu", "float32")
    ddp = plan_memory(settings("method=dpo", "++method.args.max_length=64", "parallel=ddp"), "cpu", "float32")
    assert ddp.processes == 8 and not ddp.sharded
    assert ddp.total == one.total and ddp.required == 8 * one.total  # 8 whole copies in one RAM
    fsdp = plan_memory(settings("method=dpo", "++method.args.max_length=64", "parallel=fsdp"), "cpu", "float32")
    assert fsdp.sharded and fsdp.weights == one.weights // 8 and fsdp.optimizer == one.optimizer // 8
    assert fsdp.activations == one.activations  # each process still runs its own micro-batch
    zero3 = settings("method=dpo", "parallel=zero3", "method.processes=4")
    assert zero3.method.processes == 4 and zero3.method.args["deepspeed"]["zero_optimization"]["stage"] == 3
    assert plan_memory(zero3, "cpu", "float32").sharded
