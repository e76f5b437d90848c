"""Where a checkpoint's files are (a local folder, or a hub id downloaded to its cache) and what they hold as
stored: its JSON files and its safetensors tensors, single or sharded, never read through a link that leaves the
folder. checkpoint.py turns them into the canonical form."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from .errors import BonsaiError
from .paths import inside

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json")
HUB_PATTERNS = ["config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
                *TOKENIZER_FILES]


def root_of(folder: Path) -> Path:
    """The folder names inside a checkpoint may resolve into: the folder itself, or for a hub snapshot
    (.../models--org--name/snapshots/REV, whose files link to ../../blobs) the repository's cache folder."""
    folder = Path(folder)
    if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
        return folder.parent.parent
    return folder


def resolve(source: str | Path) -> Path:
    """A local folder as is; anything else is taken as a hub id and downloaded (only the files we read)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise BonsaiError(f"{source}: expected a checkpoint folder or a hub id, got a file")
    if str(source).count("/") != 1 or str(source).startswith((".", "/", "~")):
        raise BonsaiError(f"{source}: no such folder, and not a hub id of the form 'org/name'")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=str(source), allow_patterns=HUB_PATTERNS))
    except Exception as exc:  # the hub client raises many types; all mean "could not fetch"
        raise BonsaiError(
            f"{source}: could not download from the Hugging Face hub ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}); check the id and network, "
            f"or pass a local folder"
        ) from None


def read_json(path: Path, required: bool = True) -> dict:
    """A JSON object file of the checkpoint (never one a symlink takes outside it)."""
    if not path.is_file():
        if required:
            raise BonsaiError(f"{path.name}: missing from {path.parent}; a checkpoint folder needs it")
        return {}
    inside(path.parent, path.name, path.name, root_of(path.parent))
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise BonsaiError(f"{path.name}: not valid JSON ({str(exc)[:200]}); restore the checkpoint's file") from None
    if not isinstance(data, dict):
        raise BonsaiError(f"{path.name}: expected a JSON object, got {type(data).__name__}; restore the "
                          f"checkpoint's file")
    return data


def _weight_map(folder: Path) -> dict[str, str] | None:
    """model.safetensors.index.json's tensor -> shard map, checked (None: a single-file checkpoint)."""
    index = folder / "model.safetensors.index.json"
    if not index.is_file():
        return None
    weight_map = read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise BonsaiError(f"{index.name}: missing 'weight_map' (an object of tensor name -> shard file); "
                          f"restore the checkpoint's index")
    for name, shard in weight_map.items():
        if not isinstance(shard, str):
            raise BonsaiError(f"{index.name}: weight_map[{name!r}] is {shard!r}, not a shard file name; restore "
                              f"the checkpoint's index")
    return weight_map


def _shard_files(folder: Path, weight_map: dict | None) -> list[Path]:
    if weight_map is not None:
        shards = [inside(folder, name, "model.safetensors.index.json", root_of(folder))
                  for name in sorted(set(weight_map.values()))]
    elif (folder / "model.safetensors").is_file():
        shards = [inside(folder, "model.safetensors", "model.safetensors", root_of(folder))]
    else:
        raise BonsaiError(f"{folder}: no model.safetensors or model.safetensors.index.json; "
                          f"only safetensors checkpoints are supported")
    for shard in shards:
        if not shard.is_file():
            raise BonsaiError(f"{shard.name}: shard listed in the index is missing from {folder}")
    return shards


def load_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor, each read from the one shard the index maps it to (a stale copy in another shard is
    skipped, as transformers does); a tensor the index does not map may appear in one shard only."""
    weight_map = _weight_map(folder)
    tensors = {}
    for shard in _shard_files(folder, weight_map):
        try:
            with safe_open(str(shard), framework="pt") as f:
                for name in f.keys():
                    mapped = weight_map.get(name) if weight_map is not None else None
                    if mapped is not None and (folder / mapped).resolve() != shard.resolve():
                        continue
                    if name in tensors:
                        raise BonsaiError(f"{name}: present in two shards and not in the index's weight_map; "
                                          f"map it to one shard in model.safetensors.index.json")
                    tensors[name] = f.get_tensor(name)
        except BonsaiError:
            raise
        except Exception as exc:  # safetensors raises its own error types for corrupt files
            raise BonsaiError(f"{shard.name}: not a readable safetensors file ({str(exc)[:200]}); re-download "
                              f"or restore it") from None
    missing = sorted(set(weight_map or ()) - set(tensors))
    if missing:
        raise BonsaiError(f"{missing[0]}: the index maps it to {weight_map[missing[0]]}, which does not hold it; "
                          f"restore the checkpoint's shards and index")
    return tensors
