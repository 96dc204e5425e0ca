"""Push a trained output folder to the Hugging Face hub.

Uploads exactly the files of a sentence-transformers model (no checkpoint-*/ dirs, no temp files, tensorboard
runs/ only on request) in one commit through `huggingface_hub`. Any hub failure becomes a one-line
`HubPushError` saying what happened and what to do; the local folder is only ever read. The card itself is
`nlp_contrastive.card`.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

from nlp_contrastive.card import (
    CARD_FILE,
    CARD_MARKER,
    CARD_MARKER_RE,
    MODEL_ID_PLACEHOLDER,
    PLACEHOLDER_NOTE,
    card_from_folder,
)
from nlp_contrastive.run_record import read_json

logger = logging.getLogger(__name__)

_REPO_ID_RE = re.compile(r"^([A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")  # bare names go to your namespace
_LOGIN_HINT = ("log in with `hf auth login` (`huggingface-cli login` on huggingface_hub<1.0) or set HF_TOKEN "
               "to a token with write access")


class HubPushError(RuntimeError):
    """A push that did not happen, in one line: what went wrong and what to do about it."""


class HubInputError(HubPushError, ValueError):
    """A push asked for wrongly (not a model folder, invalid repo id, no token, a token in the files): fix the
    input and run again; the CLI exits 2 for these, 1 when the hub itself failed."""


_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
_TOKENIZER = ("tokenizer.json", "tokenizer_config.json")


def check_model_folder(output_dir: str | os.PathLike) -> None:
    """Fail with one line naming what is missing unless `output_dir` is a loadable sentence-transformers model."""
    folder = Path(output_dir)
    if not folder.is_dir():
        raise HubInputError(f"{folder} is not a directory: give the output folder of a training run")
    missing: list[str] = []
    modules = None
    try:
        modules = read_json(folder / "modules.json")
    except (OSError, ValueError):
        missing.append("a readable modules.json")
    if modules is None and not missing:
        missing.append("modules.json")
    transformer_dir = folder
    for module in modules if isinstance(modules, list) else []:
        module_dir = folder / module.get("path", "")
        if module.get("type", "").endswith(".Transformer"):
            transformer_dir = module_dir
        elif module.get("type", "").endswith(".Pooling") and not (module_dir / "config.json").exists():
            missing.append(f"{module.get('path')}/config.json")
    prefix = "" if transformer_dir == folder else f"{transformer_dir.relative_to(folder).as_posix()}/"
    if not (transformer_dir / "config.json").exists():
        missing.append(f"{prefix}config.json")
    if not any((transformer_dir / name).exists() for name in _WEIGHTS):
        missing.append(f"weights ({prefix}model.safetensors or {prefix}pytorch_model.bin)")
    if not any((transformer_dir / name).exists() for name in _TOKENIZER):
        missing.append(f"a tokenizer ({prefix}tokenizer.json or {prefix}tokenizer_config.json)")
    if missing:
        raise HubInputError(f"{folder} is not a complete sentence-transformers model: missing {', '.join(missing)}; "
                           "push the output folder of a finished run (Encoder.save_pretrained writes all of these)")


def upload_file_list(output_dir: str | os.PathLike, *, include_logs: bool = False) -> list[str]:
    """Files to push, relative POSIX paths: no checkpoint-*/ dirs, hidden/temp files, caches; runs/ on request."""
    folder = Path(output_dir)
    files = []
    for root, dirs, names in os.walk(folder):
        rel_root = Path(root).relative_to(folder)
        dirs[:] = sorted(d for d in dirs if not (
            d.startswith((".", "checkpoint-")) or d == "__pycache__"
            or (rel_root == Path(".") and d == "runs" and not include_logs)))
        for name in sorted(names):
            if name.startswith(".") or name.endswith((".tmp", ".lock", "~")):
                continue
            files.append((rel_root / name).as_posix())
    return sorted(files)


def push_to_hub(output_dir: str | os.PathLike, repo_id: str, *, private: bool = False, revision: str | None = None,
                token: str | None = None, commit_message: str | None = None, dry_run: bool = False,
                include_logs: bool = False) -> str:
    """Push a trained output folder to `repo_id` in one commit; return the repo URL (or the dry-run listing).

    The token comes from `token`, else huggingface_hub's usual places (HF_TOKEN, `hf auth login`). The card is
    generated if the folder has none; a card we generated gets its usage snippets pointed at `repo_id`; a
    hand-written README.md is uploaded as is. The local folder is only read, also when the push fails.
    """
    folder = Path(output_dir)
    check_model_folder(folder)
    _check_repo_id(repo_id)
    files = [f for f in upload_file_list(folder, include_logs=include_logs) if f != CARD_FILE]
    if dry_run:
        card, card_origin = _card_for_upload(folder, repo_id)
        return _dry_run_listing(folder, repo_id, files, card, card_origin, private, revision)

    import huggingface_hub
    from huggingface_hub import CommitOperationAdd, HfApi

    token = token or huggingface_hub.get_token()
    if not token:
        raise HubInputError(f"push to {repo_id} failed: no Hugging Face token found; {_LOGIN_HINT}")
    leaking = [f for f in files + [CARD_FILE] if (folder / f).exists() and _contains_text(folder / f, token)]
    if leaking:
        raise HubInputError(f"refusing to push: {', '.join(leaking)} in {folder} contain(s) your hub token; "
                           "remove it from those files, then push again")
    from nlp_contrastive import __version__

    api = HfApi(library_name="nlp-contrastive", library_version=__version__)  # shows up in the user agent
    try:
        url = api.create_repo(repo_id, token=token, private=private, repo_type="model", exist_ok=True)
        repo_id = getattr(url, "repo_id", None) or repo_id  # a bare name resolves to your namespace
        card, _ = _card_for_upload(folder, repo_id)
        operations = [CommitOperationAdd(path_in_repo=f, path_or_fileobj=str(folder / f)) for f in files]
        if card is not None:
            operations.append(CommitOperationAdd(path_in_repo=CARD_FILE, path_or_fileobj=card.encode("utf-8")))
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, token=token, exist_ok=True)
        api.create_commit(repo_id, operations, token=token, revision=revision, repo_type="model",
                          commit_message=commit_message or "Add sentence-embedding model trained with nlp-contrastive")
    except Exception as exc:
        message = _explain_hub_error(exc, repo_id, api.endpoint)
        raise HubPushError(f"{message}. The local model in {folder} is unchanged.".replace(token, "***")) from exc
    return f"{str(url).rstrip('/')}/tree/{revision}" if revision else str(url)


def _contains_text(path: Path, needle: str, limit: int = 50_000_000) -> bool:
    """Whether a (text-sized) file holds `needle`; weights and other big files are not scanned."""
    if path.suffix not in (".json", ".md", ".txt", ".yaml", ".yml", ".csv", ".jsonl", ".py", ".cfg", ".ini") or (
            path.stat().st_size > limit):
        return False
    return needle.encode("utf-8") in path.read_bytes()


def _check_repo_id(repo_id: str) -> None:
    if (not isinstance(repo_id, str) or not _REPO_ID_RE.match(repo_id) or ".." in repo_id or "--" in repo_id
            or len(repo_id) > 96):
        raise HubInputError(f"invalid --repo-id '{repo_id}': use 'user-or-org/model-name' or just 'model-name' "
                           "(letters, digits, '-', '_', '.'; no '--' or '..'; at most 96 characters)")


def _card_for_upload(folder: Path, repo_id: str) -> tuple[str | None, str]:
    """(card text, where it came from): generated if absent, retargeted if ours, otherwise the user's as is."""
    path = folder / CARD_FILE
    if not path.exists():
        try:
            return card_from_folder(folder, model_id=repo_id), "generated"
        except Exception as exc:
            logger.warning("pushing without a model card: generating it failed (%s: %s)", type(exc).__name__, exc)
            return None, "none"
    text = path.read_text(encoding="utf-8")
    match = CARD_MARKER_RE.search(text)
    if not match or match.group(1) == repo_id:
        return text, "existing"
    old = match.group(1)
    if old == MODEL_ID_PLACEHOLDER:
        text = text.replace(PLACEHOLDER_NOTE, "")
    text = text.replace(match.group(0), CARD_MARKER.format(model_id=repo_id)).replace(json.dumps(old), json.dumps(repo_id))
    return text, f"existing, model id {old} -> {repo_id}"


