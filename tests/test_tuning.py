"""After one optimizer step exactly the tuning method's parameters have changed; the frozen ResNet's
BatchNorm statistics never move."""
import pytest
import torch

from conftest import build_micro, micro_batch
from ofa_prompt.models.tuning import is_trainable

METHODS = {
    "prompt": dict(encoder_prompt=True, decoder_prompt=True, encoder_prompt_length=4, decoder_prompt_length=4),
    "adapter": dict(adapter=True, adapter_dim=8),
    "bitfit": dict(bitfit=True),
    "finetune": dict(),
}


def one_step(model):
    model.train()
    batch = micro_batch(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.5)
    logits, _ = model(**batch)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["prev_output_tokens"].flatten())
    loss.backward()
    opt.step()


@pytest.mark.parametrize("method", METHODS)
def test_only_intended_parameters_change(method):
    torch.manual_seed(0)
    model = build_micro(**METHODS[method])
    assert model.tuning == method
    before = {k: v.clone() for k, v in model.state_dict().items()}
    one_step(model)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    params = dict(model.named_parameters())
    expected = {k for k in params if is_trainable(k, method)}
    # some trainable tensors legitimately get a (numerically) zero gradient (key biases cancel in the softmax; unused
    # image-code norms): every trainable tensor with a gradient moved
    moved = {k for k in expected if params[k].grad is not None and params[k].grad.abs().max() > 1e-6}
    assert moved and moved <= changed
    if method != "finetune":  # finetuning also updates BatchNorm statistics (buffers)
        assert changed <= expected, sorted(changed - expected)[:5]
        assert all(p.grad is None for k, p in params.items() if k not in expected)


def test_trainable_sets():
    prompt = build_micro(**METHODS["prompt"])
    names = {k for k, p in prompt.named_parameters() if p.requires_grad}
    assert names == {"encoder.encoder_prompt_encoder.embedding.weight",
                     "decoder.decoder_prompt_encoder.embedding.weight"}
    bitfit = build_micro(**METHODS["bitfit"])
    names = {k for k, p in bitfit.named_parameters() if p.requires_grad}
    assert names and all(k.endswith("bias") and "embed_images" not in k for k in names)
    assert "encoder.layers.0.self_attn.q_proj.bias" in names
    adapter = build_micro(**METHODS["adapter"])
    names = {k for k, p in adapter.named_parameters() if p.requires_grad}
    assert {k.split(".adapter.")[0] for k in names} == {f"{s}.layers.{i}"
                                                        for s in ("encoder", "decoder") for i in (0, 1)}


def test_batchnorm_statistics_frozen_under_prompt_tuning():
    model = build_micro(**METHODS["prompt"])
    model.train()
    bn = {k: v.clone() for k, v in model.state_dict().items() if "running_" in k or "num_batches" in k}
    assert bn
    one_step(model)
    now = model.state_dict()
    assert all(torch.equal(v, now[k]) for k, v in bn.items())
    assert not model.encoder.embed_images.training and model.encoder.layers[0].training


def test_batchnorm_statistics_update_when_finetuning():
    model = build_micro()
    key = "encoder.embed_images.bn1.running_mean"
    before = model.state_dict()[key].clone()
    one_step(model)
    assert not torch.equal(before, model.state_dict()[key])


def test_freeze_resnet_keeps_batchnorm_fixed_and_computes_as_eval_batchnorm():
    """OFA's --freeze-resnet: BatchNorm layers with fixed statistics and affine parameters, in OFA's names, giving
    what the trained BatchNorm gives in eval mode."""
    plain, frozen = build_micro(), build_micro(freeze_resnet=True)
    frozen.load_state_dict(plain.state_dict(), strict=False)
    frozen_images = {k for k in frozen.state_dict() if "embed_images" in k}
    assert frozen_images <= {k for k in plain.state_dict() if "embed_images" in k}
    images = torch.rand(2, 3, 32, 32)
    frozen.encoder.embed_images.load_state_dict({k: v for k, v in plain.encoder.embed_images.state_dict().items()
                                                 if "num_batches" not in k})
    with torch.no_grad():
        assert (frozen.encoder.embed_images(images) - plain.eval().encoder.embed_images(images)).abs().max() < 1e-5
    norms = {k: v.clone() for k, v in frozen.state_dict().items() if "embed_images" in k and ".bn" in k}
    one_step(frozen)  # finetuning trains the convolutions, not the frozen norms
    assert norms and all(torch.equal(v, frozen.state_dict()[k]) for k, v in norms.items())
    assert not any("embed_images" in n and ".bn" in n for n, _ in frozen.named_parameters())


@pytest.mark.parametrize("options, words", [
    (dict(encoder_prompt=True, encoder_prompt_length=0), "--encoder-prompt-length must be at least 1"),
    (dict(decoder_prompt=True, decoder_prompt_layers="7"), "decoder-prompt-layers=7"),
    (dict(encoder_prompt_projection=True), "--encoder-prompt-projection=True given without --encoder-prompt"),
    (dict(decoder_prompt_layers="top-1"), "--decoder-prompt-layers=top-1 given without --decoder-prompt"),
    (dict(tuning_method="prompt"), "needs --encoder-prompt"),
    (dict(resnet_type="resnet9"), "--resnet-type=resnet9"),
])
def test_impossible_configs_are_clear_errors(options, words):
    with pytest.raises(ValueError, match=words.replace("-", r"\-").replace("=", r"\=")):
        build_micro(**options)


@pytest.mark.parametrize("side", ["encoder", "decoder"])
@pytest.mark.parametrize("option, value", [("length", 64), ("dim", 32), ("projection", True), ("layers", "bottom-1")])
def test_prompt_options_without_their_prompt_are_errors(side, option, value):
    other = "decoder" if side == "encoder" else "encoder"
    name = f"{side}_prompt_{option}"
    with pytest.raises(ValueError, match=f"--{name.replace('_', '-')}={value} given without --{side}-prompt"):
        build_micro(**{f"{other}_prompt": True, name: value})


@pytest.mark.parametrize("name, value", [("prompt_dropout", 0.1), ("prompt_init", "vocab"), ("prompt_init_seed", 3)])
def test_shared_prompt_options_without_any_prompt_are_errors(name, value):
    with pytest.raises(ValueError, match=f"--{name.replace('_', '-')}={value} given without --encoder-prompt or"):
        build_micro(**{name: value})


def test_prompt_options_at_their_defaults_need_no_prompt():
    # OFA's checkpoints store the prompt dims (2 x encoder width) even without prompts
    model = build_micro(encoder_prompt_length=100, decoder_prompt_dim=128, prompt_dropout=0.2)
    assert model.tuning == "finetune"
    assert build_micro(decoder_prompt=True, decoder_prompt_length=2, prompt_dropout=0.1).tuning == "prompt"


def test_bf16_autocast_keeps_float32_parameters_and_close_outputs():
    torch.manual_seed(0)
    model = build_micro(**METHODS["prompt"]).eval()
    batch = micro_batch(model)
    with torch.no_grad():
        full, _ = model(**batch)
        model.cfg.autocast = "bf16"
        half, _ = model(**batch)
    assert half.dtype == torch.float32 and all(p.dtype == torch.float32 for p in model.parameters())
    assert not torch.equal(full, half)  # really computed in bfloat16 ...
    assert (full - half).abs().max() < 0.05 * full.abs().max()  # ... and still the same model
    model.train()
    one_step(model)  # gradients flow to the float32 prompts
    assert model.encoder.encoder_prompt_encoder.embedding.weight.grad.dtype == torch.float32
