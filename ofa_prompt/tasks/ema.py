"""fairseq-train's --store-ema for OFA models, which OFA's --uses-ema validates with (OFATask.valid_step).

Stock fairseq 0.12.3 cannot keep an EMA of them; as OFA's own fairseq fork does:
* its EMA averages every entry of `model.state_dict()`, failing on BatchNorm's integer counters and (with
  --ema-fp32) on the backbone record of a prompt-only state dict: counters are copied, records skipped,
  and the tuned tensors alone are loaded back into the EMA model;
* starting from a checkpoint without EMA state (OFA's scripts: --restore-file ofa_base.pt), its Trainer
  re-initializes the EMA from the checkpoint's weights after deleting them (KeyError: 'model'): the
  checkpoint's weights are handed to it as its EMA state instead."""
import fairseq.trainer
import torch
from fairseq import checkpoint_utils
from fairseq.models.ema import EMA


class OFAEMA(EMA):
    def __init__(self, model, config, device=None, skip_keys=None):
        counters = {k for k, v in model.state_dict().items() if torch.is_tensor(v) and not v.is_floating_point()}
        super().__init__(model, config, device, set(skip_keys or ()) | counters)  # skip_keys are copied

    def build_fp32_params(self, state_dict=None):
        state = self.model.state_dict() if state_dict is None else state_dict
        super().build_fp32_params({k: v for k, v in state.items() if torch.is_tensor(v)})

    def restore(self, state_dict, build_fp32_params=False):
        """Load the tensors `state_dict` holds and keep the rest of the EMA model (a copy of the loaded
        live model): each step hands over only the tuned tensors of a prompt-only state dict, which
        OFAModel.load_state_dict would refuse as an incomplete checkpoint."""
        tensors = {k: v for k, v in state_dict.items() if torch.is_tensor(v)}
        torch.nn.Module.load_state_dict(self.model, tensors, strict=False)
        if build_fp32_params:
            self.build_fp32_params(tensors)


def build_ema(model, config, device):
    return OFAEMA(model, config, device)


class TrainerCheckpointUtils:
    """fairseq.checkpoint_utils as fairseq's Trainer sees it: a loaded checkpoint without EMA state gets
    its own weights as that state, which is what the Trainer means to re-initialize the EMA from."""

    def __getattr__(self, name):
        return getattr(checkpoint_utils, name)

    @staticmethod
    def load_checkpoint_to_cpu(*args, **kwargs):
        state = checkpoint_utils.load_checkpoint_to_cpu(*args, **kwargs)
        if state.get("extra_state") is not None and "model" in state:
            state["extra_state"].setdefault("ema", state["model"])
        return state


# the Trainer uses the names it imported
fairseq.trainer.build_ema = build_ema
fairseq.trainer.checkpoint_utils = TrainerCheckpointUtils()
