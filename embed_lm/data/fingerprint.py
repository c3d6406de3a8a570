"""The training data of a run, fingerprinted: every checkpoint records it, and a resume with other data is refused
(embed_lm/training/resume.py) unless `resume.allow_changes` names `data`.

    data_fingerprint(datamodule.sources, datamodule.cache_dir)   # {source: {"options": {...}, "files": {path: hash}}}
    data_changes(saved, now)                # ["source 'msmarco': .../triples.tsv: other content", ...]

A file is identified by the content hash of its Arrow cache key (not size and modification time, which an edit can
keep), and a source's options (max_examples, skip_invalid, a hub set's id and split, ...) are the rest of that key
(embed_lm/data/tables.py): the hashes remembered under `cache_dir/file_hashes/` are reused, so a start reads no file
again that building or finding its table already hashed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from embed_lm.data.tables import source_key


def data_fingerprint(sources: dict[str, Any], cache_dir: str | Path) -> dict[str, dict]:
    """Per source: its cache-key options (plain JSON values) and the content hash of every file it reads."""
    out = {}
    for name, source in sources.items():
        key = source_key(source, cache_dir)
        files = key.pop("files", [])  # (absolute path, size, content hash) per file
        out[name] = {"options": json.loads(json.dumps(key, sort_keys=True, default=str)),
                     "files": {path: digest for path, _size, digest in files}}
    return out


def data_changes(saved: dict[str, dict], now: dict[str, dict]) -> list[str]:
    """What differs between two fingerprints, one readable line per change ([] = the same data). Files are matched
    by content first, so data moved to another folder unchanged is the same data, then by name."""
    changes = []
    for name in sorted(saved.keys() | now.keys()):
        if name not in now:
            changes.append(f"source '{name}' is gone")
            continue
        if name not in saved:
            changes.append(f"source '{name}' is new")
            continue
        old, new = saved[name], now[name]
        for key in sorted(old["options"].keys() | new["options"].keys()):
            if old["options"].get(key) != new["options"].get(key):
                changes.append(f"source '{name}': {key} {old['options'].get(key)!r} -> {new['options'].get(key)!r}")
        changes += [f"source '{name}': {line}" for line in _file_changes(old["files"], new["files"])]
    return changes


def _file_changes(old: dict[str, str], new: dict[str, str]) -> list[str]:
    """Files matched by content first (a moved file is the same file), then by name (the same name elsewhere with
    other content: "other content"); the rest are no longer or newly read."""
    gone = {p: h for p, h in old.items() if h not in new.values()}
    came = {p: h for p, h in new.items() if h not in old.values()}
    lines = []
    for path in sorted(gone):
        twin = path if path in came else next((p for p in sorted(came) if Path(p).name == Path(path).name), None)
        if twin is None:
            lines.append(f"{path} no longer read")
        else:
            lines.append(f"{twin} has other content" + ("" if twin == path else f" than {path}"))
            del came[twin]
    return lines + [f"{path} newly read" for path in sorted(came)]
