"""Checkpoints, by job: `files` (reading fairseq's and OFA's files, their recorded arguments),
`state_dict` (strict loading of official and plugin state dicts), `prompt_only` (what a frozen backbone's
checkpoints hold), `save_dir` (fairseq-train's --save-dir: one run per folder, damaged resume files)."""
from .files import (  # noqa: F401
    CHECKPOINT_USES,
    WrongFileKind,
    file_kind,
    model_args,
    read_checkpoint,
    require_checkpoint,
    saved_task,
    store_model_args,
    unreadable,
)
from .prompt_only import BACKBONE_KEY, file_fingerprint, prompt_only_checkpoint, tuned_state_dict  # noqa: F401
from .save_dir import check_resume_file, claim_save_dir  # noqa: F401
from .state_dict import CheckpointMismatchError, upgrade_state_dict  # noqa: F401
