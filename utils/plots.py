"""Figures written to files with matplotlib's non-interactive Agg backend."""
import matplotlib

matplotlib.use("Agg")  # no display on servers; must precede pyplot's import
import matplotlib.pyplot as plt  # noqa: E402


def save_confusion_matrix(confusion, class_names, path, title=""):
    """Save a confusion matrix as a PNG heat map with counts in the cells.

    Args:
        confusion: int ``(K, K)`` tensor or array; rows are true labels, columns predictions.
        class_names: ``K`` labels for the axes.
        path: output ``.png`` path.
        title: figure title.
    """
    matrix = confusion.tolist() if hasattr(confusion, "tolist") else confusion
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(max(4, 0.5 * k + 2), max(4, 0.5 * k + 1.5)))
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046)
    ax.set(xticks=range(k), yticks=range(k), xlabel="prediction", ylabel="label", title=title)
    ax.set_xticklabels(class_names, rotation=45, ha="right")
    ax.set_yticklabels(class_names)
    peak = max(max(row) for row in matrix) or 1
    if k <= 20:
        for i, row in enumerate(matrix):
            for j, value in enumerate(row):
                ax.text(j, i, str(value), ha="center", va="center", fontsize=7,
                        color="white" if value > peak / 2 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
