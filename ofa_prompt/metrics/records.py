"""What a task knows about each evaluated sample (its references), handed to the scorer.

fairseq-generate calls `task.inference_step` for a batch, then `scorer.add_string(target, hypothesis)`
once per sample of that batch, in the same order. The task pushes one record per sample; the scorer
pops them in that order, so references need not be squeezed into the single target string.
"""
import collections
from dataclasses import dataclass, field


@dataclass
class Record:
    sample_id: int
    references: object
    meta: dict = field(default_factory=dict)


class Recorder:
    def __init__(self):
        self._queue = collections.deque()

    def push(self, sample_id, references, meta=None):
        self._queue.append(Record(sample_id, references, meta or {}))

    def pop(self) -> Record:
        if not self._queue:
            raise RuntimeError("the scorer got a hypothesis without a record: use an ofa_prompt task with "
                               "the ofa_* scorers (the task records each sample's references)")
        return self._queue.popleft()

    def clear(self):
        self._queue.clear()

    def __len__(self):
        return len(self._queue)


RECORDER = Recorder()
