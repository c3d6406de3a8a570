"""embed_lm/compat.py holds every use of a library's private internals: each entry's target still exists in the
installed library, inside the version range it was written for; every entry is used and every use names an entry;
a moved target fails loudly naming the entry; no runtime module patches with unittest.mock."""

import re
from pathlib import Path

import pytest

from embed_lm import compat

PACKAGE = Path(compat.__file__).parent
USE = re.compile(r"compat\.(?:swapped|overrides|original|check)\(\s*\"([a-z0-9-]+)\"")


@pytest.mark.parametrize("name", sorted(compat.INTERNALS))
def test_each_private_target_exists_in_the_installed_version(name):
    compat.check(name)  # InternalMoved, naming the entry, if the target moved or the version left its range
    entry = compat.INTERNALS[name]
    assert entry.why and entry.awaits and entry.kind in ("swap", "override", "call")


def test_every_entry_is_used_and_every_use_names_an_entry():
    used = {m for f in PACKAGE.rglob("*.py") if f.name != "compat.py" for m in USE.findall(f.read_text())}
    assert used == set(compat.INTERNALS)


def test_no_runtime_module_patches_with_unittest_mock():
    offenders = [str(f.relative_to(PACKAGE)) for f in PACKAGE.rglob("*.py") if "unittest" in f.read_text()]
    assert offenders == []


def test_a_moved_target_fails_loudly_naming_the_entry(monkeypatch):
    import lightning.pytorch.strategies.fsdp as target

    monkeypatch.delattr(target, "_lazy_load")
    with pytest.raises(compat.InternalMoved, match=r"'fsdp-lazy-load'.*_lazy_load.*lightning 2\.6.*Waits for"):
        with compat.swapped("fsdp-lazy-load", None):
            pass


def test_a_version_outside_the_range_fails_loudly(monkeypatch):
    monkeypatch.setitem(compat.INTERNALS, "fsdp-lazy-load", compat.Internal(
        **{**compat.INTERNALS["fsdp-lazy-load"].__dict__, "versions": ">=1.0,<2.0"}))
    with pytest.raises(compat.InternalMoved, match="outside the range.*'fsdp-lazy-load'"):
        compat.check("fsdp-lazy-load")


def test_a_swap_is_undone_after_an_error():
    import torch

    load = torch.load
    with pytest.raises(KeyError), compat.swapped("torch-load-data-only", lambda *a, **k: None):
        raise KeyError("inside")
    assert torch.load is load


def test_overrides_are_marked_and_their_parents_define_the_target():
    from embed_lm.training.loggers import ResumableCSVLogger, _KeepingWriter

    assert _KeepingWriter._check_log_dir_exists.__compat_entry__ == "csv-keep-history"
    assert ResumableCSVLogger.experiment.fget.__wrapped__.__compat_entry__ == "csv-logger-experiment"


def test_the_csv_logger_attributes_its_override_reads_exist(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    logger = CSVLogger(tmp_path)
    assert hasattr(logger, "_experiment") and hasattr(logger, "_fs")  # compat entry csv-logger-experiment
