"""A model file together with the dataset it is used with: the loading every command (and the
service's worker) shares. Dataset names are registry names or ``folder:PATH`` / ``npz:PATH``."""

from __future__ import annotations

import os
from pathlib import Path


def load_data(name: str, split: str, data_dir: Path | None, **kw):
    """``name`` is a registered dataset, or ``folder:PATH`` / ``npz:PATH`` for the user's own files."""
    from ..data import load_dataset

    if ":" in name:
        kind, path = name.split(":", 1)
        return load_dataset(kind, split=split, root=path, **kw)
    return load_dataset(name, split=split, root=data_dir or os.environ.get("TROJANSCOPE_DATA"), **kw)


def parse_mean_std(text: str | None) -> tuple[list[float], list[float]] | None:
    """``M1,M2,M3/S1,S2,S3`` -> (mean, std)."""
    if text is None:
        return None
    try:
        m, s = text.split("/")
        return [float(v) for v in m.split(",")], [float(v) for v in s.split(",")]
    except ValueError:
        from ..errors import InputError

        raise InputError(f"--normalize must look like MEAN/STD, e.g. 0.1307/0.3081 or "
                         f"0.49,0.48,0.45/0.25,0.24,0.26; got {text!r}") from None


def load_user_model(path: Path, data, *, normalize: str | None = None, module: str | None = None,
                    arch: str | None = None, device=None):
    """Load a model file for a command working on ``data``: state dicts get their class count and
    input shape from the data, as does a TorchScript file without a sidecar."""
    from .io import load_model

    ns = parse_mean_std(normalize)
    net = load_model(path, normalize=ns, module=module, arch=arch,
                     num_classes=data.num_classes if (module or arch) else None,
                     in_shape=data.in_shape if (module or arch) else None, device=device or "cpu")
    if getattr(net, "in_shape", None) is None:
        net = load_model(path, normalize=ns, in_shape=data.in_shape, device=device or "cpu")
    return net


def check_class_count(model, data, path: Path, name: str) -> None:
    """A model must have exactly the data's classes: with more outputs a scan could name a class
    the data cannot show ("target class 17" of a 1000-output model on 10-class data)."""
    from ..errors import InputError

    k = getattr(model, "num_classes", None)
    if k is not None and k != data.num_classes:
        raise InputError(
            f"{Path(path).name} has {k} outputs but {name} has {data.num_classes} classes; results "
            f"would name classes the data cannot show. Use data labelled with the model's {k} classes "
            "(data label i = model class i); an .npz declares them with a `num_classes` entry"
        )


def model_and_data(path: Path, data: str, data_dir: Path | None, splits: tuple[str, ...], *,
                   normalize: str | None = None, module: str | None = None, arch: str | None = None,
                   device=None):
    """Load a model file and the dataset splits it is used with, checking they fit each other.

    The embedded digits come at any size, so they are resized to the model's input; any other
    dataset of the wrong shape is a clear error. Returns (model, [ImageData per split]).
    """
    from ..errors import InputError

    sets = [load_data(data, s, data_dir) for s in splits]
    model = load_user_model(path, sets[0], normalize=normalize, module=module, arch=arch, device=device)
    check_class_count(model, sets[0], path, data)
    want = tuple(model.in_shape) if getattr(model, "in_shape", None) else sets[0].in_shape
    if want != sets[0].in_shape:
        if data == "digits" and want[0] == 1 and want[1] == want[2]:
            sets = [load_data(data, s, data_dir, size=want[1]) for s in splits]
        else:
            raise InputError(f"{Path(path).name} takes {want} images but {data} has {sets[0].in_shape}")
    return model, sets
