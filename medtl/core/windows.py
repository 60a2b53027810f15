"""The DICOM window setting (`data.dicom_window`): its presets and grammar. A config value, so it is checked
when the config is made; `medtl.data.dicom` applies the windows to pixels."""

from __future__ import annotations

# CT windows (centre, width) in Hounsfield units, as radiology viewers preset them
WINDOWS = {"lung": (-600.0, 1500.0), "mediastinum": (50.0, 350.0), "bone": (400.0, 1800.0), "brain": (40.0, 80.0),
           "abdomen": (40.0, 400.0)}
WINDOW_HELP = ("auto (the file's VOI LUT / window, else its full range), a preset (" + ", ".join(WINDOWS) +
               "), 'CENTRE,WIDTH' in the modality's units (HU for CT), or stack:W1,W2,W3 for three windows as "
               "the three channels")


def parse_window(spec: str) -> list[tuple[float, float]] | None:
    """None for 'auto', else the (centre, width) windows that `spec` names; ValueError naming the choices."""
    if spec == "auto":
        return None
    names = spec[len("stack:"):].split(",") if spec.startswith("stack:") else [spec]
    if spec.startswith("stack:") and len(names) != 3:
        raise ValueError(f"dicom window {spec!r}: stack takes three windows, e.g. stack:lung,mediastinum,bone")
    if not spec.startswith("stack:") and "," in spec:
        names = [spec.replace(",", "/")]
    out = []
    for name in names:
        if name in WINDOWS:
            out.append(WINDOWS[name])
            continue
        try:
            centre, width = (float(v) for v in name.split("/"))
        except ValueError:
            raise ValueError(f"dicom window {spec!r} not understood; valid: {WINDOW_HELP}") from None
        if width < 1:
            raise ValueError(f"dicom window {spec!r}: width must be at least 1")
        out.append((centre, width))
    return out
