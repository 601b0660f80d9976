"""The quality-diversity plot of a sweep: every point with its 95% CIs, and each family's Pareto front."""

from __future__ import annotations

from pathlib import Path

FAMILIES = {
    "cfg": ("CFG on the base model", "tab:red", "s"),
    "merge": ("LERP of the finetunes", "tab:blue", "o"),
}


def cost_label(points: list[dict]) -> str:
    """The inference cost of a family, from its points: '2 passes / token, 1 at CFG 1' (scale 1 is no guidance,
    so it costs one pass like any unguided model)."""
    passes = [p["forward_passes_per_token"] for p in points]
    usual = max(set(passes), key=passes.count)
    exceptions = [f"{n} at {p['label']}" for n, p in zip(passes, points) if n != usual]
    return ", ".join([f"{usual} pass{'' if usual == 1 else 'es'} / token", *exceptions])


def plot_fronts(result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display on the machines that run sweeps
    import matplotlib.pyplot as plt

    quality, diversity = result["quality_axis"], result["diversity_axis"]
    figure, axes = plt.subplots(figsize=(7, 5.5))
    for family, (name, color, marker) in FAMILIES.items():
        points = [p for p in result["points"] if p["family"] == family]
        if not points:
            continue
        xs = [p["metrics"][quality]["mean"] for p in points]
        ys = [p["metrics"][diversity]["mean"] for p in points]
        xerr = [
            [x - p["metrics"][quality]["low"] for x, p in zip(xs, points)],
            [p["metrics"][quality]["high"] - x for x, p in zip(xs, points)],
        ]
        yerr = [
            [y - p["metrics"][diversity]["low"] for y, p in zip(ys, points)],
            [p["metrics"][diversity]["high"] - y for y, p in zip(ys, points)],
        ]
        axes.errorbar(
            xs,
            ys,
            xerr=xerr,
            yerr=yerr,
            fmt=marker,
            color=color,
            alpha=0.85,
            capsize=3,
            label=f"{name} ({cost_label(points)}), HV {result['fronts'][family]['hypervolume']:.3f}",
        )
        front = sorted((x, y) for x, y, p in zip(xs, ys, points) if p["pareto_in_family"])
        axes.plot([x for x, _ in front], [y for _, y in front], "-", color=color, linewidth=1.5)
        for index, (x, y, p) in enumerate(zip(xs, ys, points)):
            # Alternate the label side so that labels of neighbouring points do not overprint each other.
            offset = (6, 4) if index % 2 == 0 else (6, -11)
            axes.annotate(p["label"], (x, y), textcoords="offset points", xytext=offset, fontsize=8, color=color)
    axes.set_xlabel(f"quality: {quality.replace('_', ' ')} (higher is better)")
    axes.set_ylabel(f"diversity: {diversity.replace('_', ' ')} (higher is better)")
    axes.set_title(f"Quality-diversity fronts ({result['num_prompts']} prompts, 95% CIs; lines: Pareto fronts)")
    axes.grid(alpha=0.3)
    axes.legend(loc="best", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
