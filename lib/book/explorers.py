"""The explorer: sliders over precomputed frames that work with and without a kernel.

Every combination of parameter values is rendered once to a compressed PNG. The frames sit in nested
``ipywidgets.Stack`` containers, one level per parameter, whose ``selected_index`` is tied to that parameter's
``SelectionSlider`` with ``jslink``. The browser alone switches frames, so the sliders work in the static HTML
book (the widget state is embedded in the page), in JupyterLab, VS Code and Binder.
"""

import io
import itertools
import math
from collections.abc import Callable, Sequence

import ipywidgets as widgets
import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from PIL import Image

MAX_FRAMES = 40
MAX_EXPLORER_BYTES = 1_500_000
FRAME_DPI = 100
PALETTE_COLOURS = 128


def _value_label(value: object) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _check_params(params: dict[str, Sequence], labels: dict[str, Sequence[str]] | None) -> dict[str, list[str]]:
    """Validate the parameter grid and return the display labels of each parameter's values."""
    if not params:
        raise ValueError("explorer needs at least one parameter, e.g. explorer(render, omega=[1.0, 1.5])")
    labels = dict(labels or {})
    unknown = set(labels) - set(params)
    if unknown:
        raise ValueError(f"labels given for unknown parameters {sorted(unknown)}; parameters are {list(params)}")
    all_labels = {}
    for name, values in params.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
            raise TypeError(f"parameter {name!r} must be a list of values, got {type(values).__name__}")
        if len(values) == 0:
            raise ValueError(f"parameter {name!r} has an empty list of values")
        names = [str(label) for label in labels.get(name, [_value_label(v) for v in values])]
        if len(names) != len(values):
            raise ValueError(f"labels[{name!r}] has {len(names)} labels for {len(values)} values")
        if len(set(names)) != len(names):
            raise ValueError(f"parameter {name!r} has repeated labels {names}; give distinct labels=")
        all_labels[name] = names
    n_frames = math.prod(len(v) for v in params.values())
    if n_frames > MAX_FRAMES:
        sizes = " x ".join(f"{len(v)} {k}" for k, v in params.items())
        raise ValueError(f"explorer would render {n_frames} frames ({sizes}); at most {MAX_FRAMES} are allowed")
    return all_labels


def figure_to_png(fig: Figure, dpi: int = FRAME_DPI) -> bytes:
    """Render a figure to a palette PNG (a few tens of kB for a typical plot)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    image = Image.open(buffer).convert("RGB")
    palette = image.quantize(colors=PALETTE_COLOURS, method=Image.Quantize.MEDIANCUT)
    out = io.BytesIO()
    palette.save(out, format="png", optimize=True)
    return out.getvalue()


def _render_frame(render: Callable[..., Figure], values: dict[str, object]) -> bytes:
    try:
        fig = render(**values)
    except Exception as error:
        raise RuntimeError(f"render failed for {values}: {type(error).__name__}: {error}") from error
    if not isinstance(fig, Figure):
        plt.close("all")
        raise TypeError(f"render must return a matplotlib Figure, got {type(fig).__name__} for {values}")
    try:
        return figure_to_png(fig)
    finally:
        plt.close(fig)


def _nest(frames: list[widgets.Image], sizes: list[int]) -> tuple[widgets.Widget, list[list[widgets.Stack]]]:
    """Arrange frames (row-major over the parameters) into nested Stacks, one level per parameter.

    Returns the root and, for each level, its Stacks (to be linked to that parameter's slider).
    """
    if not sizes:
        return frames[0], []
    block = len(frames) // sizes[0]
    children, levels = [], [[] for _ in sizes[1:]]
    for i in range(sizes[0]):
        child, child_levels = _nest(frames[i * block : (i + 1) * block], sizes[1:])
        children.append(child)
        for level, stacks in zip(levels, child_levels, strict=True):
            level.extend(stacks)
    root = widgets.Stack(children=children, selected_index=0)
    return root, [[root], *levels]


def explorer(
    render: Callable[..., Figure], *, labels: dict[str, Sequence[str]] | None = None, **params: Sequence
) -> widgets.VBox:
    """Precompute ``render(**combination)`` for every combination of ``params`` and show one slider per parameter.

    Parameters
    ----------
    render : draws one matplotlib figure for one combination of parameter values and returns it.
    labels : optional display labels per parameter (one string per value); by default the values themselves.
    **params : each parameter's values, in slider order, e.g. ``sparsity=[0.0, 0.5, 0.9]``.

    Returns
    -------
    A widget: the sliders above the frame. The frames of one explorer must stay under 1.5 MB.
    """
    if not callable(render):
        raise TypeError(f"render must be callable, got {type(render).__name__}")
    all_labels = _check_params(params, labels)
    names = list(params)
    pngs = [
        _render_frame(render, dict(zip(names, combination, strict=True)))
        for combination in itertools.product(*params.values())
    ]
    total = sum(len(png) for png in pngs)
    if total > MAX_EXPLORER_BYTES:
        raise ValueError(
            f"explorer frames take {total / 1e6:.2f} MB, over the {MAX_EXPLORER_BYTES / 1e6:.1f} MB budget: "
            "use fewer values or simpler figures"
        )
    frames = [widgets.Image(value=png, format="png", layout=widgets.Layout(max_width="100%")) for png in pngs]
    root, levels = _nest(frames, [len(v) for v in params.values()])
    sliders = []
    for name, stacks in zip(names, levels, strict=True):
        slider = widgets.SelectionSlider(
            options=all_labels[name],
            description=name,
            continuous_update=True,
            style={"description_width": "initial"},
            layout=widgets.Layout(width="min(100%, 32em)"),
        )
        for stack in stacks:
            widgets.jslink((slider, "index"), (stack, "selected_index"))
        sliders.append(slider)
    return widgets.VBox([*sliders, root], layout=widgets.Layout(width="100%"))
