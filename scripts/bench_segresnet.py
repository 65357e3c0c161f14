"""SegResNet through the runtime: its own geometry (card) against the old DeepMedic-shaped wrapper.

Both graphs come from the same network (random weights, or ``--checkpoint``),
are exported the same way (torch's legacy ONNX exporter) and run through the
same :class:`ictus.models.runtime.Ensemble` on the same synthetic head, in
the same process, alternating, after one warm-up run each:

- **unwrapped** (what ``ictus.models.monai_export`` writes now): the network itself;
  the card says context ``2m``, tiles aligned to ``m`` (``m = 2^(levels - 1)``),
  sizes multiple of ``m``, cost per input voxel, tiles of 4/6/8/12 ``m``;
- **wrapped** (the export before 2026-12): the network inside a crop-to-multiple
  wrapper that fits DeepMedic's contract (40-voxel context, 15-voxel grid, any
  input > 80 voxels, tiles of 30..90 chosen by DeepMedic's cost model, which the
  runtime then applied to every model).

Reported: the median inference time (onnxruntime, the runtime's ``inference_s``)
per output voxel computed, in microseconds, for each, and their ratio. Run::

    python scripts/bench_segresnet.py --runs 3 --threads 2
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

log = logging.getLogger("bench_segresnet")


def legacy_wrapper(network: Any, multiple_vox: int, context_vox: int = 40) -> Any:
    """The wrapper ``monai_export`` used until 2026-12: crop the window to a multiple of
    ``multiple_vox`` (centred), run, keep the centre ``context_vox`` in from each side."""
    import torch

    class CroppedSegmenter(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.network = network

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            inner = [slice(None), slice(None)]
            outer = [slice(None), slice(None)]
            for axis in (2, 3, 4):
                n = x.shape[axis]
                m = (n // multiple_vox) * multiple_vox
                a = (n - m) // 2
                inner.append(slice(a, a + m))
                outer.append(slice(context_vox - a, n - context_vox - a))
            return self.network(x[tuple(inner)])[tuple(outer)]

    return CroppedSegmenter().eval()


def export(module: Any, example_side: int, path: Path) -> Path:
    """Legacy-exporter ONNX with dynamic batch and spatial axes (as ``monai_export`` does)."""
    import torch

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (torch.zeros((1, 1) + (example_side,) * 3),), buffer, dynamo=False, opset_version=17,
            do_constant_folding=True, input_names=["image"], output_names=["logits"],
            dynamic_axes={"image": {0: "batch", 2: "d", 3: "h", 4: "w"}, "logits": {0: "batch", 2: "od", 3: "oh", 4: "ow"}},
        )
    path.write_bytes(buffer.getvalue())
    return path


def cards(config: Any, network: Any, onnx_unwrapped: Path, onnx_wrapped: Path) -> tuple[Any, Any]:
    """(unwrapped card, wrapped card) as :class:`ictus.models.registry.ModelCard`."""
    from ictus.models.hashing import file_sha256
    from ictus.models.monai_export import build_card, gmac_per_input_voxel
    from ictus.models.registry import card_from_dict, get_card

    def card_for(path: Path) -> dict:
        return build_card(config, model_id="bench-segresnet", version="v1", member_file=path.name,
                          size_bytes=path.stat().st_size, sha256=file_sha256(path), metrics={}, training={},
                          gmac_per_voxel=gmac_per_input_voxel(network, config.size_multiple_vox))

    new = card_for(onnx_unwrapped)
    old = card_for(onnx_wrapped)
    old["patch"].update(input_size_vox=config.patch_vox + 80, output_size_vox=config.patch_vox,
                        valid_input_offset_vox=80, valid_input_step_vox=1, context_vox=40, tile_multiple_vox=15)
    # the old runtime chose tiles of 30..90 with DeepMedic's cost model, whatever the model
    blast = get_card("blast-ct").raw["runtime"]
    old["runtime"] = {"tile_candidates_vox": blast["tile_candidates_vox"], "cost_model": blast["cost_model"]}
    return (card_from_dict(new, card_path=onnx_unwrapped.with_name("card.json")),
            card_from_dict(old, card_path=onnx_wrapped.with_name("card.json")))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="timed runs per path (after one warm-up)")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    parser.add_argument("--init-filters", type=int, default=16)
    parser.add_argument("--blocks-down", default="1,2,2,4")
    parser.add_argument("--checkpoint", help="a checkpoint from `ictus train` instead of random weights")
    parser.add_argument("--shape", default="30,100,90", help="synthetic head z,y,x voxels")
    parser.add_argument("--spacing", default="5.0,2.0,1.8", help="synthetic head z,y,x spacing (mm)")
    parser.add_argument("--skip", default="intracranial", help="the runtime's tile skipping rule")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import numpy as np
    import torch

    from ictus.imaging.volume import volume_from_array
    from ictus.models.runtime import Ensemble, synthetic_head_hu
    from ictus.models.train import TrainConfig, build_network, load_checkpoint

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    if args.checkpoint:
        network, config, _ = load_checkpoint(args.checkpoint)
    else:
        blocks = tuple(int(b) for b in args.blocks_down.split(","))
        config = TrainConfig(data_dir="", out_dir="", init_filters=args.init_filters, blocks_down=blocks,
                             blocks_up=(1,) * (len(blocks) - 1))
        network = build_network(config)
    network = network.eval()
    m = config.size_multiple_vox
    shape = tuple(int(v) for v in args.shape.split(","))
    spacing_zyx = tuple(float(v) for v in args.spacing.split(","))
    hu = synthetic_head_hu(shape, spacing_zyx)  # type: ignore[arg-type]
    volume = volume_from_array(hu, spacing_mm=spacing_zyx[::-1])

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "new").mkdir()
        (d / "old").mkdir()
        new_onnx = export(network, 4 * m, d / "new" / "model_1.onnx")
        old_onnx = export(legacy_wrapper(network, m), 80 + 2 * m + 3, d / "old" / "model_1.onnx")
        new_card, old_card = cards(config, network, new_onnx, old_onnx)
        paths = {
            "unwrapped": Ensemble.from_card(new_card, [new_onnx], threads=args.threads),
            "wrapped": Ensemble.from_card(old_card, [old_onnx], threads=args.threads),
        }
        per_voxel: dict[str, list[float]] = {k: [] for k in paths}
        info: dict[str, dict] = {}
        labels: dict[str, np.ndarray] = {}
        for run in range(args.runs + 1):  # run 0 warms up (session creation, first allocation)
            for name, ens in paths.items():
                seg = ens.segment(volume, fast=True, skip=args.skip)
                if run == 0:
                    labels[name] = seg.labels
                    continue
                per_voxel[name].append(seg.info["inference_s"] / seg.info["output_voxels_per_member"] * 1e6)
                info[name] = {k: seg.info[k] for k in ("tile_vox", "tiles_computed", "output_voxels_per_member",
                                                       "estimated_gmac_per_member")}
    med = {k: statistics.median(v) for k, v in per_voxel.items()}
    report = {
        "input": {"shape_zyx": shape, "spacing_zyx_mm": spacing_zyx, "model_grid_mm": list(config.spacing_mm),
                  "skip": args.skip},
        "network": {"init_filters": config.init_filters, "blocks_down": list(config.blocks_down),
                    "size_multiple_vox": m, "weights": args.checkpoint or "random (seed 0)"},
        "threads": args.threads, "runs": args.runs, "load_avg": os.getloadavg(),
        "us_per_output_voxel": {k: [round(x, 3) for x in v] for k, v in per_voxel.items()},
        "median_us_per_output_voxel": {k: round(v, 3) for k, v in med.items()},
        "wrapped_over_unwrapped": round(med["wrapped"] / med["unwrapped"], 2),
        "plans": info,
        "labels_equal_fraction": float(np.mean(labels["wrapped"] == labels["unwrapped"])),
    }
    print(json.dumps(report, indent=2))
    print(f"unwrapped {med['unwrapped']:.3f} us/output voxel, wrapped {med['wrapped']:.3f} us/output voxel, "
          f"ratio {med['wrapped'] / med['unwrapped']:.2f}x", file=sys.stderr)
    return 0


if __name__ == "__main__":
    t0 = time.perf_counter()
    code = main()
    log.info("done in %.1f s", time.perf_counter() - t0)
    raise SystemExit(code)
