"""A tuned OFA model as a Python object: images and text in, answers out, in the user's own terms.

    import ofa_prompt
    model = ofa_prompt.from_pretrained("ofa_base.pt", prompts="caption.safetensors", bpe_dir="BPE")
    model.caption([image1, image2])                    # -> ["a red circle", ...]
    model.load_prompts("vqa.safetensors")
    model.answer(image, "what color is the circle?")   # candidates=[...] to choose among answers
    model.ground(image, "the blue square")             # -> [x0, y0, x1, y1] in the image's own pixels
    model.entail(image, "there is a circle")           # -> "yes" / "no" / "maybe"

Every call goes through the task the model was trained with, as fairseq-generate runs it: the task's own
`build_sample` (instruction, tokenization, image preprocessing), collater, generator and decoding, so the
API and fairseq-generate give the same outputs on the same rows (tests/test_predictor.py). Task settings
come, lowest first, from the task's defaults, the checkpoint's recorded task, the prompt file's record
(prompt_file.export_prompts writes it) and the caller's `task_options`.

Over 400 lines: one class, whose methods (the four tasks, mixed batches) share the loaded model, its
task settings and the tasks built; the checks of the inputs are api_inputs.py.
"""
import json
import logging
import os
import tempfile
from argparse import Namespace
from dataclasses import fields
from typing import Dict, List, NamedTuple, Optional, Sequence, Union

import torch
from fairseq import utils
from fairseq.tasks import TASK_DATACLASS_REGISTRY, TASK_REGISTRY
from fairseq.tasks.fairseq_task import FairseqTask

from .api_inputs import (
    GENERATION_KEYS,
    MIXABLE,
    PLACEHOLDER,
    SEARCH_KEYS,
    as_list,
    check_task_options,
    checked_generation,
    checked_text,
    paired,
    positive_int,
    request_file,
    request_row,
    rgb_image,
)
from .checkpoint import saved_task
from .data.collate import collate
from .errors import InputError
from .hub import load_model
from .metrics.grounding import bins_to_box
from .ngram_blocking import block_repeated_ngrams
from .per_sample_search import allow_only, use_per_sample_rules
from .prompt_file import check_prompts, load_prompt_file
from .tasks.candidates import generation_options
from .tasks.saved_settings import SHARED, read_state

logger = logging.getLogger(__name__)

# the method of each task, and the generation OFA's evaluate scripts use for it
METHODS = {"caption": "caption", "answer": "vqa_gen", "ground": "refcoco", "entail": "snli_ve"}
GENERATION = {"caption": {"beam": 5, "max_len_b": 16, "no_repeat_ngram_size": 3},
              "vqa_gen": {"beam": 5, "max_len_b": 16}, "refcoco": {"beam": 5}, "snli_ve": {"beam": 5}}
OPEN_ENDED = {"unconstrained_training": True, "ans2label_file": None, "val_inference_type": None}  # VQA, no list


