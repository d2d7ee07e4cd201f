"""Every change the plugin makes to stock fairseq's (and torch's) behaviour, in one place.

`install()` applies the code changes of `patches`, once; the plugin's `load()` calls it (fairseq's --user-dir
import, the Python API, the python -m tools after reading their arguments): importing a module changes
nothing. `config` is the only reader and writer of fairseq's whole configuration and the only reader of the
command line. The start-up of a run (ofa_prompt.tasks.run_setup) applies the changes that need fairseq-train's
configuration: stopping on SIGTERM and Ctrl-C, --bf16 without a TPU, the schedule's length. Each code change is
guarded by a check that the code it changes is there (fairseq 0.12.x), and says why:

* torch loads the argparse.Namespace that OFA's and fairseq's checkpoints pickle;
* fairseq's deprecated-autocast warning (its code, not the user's) is not repeated at every update;
* fairseq-train's EMA (--store-ema) of an OFA model is ofa_prompt.tasks.ema.OFAEMA;
* fairseq-train's checkpoint writer keeps only the tuned tensors of a frozen backbone (model and EMA);
* a checkpoint without EMA state (OFA's released ones) re-initializes the EMA instead of failing;
* checkpoint_last.pt / checkpoint_best.pt are copied through a temporary file and a rename;
* a checkpoint that cannot be written (a full disk) leaves no partial file and stops with one message;
* SIGTERM and Ctrl-C stop fairseq-train after the update under way, with a checkpoint, instead of at once;
* start-up is quiet: fairseq's import notices (torch.jit.script, tensorboardX) are not printed and the root
  logger keeps its level (fairseq's import sets DEBUG); no hydra notices about fairseq's own configuration, no
  model printout (fairseq-train still logs its one-line parameter count), no "shared parameter" lines for
  absent biases;
* --bf16 without torch_xla trains in bfloat16 on the CPU or GPU instead of asking for a TPU;
* in fairseq's commands and the python -m tools (not the Python API), the plugin's input errors
  (ofa_prompt.errors.InputError) print as one line, without a traceback;
* the configuration (`config`): fairseq-train skips its check for unused valid* files in the --data folder
  (--data names TSV files); fairseq-generate without --scoring scores with the task's metric; polynomial_decay's
  --total-num-update and --warmup-updates are counted from the data (ofa_prompt.schedule).

This module imports neither fairseq nor the plugin's other modules, so that `import ofa_prompt` stays light.
"""
import contextlib
import logging
import sys
import warnings


def install(command_line: bool = False):
    """Import fairseq quietly and apply every change of `patches`, once per process. `command_line`: a command
    (fairseq's, a python -m tool) runs, whose input errors print as one line."""
    root_level = logging.root.level  # a command-line tool configures its own logging, a library leaves it alone
    with _import_notices_silenced():
        from . import patches
    logging.root.setLevel(root_level)
    patches.install()
    if command_line:
        patches.print_input_errors_as_one_line()


def imported_by_user_dir() -> bool:
    """Whether the package being imported is being imported by fairseq's --user-dir, which must load the plugin
    before fairseq goes on (it then imports the package's tasks and models itself, and composes its configuration,
    whose hydra notices the plugin silences). fairseq imports the package from `fairseq.utils.import_user_module`:
    that function's code is then on the call stack. A Python `import ofa_prompt` (from the API, a test, a python -m
    tool) has no such frame, and if fairseq is not imported yet, it cannot be fairseq importing."""
    importer = getattr(sys.modules.get("fairseq.utils"), "import_user_module", None)
    code = getattr(importer, "__code__", None)
    frame = sys._getframe(1) if code is not None else None
    while frame is not None:
        if frame.f_code is code:
            return True
        frame = frame.f_back
    return False


@contextlib.contextmanager
def _import_notices_silenced():
    """fairseq's import prints two notices that ask nothing of the user (fairseq-train prints them before the
    plugin is imported; the tools and Python, which import fairseq through the plugin, do not): torch's
    deprecation of the torch.jit.script that fairseq's modules apply, and the tensorboardX that only fairseq's
    text-to-speech task would use."""
    tts = logging.getLogger("fairseq.tasks.text_to_speech")
    tts.addFilter(_no_tensorboardx_notice)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
            yield
    finally:
        tts.removeFilter(_no_tensorboardx_notice)


def _no_tensorboardx_notice(record: logging.LogRecord) -> bool:
    return "install tensorboardX" not in record.getMessage()
