"""What the clinical job is asked to do: its options, its stages and the error for input it cannot complete.

One schema: each :class:`CompleteOptions` field that the command line can set names its flag in the field's
metadata; ``sparseskull complete`` builds its flags from it, and :func:`options_to_args` turns options back
into them for a child process (Slicer), so an option cannot be added to one side and dropped on the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

DEFAULT_THRESHOLD_HU = 300.0
"""Between soft tissue (< 100 HU) and the diploe of the vault (about 700 HU and up)."""

STAGES = ("read", "skull", "model grid", "network", "super-resolution", "CT grid", "clean", "mesh", "write")


INPUT_KINDS = ("auto", "ct", "mask")


MAX_PASSES = 8  # the network passes one run may vote over (implant/network.py shifts and mirrors each)


def check_passes(passes: int) -> int:
    """``passes`` if it is a number of network passes one run may vote over, else a ValueError saying the range."""
    if not 1 <= passes <= MAX_PASSES:
        raise ValueError(f"passes must be between 1 and {MAX_PASSES}; got {passes}")
    return passes


DEFAULT_MIN_DEPTH_MM = 10.0


class InputError(ValueError):
    """The input cannot be completed; the message says why and what to do."""


def threshold_value(value: str) -> float | str:
    """A bone threshold as given on the command line: HU, or ``auto``."""
    return value if value == "auto" else float(value)


def _opt(default, flag: str | None = None, help: str = "", type=None, choices=None, sets: bool | None = None):
    """A field with its command-line flag. ``sets``: a switch that sets the field to this value (``--span``
    sets ``span_opening`` to True); otherwise the flag takes a value of ``type`` (default: the default's type)."""
    meta = {"flag": flag, "help": help, "type": type, "choices": choices, "sets": sets} if flag else {}
    return field(default=default, metadata=meta)


@dataclass
class CompleteOptions:
    threshold_hu: float | str = _opt(DEFAULT_THRESHOLD_HU, "--threshold-hu", "bone threshold in HU, or auto (Otsu)", type=threshold_value)
    input_kind: str = _opt("auto", "--input-kind", "auto: a volume of only 0 and 1 is a mask", choices=INPUT_KINDS)
    drop_mandible: bool = _opt(False, "--drop-mandible", "also drop a mandible that touches the skull (at the jaw joints or the teeth); "
                               "one that does not is always dropped", sets=True)
    model: str | None = _opt(None, "--model", "a shipped model's name (`sparseskull models`) or a .safetensors path (default: the default model)", type=str)
    super_resolution: str = _opt("auto", "--super-resolution", "a super-resolution model (name or path) run on the completed skull "
                                 "before the implant is taken; auto: the one --model is paired with (`sparseskull models`), if any; "
                                 "none: off", type=str)
    passes: int = _opt(MAX_PASSES, "--passes", "network passes, each on the skull shifted by a few voxels and every other one mirrored; "
                       "a generated voxel is kept when a quarter of them generate it (1 to 8)", type=int)
    device: str = _opt("auto", "--device", "auto, cpu, cuda, cuda:1, mps")
    backend: str = _opt("torch", "--backend", "sparse engine (the command line offers sparseskull.sparse.backends.BACKENDS)")
    min_implant_mm3: float = _opt(100.0, "--min-implant-mm3", "drop implant pieces smaller than this")
    clearance_mm: float = _opt(0.0, "--clearance-mm", "gap between implant and bone, for fit")
    keep_fraction: float = 0.2  # pieces smaller than this share of the largest piece are dropped (one defect, one plate); no flag
    min_depth_mm: float = _opt(DEFAULT_MIN_DEPTH_MM, "--min-depth-mm", "drop implant parts that never get this far from the bone, "
                               "as layers on intact bone (0: keep all)")
    min_thickness_mm: float = _opt(0.0, "--min-thickness-mm", "grow the implant inwards (its outer surface stays) where it is thinner "
                                   "than this (0: off)")
    drop_behind_bone: bool = _opt(True, "--keep-behind-bone", "keep implant parts that lie inside the cranial cavity behind intact bone "
                                  "(dropped by default)", sets=False)
    span_opening: bool = _opt(False, "--span", "complete the plate over the whole opening from the bone around it, and drop what lies off "
                              "that plate, instead of keeping the network's own implant (better on SkullFix's single round openings, "
                              "worse on larger and irregular ones: docs/models.md)", sets=True)
    smoothing_iterations: int = _opt(20, "--smoothing", "windowed-sinc smoothing iterations of the STL")
    decimate: float = _opt(0.5, "--decimate", "share of triangles removed")
    stl_space: str = _opt("LPS", "--stl-space", "STL coordinates (LPS: Slicer's file convention)", choices=("LPS", "RAS"))
    skull_stl: bool = _opt(False, "--skull-stl", "also write the completed skull as STL", sets=True)
    preview: bool = _opt(True, "--no-preview", "skip the preview PNG", sets=False)
    max_extent: float = _opt(1.5, "--max-extent", "refuse a skull spanning more than this many times the model's field of view "
                             "(an image spanning twice that, from its header, before reading it)")
    max_voxels: int = _opt(1_000_000_000, "--max-voxels", "refuse, from its header and before reading it, an image with more voxels "
                           "than this or one whose run needs more memory than is available (0: neither check)", type=int)
    threads: int | None = _opt(None, "--threads", "CPU threads for torch", type=int)

    def __post_init__(self) -> None:
        if self.input_kind not in INPUT_KINDS:
            raise ValueError(f"input kind must be one of {', '.join(INPUT_KINDS)}; got {self.input_kind!r}")
        if self.stl_space.upper() not in ("LPS", "RAS"):
            raise ValueError(f"the STL space must be LPS or RAS; got {self.stl_space!r}")
        if isinstance(self.threshold_hu, str) and self.threshold_hu != "auto":
            self.threshold_hu = float(self.threshold_hu)
        if not 0 <= self.keep_fraction <= 1:
            raise ValueError(f"keep_fraction is a share of the largest piece, in [0, 1]; got {self.keep_fraction}")
        if self.min_implant_mm3 < 0 or self.clearance_mm < 0 or self.min_depth_mm < 0 or self.min_thickness_mm < 0:
            raise ValueError("the minimum implant volume, depth and thickness and the clearance cannot be negative")
        if self.max_extent <= 0 or self.max_voxels < 0:
            raise ValueError("the maximum extent must be positive and the maximum voxel count cannot be negative")
        check_passes(self.passes)
        if not 0 <= self.decimate < 1:
            raise ValueError(f"decimate is the share of triangles removed, in [0, 1); got {self.decimate}")


def option_flags() -> list:
    """The dataclass fields of :class:`CompleteOptions` that have a command-line flag."""
    return [f for f in fields(CompleteOptions) if f.metadata.get("flag")]


def options_to_args(options: CompleteOptions) -> list[str]:
    """The ``sparseskull complete`` arguments that reproduce ``options`` (only what differs from the defaults)."""
    default = CompleteOptions()
    args: list[str] = []
    for f in fields(CompleteOptions):
        value = getattr(options, f.name)
        if value == getattr(default, f.name):
            continue
        flag = f.metadata.get("flag")
        if not flag:
            raise ValueError(f"{f.name} has no command-line flag; run complete_skull() in this process to change it")
        sets = f.metadata["sets"]
        if sets is not None:
            if value != sets:
                raise ValueError(f"{f.name}={value!r}: {flag} only sets it to {sets}")
            args.append(flag)
        elif value is not None:
            args += [flag, str(value)]
    return args


def options_from_args(args, **fixed) -> CompleteOptions:
    """The options a parsed command line asks for (argparse dests are the field names); ``fixed``: fields set
    by the caller instead."""
    given = {f.name: getattr(args, f.name) for f in option_flags() if hasattr(args, f.name)}
    return CompleteOptions(**{**given, **fixed})
