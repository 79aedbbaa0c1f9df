"""``slicevos-infer --demo``: a phantom case + the demo models, no data or download needed.

The demo models are ``checkpoints/demo_reference.pt`` and ``checkpoints/demo_propagation.pt``,
trained by the project's own tools on phantoms (``configs/reference/demo.yaml``,
``configs/propagation/demo.yaml``; see ``checkpoints/README.md``). When they are absent (e.g.
a copy of the package without the repository's checkpoints/ folder) the demo trains small ones
on the spot on phantoms (about two minutes on a laptop CPU) and says so.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from slicevos.phantom import PhantomConfig, write_phantom_dataset

log = logging.getLogger("slicevos.infer")
REPO = Path(__file__).resolve().parents[2]
SHIPPED = {"reference": REPO / "checkpoints" / "demo_reference.pt",
           "propagation": REPO / "checkpoints" / "demo_propagation.pt"}
DEMO_SHAPE = (48, 128, 128)
ON_THE_SPOT_ITERATIONS = 300


def prepare_demo(args: argparse.Namespace) -> argparse.Namespace:
    """Fill ``args`` for the demo: phantom input, output in the demo folder (``OUTPUT``,
    else ``INPUT``, else ./slicevos_demo), demo checkpoints, preview and report on."""
    folder = Path(args.output or args.input or "slicevos_demo")
    phantom_dir = folder / "phantom"
    write_phantom_dataset(phantom_dir, n_labeled=1, config=PhantomConfig(shape=DEMO_SHAPE),
                          seed=2026, progress=False)
    image = next((phantom_dir / "imagesTr").glob("*_0000.nii.gz"))
    checkpoints = dict(SHIPPED)
    if args.propagator in (None, "flow"):
        checkpoints.pop("propagation")
    if not all(p.exists() for p in checkpoints.values()):
        log.info("demo: shipped demo checkpoints not found in %s; training small ones on "
                 "phantoms now (%d iterations each)", REPO / "checkpoints", ON_THE_SPOT_ITERATIONS)
        checkpoints = train_demo_models(folder / "models", "propagation" in checkpoints)
    else:
        log.info("demo: using the shipped demo models %s",
                 ", ".join(map(str, checkpoints.values())))
    args.input, args.output = str(image), str(folder / "segmentation.nii.gz")
    args.reference = str(checkpoints["reference"])
    # the flow engine (the default) needs no propagation model; --propagator stcn|fused uses
    # the demo one
    needs_model = args.propagator not in (None, "flow")
    args.propagation = str(checkpoints["propagation"]) if needs_model else None
    args.keys = args.key_slices = args.localizer = None
    args.preview = args.report = True
    args.overwrite = True
    return args


def train_demo_models(folder: Path, propagation: bool = True) -> dict[str, Path]:
    """Train the demo reference pair (and the propagation net, when ``propagation``) on fresh
    phantoms (resumable)."""
    import dataclasses

    from slicevos.config import load_config
    from slicevos.data.cache_build import PrepareConfig, prepare_cache
    from slicevos.training.propagation import PropagationConfig, PropagationTrainer
    from slicevos.training.reference import ReferenceConfig, ReferenceTrainer

    data, cache = folder / "phantoms", folder / "cache"
    write_phantom_dataset(data, n_labeled=4, n_unlabeled=2, config=PhantomConfig(shape=DEMO_SHAPE),
                          seed=7, progress=False)
    prepare_cache(data, cache, PrepareConfig(workers=1), progress=False)
    out = {}
    roles = [("reference", ReferenceConfig, ReferenceTrainer)]
    if propagation:
        roles.append(("propagation", PropagationConfig, PropagationTrainer))
    for role, config_cls, trainer_cls in roles:
        config = load_config(REPO / "configs" / role / "demo.yaml", config_cls,
                             assignments=[f"data.cache_dir={cache}",
                                          f"train.out_dir={folder / role}",
                                          f"train.iterations={ON_THE_SPOT_ITERATIONS}",
                                          "train.optim.milestones=[250,280]"])
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, augment=None))
        trainer_cls(config, resume=(folder / role / "last.pt").exists()).fit()
        out[role] = folder / role / "last.pt"
    return out


def demo_accuracy(args: argparse.Namespace) -> str:
    """DSC per organ of the demo's segmentation against the phantom's own ground truth."""
    from slicevos.io.labels import FLARE22
    from slicevos.io.nifti import load_labels
    from slicevos.metrics.overlap import dice_per_class

    image = Path(args.input)
    truth_path = image.parent.parent / "labelsTr" / image.name.replace("_0000.nii", ".nii")
    truth, _ = load_labels(truth_path)
    pred, _ = load_labels(args.output)
    present = [c for c in FLARE22.ids if (truth == c).any()]
    scores = dice_per_class(truth, pred, present)
    mean = sum(scores.values()) / max(len(scores), 1)
    return (f"demo DSC against the phantom's ground truth: mean {mean:.3f} ("
            + ", ".join(f"{FLARE22.by_id(c).name} {v:.2f}" for c, v in scores.items()) + ")")
