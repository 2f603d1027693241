"""DPO: TRL's DPOTrainer on prompt/chosen/rejected triples. The reference model is rebuilt by TRL from the base
checkpoint's directory (``config._name_or_path``), which is why models are always loaded from a saved path."""

from trl import DPOConfig, DPOTrainer

CONFIG = DPOConfig


def trainer(model, tokenizer, dataset, config: DPOConfig, callbacks, reward=None) -> DPOTrainer:
    return DPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer, callbacks=callbacks)