class OFAPredictor:
    """A loaded OFA model (frozen backbone and prompts) with the task settings it was tuned with."""

    def __init__(self, model, settings: Dict[str, dict], trained_for: Optional[str], device="cpu",
                 dtype: Optional[torch.dtype] = None, batch_size: int = 16, common: Optional[dict] = None):
        self.model = model.to(device=device, dtype=dtype).eval() if dtype is not None else model.to(device).eval()
        self.device, self.dtype, self.batch_size = torch.device(device), dtype, batch_size
        self.settings = settings  # task name -> options, from checkpoint / prompt file / caller
        self.trained_for = trained_for  # the task of the prompts in use (None: unknown, or no prompts)
        self._common = dict(common or {})  # the caller's options, for every task
        self._tasks, self._generators, self._file_tasks = {}, {}, {}
        self._answer_files = tempfile.TemporaryDirectory(prefix="ofa_prompt_answers_")

    # --- loading ------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, checkpoint: str, prompts: Optional[str] = None, bpe_dir: Optional[str] = None,
                        device="cpu", dtype: Optional[torch.dtype] = None, batch_size: int = 16,
                        force_backbone: bool = False, **task_options):
        """An official OFA checkpoint or one of the plugin's (full or prompt-only), with the prompts of file
        `prompts` if given. `bpe_dir` is the folder of OFA's dict.txt / encoder.json / vocab.bpe (default: the
        one the checkpoint records); `task_options` set task options (e.g. patch_image_size=480)."""
        positive_int(batch_size, "batch_size")
        check_task_options(task_options, METHODS.values())
        if not isinstance(checkpoint, (str, os.PathLike)):
            raise InputError(f"checkpoint: a {type(checkpoint).__name__}, expected the path of an OFA checkpoint")
        trained, recorded = saved_task(read_state(os.fspath(checkpoint)))  # mmap: no tensor data read twice
        overrides = {"bpe_dir": bpe_dir} if bpe_dir else {}
        model = load_model(os.fspath(checkpoint), overrides)
        settings = {name: {} for name in METHODS.values()}
        for name in settings:
            if trained == name:
                settings[name].update(recorded)
            elif trained is not None:  # a pretrained (or other task's) checkpoint: its shared settings
                settings[name].update({k: recorded[k] for k in SHARED if k in recorded})
        predictor = cls(model, settings, trained if trained in settings else None, device, dtype, batch_size,
                        {"bpe_dir": bpe_dir or recorded.get("bpe_dir"), **task_options})
        if prompts is not None:
            predictor.load_prompts(prompts, force_backbone=force_backbone)
        return predictor

    def load_prompts(self, prompts: str, force_backbone: bool = False):
        """Load prompt file `prompts` (prompt_file export) and make its prompts the active ones on the loaded
        backbone, with the task settings the file records."""
        if not isinstance(prompts, (str, os.PathLike)):
            raise InputError(f"load_prompts: a {type(prompts).__name__}, expected the path of one prompt file "
                             "(mixed() serves requests naming several)")
        prompts = os.fspath(prompts)
        loaded = load_prompt_file(prompts)
        self.model.set_prompts(check_prompts(self.model, prompts, loaded, force_backbone,
                                             self._common.get("bpe_dir")))
        self.model.to(self.device)
        record = loaded.record.get("task")
        if record is None:
            logger.warning("%s records no task (exported by an older version): the task settings are the "
                           "checkpoint's and the defaults; any task may use these prompts", prompts)
            self.trained_for = None
        else:
            self.trained_for = record["name"]
            self.settings[record["name"]] = dict(record["options"])
        self._tasks.clear()
        self._generators.clear()
        return self

    # --- the tasks ----------------------------------------------------------------------------------
    def task(self, name: str):
        """The fairseq task `name` with this model's settings (built once)."""
        if name not in self._tasks:
            if self.trained_for is not None and name != self.trained_for:
                raise InputError(f"the prompts in use were tuned for --task {self.trained_for}, not {name}: "
                                 f"load_prompts() with a prompt file of {name} first")
            self._tasks[name] = self._setup_task(name, self.settings.get(name, {}))
        return self._tasks[name]

    def _setup_task(self, name: str, settings: dict):
        config_class = TASK_DATACLASS_REGISTRY[name]
        known = {f.name for f in fields(config_class)}
        options = {k: v for k, v in {**settings, **self._common}.items()
                   if k in known and not k.startswith("_") and v is not None}
        options.pop("data", None)
        if not options.get("bpe_dir"):
            raise InputError("pass bpe_dir=, the folder of OFA's dict.txt, encoder.json and vocab.bpe")
        return TASK_REGISTRY[name].setup_task(config_class(**options))

    def _generator(self, name: str, task, **generation):
        key = (name, tuple(sorted(generation.items())))
        if key not in self._generators:
            # fairseq's build_generator takes fairseq-generate's defaults for whatever is not given
            options = {**decoding_defaults(name, task), **generation}
            self._generators[key] = task.build_generator([self.model], Namespace(**options))
        return self._generators[key]

    def _run(self, name: str, rows: List[list], generation: dict):
        """The first hypothesis of every row and the rows' samples, batch by batch."""
        task = self.task(name)
        generator = self._generator(name, task, **checked_generation(generation))
        out = []
        for start in range(0, len(rows), self.batch_size):
            samples = []
            for i, cols in enumerate(rows[start:start + self.batch_size]):
                sample = task.build_sample(cols, train=False)
                sample["id"] = start + i
                samples.append(sample)
            batch = utils.apply_to_sample(lambda t: t.to(self.device), collate(samples, task.dictionary.pad()))
            if self.dtype is not None:
                batch["net_input"]["patch_images"] = batch["net_input"]["patch_images"].to(self.dtype)
            with torch.no_grad():
                hypos = task.generate(generator, [self.model], batch)
            out += [(task.decode(h[0]["tokens"]), meta) for h, meta in zip(hypos, batch["metas"])]
        return out

    # --- what the tasks do ----------------------------------------------------------------------------
    def caption(self, images, **generation) -> Union[str, List[str]]:
        """A caption of each image (one image: a string)."""
        one = not isinstance(images, (list, tuple))
        rows = [[str(i), rgb_image(im, f"image {i}"), PLACEHOLDER["caption"]] for i, im in enumerate(as_list(images))]
        texts = [t for t, _ in self._run("caption", rows, generation)]
        return texts[0] if one else texts

    def answer(self, images, questions, candidates: Optional[Sequence[str]] = None, **generation):
        """The answer to each question about its image: among `candidates` if given (OFA's all-candidate
        inference, as with --ans2label-file), else open-ended beam search."""
        one, images, questions = paired(images, questions, "question")
        if candidates is not None and generation:
            raise InputError(f"answer() among candidates scores every candidate, without a search: generation "
                             f"options ({', '.join(sorted(generation))}) do not apply; leave them out")
        self._answer_choice(candidates)
        rows = [[str(i), rgb_image(im, f"image {i}"), q, PLACEHOLDER["vqa_gen"], ""]
                for i, (im, q) in enumerate(zip(images, questions))]
        texts = [t for t, _ in self._run("vqa_gen", rows, generation)]
        return texts[0] if one else texts

    def _answer_choice(self, candidates):
        settings = self.settings.setdefault("vqa_gen", {})
        if candidates is None:
            wanted = OPEN_ENDED
        else:
            if not isinstance(candidates, (list, tuple)) or not candidates or \
                    not all(isinstance(c, str) and c.strip() for c in candidates):
                raise InputError(f"candidates={candidates!r}: expected a non-empty list of non-empty answers")
            path = os.path.join(self._answer_files.name, f"{abs(hash(tuple(candidates)))}.json")
            if not os.path.exists(path):
                with open(path, "w", encoding="utf-8") as f:
                    json.dump(list(candidates), f)
            wanted = {"unconstrained_training": False, "ans2label_file": path, "val_inference_type": "allcand"}
        if any(settings.get(k) != v for k, v in wanted.items()):
            settings.update(wanted)
            self._tasks.pop("vqa_gen", None)
            self._generators = {k: v for k, v in self._generators.items() if k[0] != "vqa_gen"}

    def ground(self, images, texts, **generation):
        """The box [x0, y0, x1, y1] (pixels of the original image) each text refers to (None: the model
        gave no box)."""
        one, images, texts = paired(images, texts, "text")
        rows = [[str(i), rgb_image(im, f"image {i}"), t, PLACEHOLDER["refcoco"]]
                for i, (im, t) in enumerate(zip(images, texts))]
        boxes = [bins_to_box(t, m["num_bins"], m["max_image_size"], m["w_resize_ratio"], m["h_resize_ratio"])
                 for t, m in self._run("refcoco", rows, generation)]
        return boxes[0] if one else boxes

    def entail(self, images, hypotheses, premise=None, **generation):
        """Whether each image (and `premise` text, with add_caption) entails the hypothesis: "yes", "no"
        or "maybe" (OFA's answers for entailment, contradiction, neutral)."""
        one, images, hypotheses = paired(images, hypotheses, "hypothesis")
        if generation:
            raise InputError(f"entail() scores the three answers, without a search: generation options "
                             f"({', '.join(sorted(generation))}) do not apply; leave them out")
        premises = self._premises(premise, len(hypotheses))
        rows = [[str(i), rgb_image(im, f"image {i}"), h, p, PLACEHOLDER["snli_ve"]]
                for i, (im, h, p) in enumerate(zip(images, hypotheses, premises))]
        labels = [t for t, _ in self._run("snli_ve", rows, {})]
        return labels[0] if one else labels

    def _premises(self, premise, n: int) -> List[str]:
        """The premise of each of n hypotheses: read by prompts tuned with --add-caption, and only by them."""
        add_caption = self.task("snli_ve").cfg.add_caption
        if premise is None:
            if add_caption:
                raise InputError("these prompts were tuned with --add-caption: pass premise= (--premise), the text "
                                 "given with the image (one for every hypothesis, or a list of one per hypothesis)")
            return [""] * n
        if not add_caption:
            raise InputError("premise= is read only by prompts tuned with --add-caption, and these were not: "
                             "leave it out")
        premises = as_list(premise, n)
        if len(premises) != n:
            raise InputError(f"{n} hypotheses and {len(premises)} premises: give one premise per hypothesis, "
                             "or a single one for every hypothesis")
        return [checked_text(p, f"premise {i}") for i, p in enumerate(premises)]

    # --- one batch, several prompt files ------------------------------------------------------------------
    def mixed(self, requests: Sequence[dict], **generation) -> list:
        """The outputs of requests that each name their own prompt file, served together: one encoder pass and
        one beam search per batch, each sample with its own prompts and its task's instruction, preprocessing
        and decoding rules. A request is a dict: {"prompts": FILE, "image": IMAGE} for a caption prompt file,
        plus "question" (open-ended VQA) or "text" (grounding). Returns, in order, what caption(), answer()
        and ground() return for them alone: every request decodes with its file's settings (the recorded
        --eval-args over OFA's defaults; `generation`, e.g. beam=3, overrides them for all). Lengths and
        n-gram blocking are each sample's own rules; requests whose search settings differ (beam, lenpen,
        unnormalized, ...) are searched in separate groups. Tasks that score candidates (entailment, VQA with
        an answer list) are refused. The prompts loaded with load_prompts() stay the active ones."""
        return [output for output, _ in self._mixed(requests, **generation)]

    def _mixed(self, requests: Sequence[dict], **generation):
        """(output, best hypothesis) of every request."""
        if not isinstance(requests, (list, tuple)):
            raise InputError(f"mixed() takes a list of requests (dicts), got a {type(requests).__name__}")
        generation = checked_generation(generation)
        searches = sorted(set(generation) & set(SEARCH_KEYS))
        if searches:
            raise InputError(f"mixed() runs beam search with each sample's own rules: {', '.join(searches)} apply "
                             "to caption(), answer() and ground() alone")
        if not requests:
            return []
        files = list(dict.fromkeys(request_file(r, i) for i, r in enumerate(requests)))
        loaded = {f: load_prompt_file(f) for f in files}
        tasks = {f: self._file_task(f, loaded[f].record.get("task")) for f in files}
        sizes = {tasks[f][1].cfg.patch_image_size for f in files}
        if len(sizes) > 1:
            raise InputError(f"the prompt files ask for different image sizes ({sorted(sizes)} px): one batch holds "
                             "one; serve them in separate calls")
        groups: Dict[tuple, List[_Request]] = {}  # one search per group, in the order the groups first appear
        for i, request in enumerate(requests):
            path = os.fspath(request["prompts"])
            name, task = tasks[path]
            sample = task.build_sample(request_row(name, request, i), train=False)
            sample["id"] = i
            settings = {**decoding_defaults(name, task), **generation}
            groups.setdefault(_search_key(settings), []).append(
                _Request(files.index(path), name, task, sample, settings))
        stacks = (self.model.encoder, self.model.decoder)
        in_use = [stack.prompts for stack in stacks]
        self.model.set_prompts([check_prompts(self.model, f, loaded[f], bpe_dir=self._common.get("bpe_dir"))
                                for f in files])
        self.model.to(self.device)
        out = [None] * len(requests)
        try:
            for key, group in groups.items():
                for i, result in self._search(dict(key), group).items():
                    out[i] = result
        finally:
            for stack, module in zip(stacks, in_use):
                stack.replace_prompts(module)
        return out

    def _search(self, shared: dict, group: List["_Request"]) -> dict:
        """{request index: (output, best hypothesis)} of requests whose generator options `shared` are the same,
        batch by batch (the prompts of every file of the mix loaded)."""
        task = group[0].task
        # the generator runs to the longest request's length; each sample's rule ends it at its own
        options = {"max_len_b": max(r.settings.get("max_len_b", MAX_LEN_B) for r in group), **shared,
                   "min_len": 0, "no_repeat_ngram_size": 0}
        rules = {r.sample["id"]: _sample_rule(r, None if "max_len_b" in shared else r.settings.get("max_len_b",
                                                                                                    MAX_LEN_B))
                 for r in group}
        generator = use_per_sample_rules(FairseqTask.build_generator(task, [self.model], Namespace(**options)),
                                         rules.get, "a batch mixing tasks")
        by_id, out = {r.sample["id"]: r for r in group}, {}
        for start in range(0, len(group), self.batch_size):
            chunk = group[start:start + self.batch_size]
            batch = utils.apply_to_sample(lambda t: t.to(self.device),
                                          collate([r.sample for r in chunk], task.dictionary.pad()))
            batch["net_input"]["prompt_ids"] = torch.tensor([by_id[i].file for i in batch["id"].tolist()],
                                                            device=self.device)
            if self.dtype is not None:
                batch["net_input"]["patch_images"] = batch["net_input"]["patch_images"].to(self.dtype)
            with torch.no_grad():
                hypos = generator.generate([self.model], batch, bos_token=task.dictionary.bos())
            for i, beams, meta in zip(batch["id"].tolist(), hypos, batch["metas"]):
                r = by_id[i]
                best = beams[0] if beams else None  # None: the rules left no hypothesis within the length
                text = "" if best is None else r.task.decode(r.task.answer_tokens(best["tokens"], r.sample["source"]))
                out[i] = (_output(r.name, text, meta), best)
        return out

    def _file_task(self, path: str, record: Optional[dict]):
        """(task name, task) prompt file `path` was tuned for, with the options it records (`record`, the task
        record of its metadata; built once per file)."""
        if path not in self._file_tasks:
            if record is None:
                raise InputError(f"{path} records no task (exported by an older version): a batch mixing prompt files "
                                 "needs each file's task; export it again with python -m ofa_prompt.prompt_file export")
            if record["name"] not in MIXABLE:
                raise InputError(f"{path}: prompts for --task {record['name']}, which chooses among candidates rather "
                                 f"than searching, so it cannot share a beam search with other tasks: run it on its "
                                 f"own (load_prompts, then entail() or answer(candidates=...))")
            options = {**record["options"], **(OPEN_ENDED if record["name"] == "vqa_gen" else {})}
            self._file_tasks[path] = (record["name"], self._setup_task(record["name"], options))
        return self._file_tasks[path]


