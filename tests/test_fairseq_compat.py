"""The changes to stock fairseq's behaviour (ofa_prompt/fairseq_compat/), each through the fairseq code
it changes: what fairseq does without it is what each test would see if the change were dropped."""
import errno
import os
import subprocess
import sys

import pytest
import torch
from fairseq import checkpoint_utils

from ofa_prompt.data.tsv import BadRow
from ofa_prompt.fairseq_compat import patches
from ofa_prompt.file_version import FileChangedError
from ofa_prompt.tasks.saved_settings import SettingsError


def test_input_errors_print_one_line(capsys, monkeypatch):
    seen = []
    hook = patches._one_line_input_errors(lambda *a: seen.append(a[0]))
    for error in (SettingsError("ckpt.pt was trained for --task caption"), BadRow("a.tsv, line 3: empty caption"),
                  FileChangedError("a.tsv changed on disk")):
        hook(type(error), error, None)
    hook(KeyError, KeyError("x"), None)  # anything else goes to the previous hook, with its traceback
    err = capsys.readouterr().err.splitlines()
    assert [line.split(": error: ")[1] for line in err] == ["ckpt.pt was trained for --task caption",
                                                          "a.tsv, line 3: empty caption", "a.tsv changed on disk"]
    assert seen == [KeyError]
    monkeypatch.setenv("OFA_PROMPT_TRACEBACK", "1")  # for a bug report: the whole traceback
    hook(BadRow, BadRow("x"), None)
    assert seen == [KeyError, BadRow]


def test_a_checkpoint_write_that_fails_leaves_the_previous_one_and_says_so(tmp_path, monkeypatch):
    """A full disk during fairseq's torch_persistent_save (what Trainer.save_checkpoint calls): no partial
    .tmp is left to keep the disk full, the previous checkpoint_last.pt is whole, the message says what to do."""
    last = tmp_path / "checkpoint_last.pt"
    torch.save({"update": 1}, last)
    real_save = torch.save

    def disk_full(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", disk_full)
    monkeypatch.setattr(checkpoint_utils.time, "sleep", lambda s: None)  # fairseq retries 3 times, 2.5 s apart
    with pytest.raises(patches.CheckpointWriteError,
                       match=r"cannot write checkpoint .*checkpoint_last.pt: No space left on device \(\d+ MB free "
                             r"in .*\); the checkpoints already there are intact .* run the same command"):
        checkpoint_utils.torch_persistent_save({"update": 2}, str(last))
    monkeypatch.setattr(torch, "save", real_save)
    assert os.listdir(tmp_path) == ["checkpoint_last.pt"]
    assert torch.load(last)["update"] == 1


def test_loading_the_plugin_leaves_logging_and_other_warnings_alone():
    code = ("import logging, warnings\n"  # as a notebook: logging not configured, the root at WARNING
            "import ofa_prompt\n"
            "ofa_prompt.load()\n"  # what the Python API does
            "print(logging.getLevelName(logging.root.level))\n"
            "warnings.warn('`torch.cuda.amp.autocast` in my own code', FutureWarning)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["WARNING"]  # fairseq's import had set DEBUG
    assert "in my own code" in p.stderr  # fairseq's own deprecation warning is the only one silenced


def test_sigterm_handler_asks_fairseq_to_stop_at_the_next_update(monkeypatch):
    import signal

    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"optimization": {"stop_time_hours": 0.0}})
    monkeypatch.setattr(signal, "signal", lambda *a: installed.append(a))
    monkeypatch.setattr(signal, "getsignal", lambda s: signal.SIG_DFL)
    installed = []
    patches.stop_after_update_on_sigterm(cfg)
    (sig, handler), = installed
    assert sig == signal.SIGTERM
    handler(signal.SIGTERM, None)
    assert 0 < cfg.optimization.stop_time_hours < 1e-9  # fairseq's validate_and_save: stop, save
    assert installed[-1] == (signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends it at once
