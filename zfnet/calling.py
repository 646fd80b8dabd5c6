"""How zfnet calls a model it did not build (issue 35): what its forward returns is read as logits, and the
Python API checks its arguments as the CLI does, each problem one `UsageError`.

Model outputs: a tensor as it is; a tuple or list gives its first element and a mapping (a Hugging Face output
too) its "logits" key, unless `output=` (the CLI's --output INDEX|KEY) names another; anything else is one line.
Non-finite logits of a model in eval mode stop the work with one line naming the sample.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
from torch import nn

from .errors import UsageError, note
from .models import model_input_shape
from .runtime import eval_mode, model_device, model_dtype
from .usercode import blame

OUTPUT_HELP = "which part of a forward's tuple (an index) or mapping (a key) holds the logits (default: 0 / logits)"


def parse_output(text: str | int | None) -> int | str | None:
    """--output INDEX|KEY: an integer index, else a key."""
    if text is None or isinstance(text, int):
        return text
    text = text.strip()
    if not text:
        raise UsageError("--output is empty; pass an index (0) or a key (logits)")
    return int(text) if text.lstrip("-").isdigit() else text


def pick(out: Any, output: int | str | None = None) -> torch.Tensor:
    """The logits in what a forward returned."""
    if isinstance(out, torch.Tensor) and output is None:
        return out
    if isinstance(out, Mapping):
        key = "logits" if output is None else output
        if key not in out:
            keys = ", ".join(map(str, list(out)[:8]))
            raise UsageError(
                f"the model's forward returned a mapping without {key!r} (keys: {keys}); pass --output KEY"
            )
        got = out[key]
    elif isinstance(out, (tuple, list)):
        index = 0 if output is None else output
        if not isinstance(index, int) or not -len(out) <= index < len(out):
            raise UsageError(
                f"the model's forward returned a {type(out).__name__} of {len(out)}; pass --output 0..{len(out) - 1}"
            )
        got = out[index]
    elif isinstance(out, torch.Tensor):
        raise UsageError(f"--output {output!r} was given, but the model's forward returns one tensor; leave it out")
    else:
        raise UsageError(
            f"the model's forward returned a {type(out).__name__}, not logits; wrap the model so that it returns "
            "a tensor, a tuple or a mapping with 'logits'"
        )
    if not isinstance(got, torch.Tensor):
        raise UsageError(f"the model's output {output if output is not None else 0!r} is a {type(got).__name__}, "
                         "not a tensor of logits; pass --output to pick the logits")  # fmt: skip
    return got


def first_nonfinite(outputs: torch.Tensor) -> int | None:
    """The first sample (row) of a batch of outputs holding NaN or inf, None when all are finite."""
    bad = ~torch.isfinite(outputs.detach())
    if not bool(bad.any()):
        return None
    return int(bad.flatten(1).any(1).nonzero()[0]) if outputs.dim() > 1 else 0


def check_finite(logits: torch.Tensor) -> None:
    """Refuse NaN or infinite logits in one line naming the first sample that has them."""
    i = first_nonfinite(logits)
    if i is not None:
        raise UsageError(
            f"the model's logits hold NaN or inf (sample {i} of a batch of {logits.shape[0]}); check the weights "
            "and the input's normalization (--normalize, --mean)"
        )


_MARK = "_zfnet_reads_logits"


def _hook(output: int | str | None):
    def hook(module: nn.Module, args, out):
        logits = pick(out, output)
        if not module.training:
            check_finite(logits)
        return logits

    return hook


def install(model: nn.Module, output: int | str | None = None) -> None:
    """From now on the model's forward returns its logits (for models zfnet opened: the CLI's)."""
    if getattr(model, _MARK, None) is None:
        setattr(model, _MARK, model.register_forward_hook(_hook(output)))


@contextmanager
def reading_logits(model: nn.Module, output: int | str | None = None) -> Iterator[None]:
    """Within the block the model's forward returns its logits; the hook goes on exit (nested: the outer one
    serves)."""
    if getattr(model, _MARK, None) is not None:
        yield
        return
    handle = model.register_forward_hook(_hook(output))
    setattr(model, _MARK, handle)
    try:
        yield
    finally:
        handle.remove()
        delattr(model, _MARK)


def check_model(model: Any) -> nn.Module:
    """The nn.Module to run (an `Opened`'s or `WithPreprocess`'s model too), refused in one line when it is not
    one or its weights hold no values (the meta device)."""
    net = getattr(model, "model", model)
    if not isinstance(net, nn.Module):
        raise UsageError(f"model is a {type(model).__name__}, not a torch nn.Module (or zfnet.Opened)")
    if any(t.is_meta for t in (*net.parameters(), *net.buffers())):
        raise UsageError(
            "the model's weights are on the meta device (shapes without values); load them first "
            "(model.to_empty(device='cpu') and load_state_dict)"
        )
    return net


def check_images(images: Any, net: nn.Module, optional: bool = False) -> Any:
    """Model input checked as the CLI checks its own: a float tensor N x C x H x W (N >= 1, finite, C the
    model's channels), moved to the model's device and type (said for a half-precision model); an image set
    passes as it is."""
    from .data import ImageSet

    if images is None and optional or isinstance(images, ImageSet):
        return images
    shape = "a batch N x C x H x W of float model input (zfnet.Opened.preprocess makes one from images)"
    if type(images).__module__ == "numpy":
        raise UsageError(f"images is a numpy array; pass torch.from_numpy(images): {shape}")
    if not isinstance(images, torch.Tensor):
        raise UsageError(f"images is a {type(images).__name__}; pass {shape}")
    if images.dim() == 3:
        raise UsageError(f"images has shape {tuple(images.shape)}: add a batch dimension with images[None]; {shape}")
    if images.dim() != 4:
        raise UsageError(f"images has shape {tuple(images.shape)}; pass {shape}")
    if images.shape[0] == 0:
        raise UsageError(f"images holds no image (a batch of 0); pass {shape}")
    if not images.is_floating_point():
        raise UsageError(f"images are {images.dtype}; pass {shape} (or images.float() for raw pixels)")
    first = next((m for m in net.modules() if isinstance(m, nn.Conv2d)), None)
    if first is not None and images.shape[1] != first.in_channels:
        raise UsageError(
            f"images have {images.shape[1]} channels; the model's first conv takes {first.in_channels}: pass {shape}"
        )
    if not bool(torch.isfinite(images).all()):
        raise UsageError("images hold NaN or inf; pass finite model input")
    dtype = model_dtype(net)
    if dtype in (torch.float16, torch.bfloat16) and images.dtype != dtype:
        note(f"the model is {str(dtype).replace('torch.', '')}: it runs on the input cast to that type")
    return images.to(model_device(net), dtype)


Fn = TypeVar("Fn", bound=Callable[..., Any])


def api(fn: Fn) -> Fn:
    """A public method's front (`zfnet.<method>(model, images, ...)`): model and images checked, the forward
    read as logits (`output=`) for the duration of the call."""

    @functools.wraps(fn)
    def call(model, images=None, *args, output: int | str | None = None, **kwargs):
        net = check_model(model)
        images = check_images(images, net, optional=True)
        with reading_logits(net, parse_output(output)):
            return fn(model, images, *args, **kwargs)

    return call  # type: ignore[return-value]


def _available_bytes(device: torch.device) -> int:
    """Memory a forward may use: the device's free memory, or the machine's available memory (Linux)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30


def check_input_size(model: nn.Module, channels: int, side: int, probe: int = 64) -> None:
    """Refuse an input side whose forward would not fit in memory, in one line naming the largest that fits:
    the bytes of every leaf module's output in one forward at `probe` px, scaled by the area (activations
    grow with it; convnets' do exactly, up to the border)."""
    if side <= probe:
        return
    total = [0]

    def hook(module, args, out) -> None:
        if isinstance(out, torch.Tensor):
            total[0] += out.numel() * out.element_size()

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad(), eval_mode(model):
            model(torch.zeros(1, channels, probe, probe, device=model_device(model), dtype=model_dtype(model)))
    except Exception:  # noqa: BLE001 - a model that does not run at the probe size: no estimate
        return
    finally:
        for h in handles:
            h.remove()
    need = total[0] * (side / probe) ** 2
    have = _available_bytes(model_device(model))
    if need > have:
        largest = int(probe * (have / max(total[0], 1)) ** 0.5)
        raise UsageError(
            f"--input-size {side}: one forward would need about {need / 2**30:.1f} GiB, {have / 2**30:.1f} GiB "
            f"are available; pass --input-size {largest} or less"
        )


def count_outputs(
    model: nn.Module, channels: int, side: int, what: str, output: int | str | None = None
) -> tuple[int | None, bool]:
    """How many logits the model gives (one forward of zeros at `side` px, in eval mode; None when they are not
    a batch of vectors) and whether its forward returns anything but them (then `install` must pick them); the
    forward's failure is one line (`what`: the model's name)."""
    try:
        with torch.no_grad(), eval_mode(model):
            out = model(torch.zeros(1, channels, side, side, device=model_device(model), dtype=model_dtype(model)))
    except (UsageError, KeyboardInterrupt):
        raise
    except Exception as e:  # noqa: BLE001 - the model's own refusal of this input (ViT: "Wrong image height")
        if blame(e) is not None:
            raise
        text = str(e).strip().splitlines()
        own = model_input_shape(model)[-1]
        fix = f"pass --input-size {own} (its own)" if own != side else "pass the --input-size it takes"
        raise UsageError(
            f"{what} does not run on {channels}x{side}x{side} input ({type(e).__name__}: {text[0] if text else ''}); "
            + fix
        ) from None
    logits = pick(out, output)  # not checked for NaN: zeros are no image (a model may divide by their spread)
    n = int(logits.shape[-1]) if logits.dim() == 2 else None
    return n, not (isinstance(out, torch.Tensor) and output is None)