def decoding_defaults(name: str, task) -> dict:
    """Generation options where the caller gives none: the task's validation options (--eval-args, which a
    prompt file's task record carries: the decoding its prompts were validated with) over OFA's evaluation
    scripts' (GENERATION)."""
    validated = generation_options("--eval-args", getattr(task.cfg, "eval_args", None) or "{}")
    return {**GENERATION[name], **{k: v for k, v in validated.items() if k in GENERATION_KEYS}}


MAX_LEN_B = 200  # fairseq-generate's default
# generator options a sample's own rule applies in a mixed search (so requests differing in them share one)
PER_SAMPLE = ("max_len_b", "min_len", "no_repeat_ngram_size")


class _Request(NamedTuple):
    """One request of a mixed batch, ready to search."""
    file: int  # the index of its prompt file among the batch's
    name: str  # its task
    task: object
    sample: dict
    settings: dict  # its generator options: its file's decoding, then the caller's


def _search_key(settings: dict) -> tuple:
    """The generator options a request shares with those in its search: all but what its own rule applies.
    With max_len_a the length scales with the batch's source length, which only the generator sees."""
    own = PER_SAMPLE if not settings.get("max_len_a") else tuple(k for k in PER_SAMPLE if k != "max_len_b")
    return tuple(sorted((k, v) for k, v in settings.items() if k not in own))


