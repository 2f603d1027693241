"""SFT: TRL's SFTTrainer on prompt/completion pairs (loss on the completion tokens only)."""

from trl import SFTConfig, SFTTrainer

CONFIG = SFTConfig


def trainer(model, tokenizer, dataset, config: SFTConfig, callbacks, reward=None) -> SFTTrainer:
    return SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer, callbacks=callbacks)
