"""Every use of a library's private internals, in one place: what it touches, the versions it was written for, why it
exists and the public alternative it waits for. Call sites name an entry (`swapped("fsdp-lazy-load", ...)`) or declare
an override of a private method (`overrides("zero-init-distributed")`); nothing else in embed_lm reaches into private
names of Lightning, DeepSpeed or torch.

    python -m pytest tests/test_compat.py -q    # fails naming the entry when a target moved or a version left its range

At run time a moved target raises InternalMoved naming the entry (never a silent no-op), before anything is patched.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Internal:
    name: str      # what call sites say
    target: str    # "package.module:Attribute.attribute"
    library: str   # the distribution that owns it
    versions: str  # the range it was written and tested for: ">=lowest,<first untested" (release numbers)
    kind: str      # swap: replaced for the length of a call; override: a subclass replaces a private method;
                   # call: a private function or method is called
    why: str
    awaits: str    # the public alternative that would retire it


INTERNALS = {entry.name: entry for entry in [
    Internal("fsdp-lazy-load", "lightning.pytorch.strategies.fsdp:_lazy_load", "lightning", ">=2.6,<2.7", "swap",
             "Lightning's FSDP resume reads a full checkpoint with _lazy_load, which fails under torch 2.13 "
             "('UntypedStorage has no dtype'); torch.load(mmap=True) is used instead (LoraFSDPStrategy.load_checkpoint)",
             "Lightning reading full FSDP checkpoints with torch.load(mmap=True), as its ModelParallelStrategy does"),
    Internal("fsdp-full-state-dict-context", "lightning.pytorch.strategies.fsdp:_get_full_state_dict_context",
             "lightning", ">=2.6,<2.7", "swap",
             "Lightning asks FSDP for full state dicts with offload_to_cpu=True; on CPU processes torch 2.13's FSDP then "
             "frees memory still in use (segfault). Only resuming still goes through it (saving uses public torch API)",
             "an offload_to_cpu option on Lightning's FSDPStrategy"),
    Internal("fsdp-lazy-init", "torch.distributed.fsdp._runtime_utils:_lazy_init", "torch", ">=2.6,<2.14", "call",
             "gathering only the LoRA units (summon_full_params on each) before the model's first forward would make "
             "each unit believe it is the root; the root is initialised first, as its first forward would "
             "(training/checkpoints.py, fsdp_trainable_state_dict)",
             "a public FSDP call that initialises the root without gathering its parameters"),
    Internal("zero-setup-distributed", "lightning.pytorch.strategies.deepspeed:DeepSpeedStrategy._init_deepspeed_distributed",
             "lightning", ">=2.6,<2.7", "call",
             "the parent's setup_distributed refuses CPU devices (no device index); the CPU path calls the parent's "
             "own DeepSpeed process-group set-up after set_world_ranks (ZeroStrategy.setup_distributed)",
             "Lightning's DeepSpeedStrategy accepting accelerator=cpu"),
    Internal("zero-device-rank", "deepspeed:initialize", "deepspeed", ">=0.19,<0.20", "swap",
             "Lightning passes deepspeed.initialize the device index as device_rank, None on CPU; the CPU path fills "
             "in the local rank, for training and for the inference set-up of test/validate (ZeroStrategy.init_deepspeed)",
             "Lightning's DeepSpeedStrategy accepting accelerator=cpu"),
    Internal("zero-shm-allreduce", "deepspeed.comm.torch:build_shm_op", "deepspeed", ">=0.19,<0.20", "swap",
             "DeepSpeed's CPU accelerator JIT-compiles a shared-memory all-reduce (C++, minutes on 2 cores) that gloo "
             "does not need (ZeroStrategy.setup_distributed)",
             "a DeepSpeed option to skip the shared-memory all-reduce"),
    Internal("torch-load-data-only", "torch:load", "torch", ">=2.6,<2.14", "swap",
             "DeepSpeed's zero_to_fp32 converter calls torch.load(weights_only=False); inside it every torch.load is "
             "made weights_only=True so a crafted checkpoint cannot run code (inference/checkpoint_files.py)",
             "a weights_only argument on deepspeed.utils.zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint"),
    Internal("csv-keep-history", "lightning.pytorch.loggers.csv_logs:ExperimentWriter._check_log_dir_exists",
             "lightning", ">=2.6,<2.7", "override",
             "CSVLogger's writer deletes an existing metrics.csv when it starts; a resumed run must keep it "
             "(training/loggers.py, _KeepingWriter)",
             "an append/resume mode on Lightning's CSVLogger"),
    Internal("csv-logger-experiment", "lightning.pytorch.loggers.csv_logs:CSVLogger.experiment", "lightning",
             ">=2.6,<2.7", "override",
             "ResumableCSVLogger builds its own writer the way the parent's property does, through the logger's "
             "_experiment and _fs attributes (training/loggers.py)",
             "a writer-class hook on Lightning's CSVLogger"),
]}


class InternalMoved(RuntimeError):
    """A private target embed_lm relies on is gone: the library changed; the entry in embed_lm/compat.py says why it
    was used and what it waits for."""


def _describe(entry: Internal) -> str:
    try:
        installed = importlib.metadata.version(entry.library)
    except importlib.metadata.PackageNotFoundError:
        installed = "not installed"
    return (f"embed_lm.compat entry {entry.name!r}: {entry.target} ({entry.library} {installed}; written for "
            f"{entry.versions}). Why: {entry.why}. Waits for: {entry.awaits}")


def resolve(name: str) -> tuple[Any, str]:
    """(owner object, attribute name) of entry `name`'s target; InternalMoved naming the entry if it is gone."""
    entry = INTERNALS[name]
    module_name, _, path = entry.target.partition(":")
    try:
        owner: Any = importlib.import_module(module_name)
        *parents, attribute = path.split(".")
        for part in parents:
            owner = getattr(owner, part)
        getattr(owner, attribute)
    except (ImportError, AttributeError) as e:
        raise InternalMoved(f"moved or removed: {_describe(entry)}") from e
    return owner, attribute