def _sample_rule(request: _Request, max_len: Optional[int]):
    """A sample's next-token rule in a mixed search: its task's (allowed tokens, VQA's trie) with its own
    minimum and maximum length (`max_len`; None: the generator's) and n-gram blocking, as the task's generator
    applies them alone (fairseq's step s has the bos and s tokens)."""
    task, settings = request.task, request.settings
    rule = task.next_token_rule(request.sample["source"], {**settings, "no_repeat_ngram_size": 0})
    eos, min_len, n = task.dictionary.eos(), settings.get("min_len", 1), settings.get("no_repeat_ngram_size", 0)

    def sample_rule(tokens, lprobs):
        step = len(tokens) - 1
        if max_len is not None and step >= max_len:
            allow_only(lprobs, [eos])
            return
        if step < min_len:
            lprobs[:, eos] = -float("inf")
        if n:
            block_repeated_ngrams(tokens[None], lprobs, n)
        if rule is not None:
            rule(tokens, lprobs)
    return sample_rule


def _output(name: str, text: str, meta: dict):
    if name == "refcoco":
        return bins_to_box(text, meta["num_bins"], meta["max_image_size"], meta["w_resize_ratio"],
                           meta["h_resize_ratio"])
    return text


from_pretrained = OFAPredictor.from_pretrained