def _dry_run_listing(folder: Path, repo_id: str, files: list[str], card: str | None, card_origin: str,
                     private: bool, revision: str | None) -> str:
    from huggingface_hub import constants

    rows = [(f, (folder / f).stat().st_size, "") for f in files]
    if card is not None:
        rows.append((CARD_FILE, len(card.encode("utf-8")), f"  ({card_origin})"))
    rows.sort()
    width = max(len(f) for f, _, _ in rows)
    target = repo_id if "/" in repo_id else f"<your namespace>/{repo_id}"
    lines = [f"Dry run: would push {folder} to {constants.ENDPOINT}/{target} (revision {revision or 'main'}, "
             f"{'private' if private else 'public if new'}); nothing was uploaded.",
             f"{len(rows)} files, {_format_size(sum(size for _, size, _ in rows))}:"]
    lines += [f"  {f.ljust(width)}  {_format_size(size):>10}{note}" for f, size, note in rows]
    lines += ["", f"----- {CARD_FILE} -----", card if card is not None else "(no model card)"]
    return "\n".join(lines)


def _format_size(size: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


def _transport_errors() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """(timeout, connection) exception types of whichever HTTP stack this huggingface_hub uses."""
    timeouts: list[type] = [TimeoutError]
    connection: list[type] = [ConnectionError]
    for module_name in ("httpx2", "httpx"):
        try:
            module = __import__(module_name)
            timeouts.append(module.TimeoutException)
            connection.append(module.TransportError)
        except (ImportError, AttributeError):
            pass
    try:
        import requests

        timeouts.append(requests.Timeout)
        connection.append(requests.ConnectionError)
    except ImportError:
        pass
    return tuple(timeouts), tuple(connection)


def _explain_hub_error(exc: BaseException, repo_id: str, endpoint: str) -> str:
    """What happened and what to do, in one line, for the errors a push meets in practice."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    status = getattr(getattr(exc, "response", None), "status_code", None)
    server = (getattr(exc, "server_message", None) or "").strip().splitlines()
    detail = f" ({server[0]})" if server else ""
    timeouts, connection = _transport_errors()
    if isinstance(exc, HfHubHTTPError) and status is not None:
        if status == 401:
            what = f"HTTP 401, the hub did not accept the token{detail}; {_LOGIN_HINT}"
        elif status == 403:
            what = (f"HTTP 403, the token may not write to {repo_id}{detail}; use a token with write access to that "
                    "namespace (fine-grained tokens need write permission on it) or push to a namespace you own")
        elif status == 404:
            what = (f"HTTP 404, {repo_id} or its revision was not found{detail}; check --repo-id / --revision and "
                    "that your token can see the repo")
        elif status == 429:
            what = f"HTTP 429, rate limited by the hub{detail}; wait a few minutes and retry"
        elif status >= 500:
            what = (f"HTTP {status}, a server error on the hub{detail}; retry later "
                    "(status: https://status.huggingface.co)")
        else:
            what = f"HTTP {status}{detail}; check the message and retry"
    elif isinstance(exc, OfflineModeIsEnabled):
        what = "HF_HUB_OFFLINE is set; unset HF_HUB_OFFLINE (and TRANSFORMERS_OFFLINE) to push"
    elif isinstance(exc, timeouts):
        what = f"timed out waiting for {endpoint}; check your connection and retry"
    elif isinstance(exc, connection):
        what = f"could not connect to {endpoint}; check your network or proxy (and HF_ENDPOINT), then retry"
    elif isinstance(exc, ValueError) and "metadata" in str(exc).lower():
        reason = " ".join(str(exc).split())
        what = f"the hub rejected README.md's metadata: {reason}; fix its YAML front matter or delete it to regenerate"
    else:
        first = (str(exc).strip().splitlines() or [""])[0]
        what = f"{type(exc).__name__}: {first}; retry, and report it if it persists"
    return f"push to {repo_id} failed: {what}"