def _release(version: str) -> tuple[int, ...]:
    """(2, 13, 0) from '2.13.0+cpu', '0.19.8', (2, 6, 6) from '2.6.6rc1'."""
    import re

    return tuple(int(n) for n in re.findall(r"\d+", re.match(r"[\d.]*\d", version)[0]))


def in_range(name: str) -> bool:
    """Whether the installed library's release is inside the entry's ">=low,<high" range."""
    entry = INTERNALS[name]
    bounds = dict(b.strip().split("=", 1) if b.strip().startswith(">=") else ("<", b.strip()[1:])
                  for b in entry.versions.split(","))
    installed = _release(importlib.metadata.version(entry.library))
    return _release(bounds[">"]) <= installed < _release(bounds["<"])


def check(name: str) -> None:
    """Raise InternalMoved if entry `name`'s target is gone or the installed version is outside its range."""
    resolve(name)
    if not in_range(name):
        raise InternalMoved(f"version outside the range it was written for: {_describe(INTERNALS[name])}")


def original(name: str) -> Any:
    """The current value of entry `name`'s target (a private function to call)."""
    owner, attribute = resolve(name)
    return getattr(owner, attribute)


@contextlib.contextmanager
def swapped(name: str, replacement: Any) -> Iterator[Any]:
    """Entry `name`'s target replaced by `replacement` inside the block (restored after, also on error); yields the
    original. Not thread-safe, as any swap of a module attribute."""
    owner, attribute = resolve(name)
    saved = getattr(owner, attribute)
    setattr(owner, attribute, replacement)
    try:
        yield saved
    finally:
        setattr(owner, attribute, saved)


def overrides(name: str):
    """Class decorator's companion for a method overriding a private one: marks the method with its entry, so
    tests/test_compat.py finds every override and checks its parent still defines the target."""
    if name not in INTERNALS:
        raise KeyError(f"{name!r} is not an entry of embed_lm.compat.INTERNALS")

    def mark(method):
        method.__compat_entry__ = name
        return method

    return mark
