"""RLVR: TRL's GRPOTrainer with a verifiable reward (rewards.py). ``use_vllm`` (a GRPOConfig field, off by
default) moves generation to vLLM on a GPU; the generation batch must be divisible by ``num_generations``."""

from trl import GRPOConfig, GRPOTrainer

CONFIG = GRPOConfig


def trainer(model, tokenizer, dataset, config: GRPOConfig, callbacks, reward=None) -> GRPOTrainer:
    return GRPOTrainer(model=model, reward_funcs=reward, args=config, train_dataset=dataset,
                       processing_class=tokenizer, callbacks=callbacks)
