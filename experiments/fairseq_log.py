"""What the experiments read of fairseq's output. fairseq-train runs with --log-format json (JSON_LOG): its
progress bar then logs its statistics as one JSON object a record, under the logger "train_inner" (every
--log-interval updates), "valid" (each validation) or "train" (each epoch's end), with fields such as
{"epoch": 1, "valid_loss": "5.229", "valid_score": "0", "valid_num_updates": "2"} (numbers as fairseq's
progress bars format them). Every record has the layout fairseq_cli gives its log, "time | level | logger |
message". Two facts fairseq prints as text only are read from their one message each: the parameter counts
(fairseq_cli.train) and the score of fairseq-generate (its last line, written by the OFA scorers). The
checkpoint a validation kept is found by fairseq's file names for it, not by the log's save messages."""
import json
import os
from dataclasses import dataclass
from datetime import datetime
from typing import Dict, List, Optional, Tuple

JSON_LOG = "train.log-format=json"  # the override of every fairseq-train run whose log is read here


@dataclass(frozen=True)
class Record:
    """One record of fairseq's log."""
    time: datetime
    logger: str
    message: str


def records(text: str) -> List[Record]:
    """The log records of a fairseq run's output; other lines (warnings, tracebacks, the continued lines of a
    long message) are left out."""
    found = []
    for line in text.splitlines():
        fields = line.split(" | ", 3)
        if len(fields) < 4:
            continue
        try:
            time = datetime.fromisoformat(fields[0])
        except ValueError:
            continue
        found.append(Record(time, fields[2], fields[3]))
    return found


def stats(log: List[Record], logger: str) -> List[Tuple[datetime, dict]]:
    """The progress bar's statistics logged as `logger` ("train_inner", "valid" or "train"), with their times.
    A record that is not JSON yet (the last line of a log read while fairseq writes it) is left out."""
    found = []
    for record in log:
        if record.logger == logger:
            try:
                found.append((record.time, json.loads(record.message)))
            except json.JSONDecodeError:
                continue
    return found


def epoch_ends(log: List[Record]) -> Dict[int, int]:
    """{epoch: updates made when its summary was logged}: the updates at its end, or where training stopped."""
    return {s["epoch"]: int(s["train_num_updates"]) for _, s in stats(log, "train")}


def validation_curve(text: str):
    """[(updates, validation score, seconds since training began)] from a fairseq-train log, and the
    updates per epoch; a ValueError if either is missing. The updates per epoch are those of the first
    epoch's summary: where training stopped inside the first epoch, the updates it made."""
    log = records(text)
    began = next((r.time for r in log if r.logger == "fairseq.trainer" and r.message == "begin training epoch 1"),
                 None)
    if began is None:
        raise ValueError("no start of training in the fairseq-train log")
    points = {}
    for time, s in stats(log, "valid"):
        score = s.get("valid_cider", s.get("valid_score"))  # OFA's validation metric: CIDEr for captions
        if score is not None:
            points[int(s["valid_num_updates"])] = (float(score), (time - began).total_seconds())
    if not points:
        raise ValueError("no validation scores in the fairseq-train log (was it run with --log-format json?)")
    per_epoch = epoch_ends(log).get(1)
    if per_epoch is None:
        raise ValueError("no updates-per-epoch in the fairseq-train log (no summary of the first epoch)")
    return [(u, s, t) for u, (s, t) in sorted(points.items())], per_epoch


def kept_checkpoint(text: str, save: str, updates: int) -> Optional[str]:
    """The checkpoint under `save` that a fairseq-train log's validation at `updates` was saved to under its
    own name, or None: the interval checkpoint checkpoint_<epoch>_<updates>.pt, or, for a validation at an
    epoch's end, the epoch checkpoint checkpoint<epoch>.pt (best and last are overwritten or pruned later)."""
    log = records(text)
    epoch = next((s["epoch"] for _, s in stats(log, "valid") if int(s["valid_num_updates"]) == updates), None)
    if epoch is None:
        return None
    names = [f"checkpoint_{epoch}_{updates}.pt"] + ([f"checkpoint{epoch}.pt"] if
                                                    epoch_ends(log).get(epoch) == updates else [])
    # fairseq writes a checkpoint under a temporary name and renames it: a file found is whole
    return next((path for path in (os.path.join(save, n) for n in names) if os.path.isfile(path)), None)


def validated_checkpoints(text: str, save: str) -> List[Tuple[int, float, str]]:
    """[(updates, validation loss, checkpoint)] of the validations whose interval checkpoint is under `save`
    (a pretraining run, validating and saving every so many updates)."""
    kept = {}
    for _, s in stats(records(text), "valid"):
        updates = int(s["valid_num_updates"])
        path = os.path.join(save, f"checkpoint_{s['epoch']}_{updates}.pt")
        if os.path.isfile(path):  # whole, as in kept_checkpoint
            kept[updates] = (updates, float(s["valid_loss"]), path)
    return sorted(kept.values())


PARAMETERS = "num. shared model params: "  # fairseq_cli.train's message: "...: 4,190,344 (num. trained: 4,190,344)"


def trainable(text: str) -> Tuple[int, int]:
    """(trained, total) parameters, from fairseq-train's message of the counts."""
    counts = [r.message[len(PARAMETERS):] for r in records(text)
              if r.logger == "fairseq_cli.train" and r.message.startswith(PARAMETERS)]
    if not counts:
        raise ValueError("no parameter counts in the fairseq-train log")
    total, trained = counts[-1].rstrip(")").split(" (num. trained: ")
    return int(trained.replace(",", "")), int(total.replace(",", ""))


SCORE_LINE = "Generate test with beam="  # then "5: CIDEr: 0.0123, Bleu_4: 0.0000, ... (10 samples)"


def test_score(text: str, metric: str) -> float:
    """`metric` of fairseq-generate's score line (the last one): the OFA scorers write it as 'name: value'
    pairs joined by ', ', then the number of samples."""
    found = []
    for line in text.splitlines():
        if line.startswith(SCORE_LINE):
            pairs = line.split(": ", 1)[1].rsplit(" (", 1)[0].split(", ")
            found += [float(value) for name, value in (p.split(": ") for p in pairs) if name == metric]
    if not found:
        raise ValueError(f"no {metric} in the fairseq-generate output")
    return found[-1]
