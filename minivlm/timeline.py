"""The map of the field: the papers this course rebuilds, as a data table, and its figure
(chapter 00). Dates are the month of the first arXiv version."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Paper:
    name: str
    year: int
    month: int
    family: str
    chapter: int

    @property
    def date(self) -> float:
        return self.year + (self.month - 1) / 12


FAMILIES = {
    "single-stream fusion": "#8c564b",
    "dual encoder": "#1f77b4",
    "fusion encoder": "#ff7f0e",
    "unified": "#2ca02c",
    "LLM bridge": "#d62728",
    "high resolution / grounding": "#9467bd",
    "any modality": "#e377c2",
    "training-free / dense": "#7f7f7f",
}

PAPERS: tuple[Paper, ...] = (
    Paper("ViLBERT", 2019, 8, "single-stream fusion", 3),
    Paper("VisualBERT", 2019, 8, "single-stream fusion", 3),
    Paper("VL-BERT", 2019, 8, "single-stream fusion", 3),
    Paper("UniLM", 2019, 5, "unified", 1),
    Paper("VirTex", 2020, 6, "unified", 7),
    Paper("CLIP", 2021, 2, "dual encoder", 2),
    Paper("ViLT", 2021, 2, "single-stream fusion", 3),
    Paper("Frozen", 2021, 6, "LLM bridge", 10),
    Paper("ALBEF", 2021, 7, "fusion encoder", 4),
    Paper("SimVLM", 2021, 8, "unified", 7),
    Paper("VLMo", 2021, 11, "fusion encoder", 5),
    Paper("LiT", 2021, 11, "dual encoder", 2),
    Paper("ClipCap", 2021, 11, "LLM bridge", 10),
    Paper("CLIPSeg", 2021, 12, "training-free / dense", 22),
    Paper("BLIP", 2022, 1, "unified", 6),
    Paper("Flamingo", 2022, 4, "LLM bridge", 11),
    Paper("CoCa", 2022, 5, "unified", 7),
    Paper("OWL-ViT", 2022, 5, "training-free / dense", 22),
    Paper("MaGiC", 2022, 5, "training-free / dense", 22),
    Paper("BEiT-3", 2022, 8, "unified", 8),
    Paper("ASIF", 2022, 10, "training-free / dense", 22),
    Paper("MAPL", 2022, 10, "LLM bridge", 10),
    Paper("BLIP-2", 2023, 1, "LLM bridge", 12),
    Paper("Kosmos-1", 2023, 2, "LLM bridge", 18),
    Paper("LLaVA", 2023, 4, "LLM bridge", 14),
    Paper("MiniGPT-4", 2023, 4, "LLM bridge", 14),
    Paper("InstructBLIP", 2023, 5, "LLM bridge", 13),
    Paper("ImageBind", 2023, 5, "any modality", 19),
    Paper("Kosmos-2", 2023, 6, "high resolution / grounding", 16),
    Paper("Meta-Transformer", 2023, 7, "any modality", 20),
    Paper("Qwen-VL", 2023, 8, "high resolution / grounding", 16),
    Paper("LLaVA-1.5", 2023, 10, "LLM bridge", 14),
    Paper("Fuyu", 2023, 10, "LLM bridge", 18),
    Paper("MiniGPT-5", 2023, 10, "any modality", 21),
    Paper("CogVLM", 2023, 11, "LLM bridge", 17),
    Paper("CogAgent", 2023, 12, "high resolution / grounding", 15),
    Paper("InternLM-XComposer2", 2024, 1, "LLM bridge", 17),
    Paper("LLaVA-NeXT", 2024, 1, "high resolution / grounding", 15),
    Paper("Mini-Gemini", 2024, 3, "high resolution / grounding", 15),
    Paper("InternLM-XComposer2-4KHD", 2024, 4, "high resolution / grounding", 15),
)


def plot_timeline(papers=PAPERS, ax=None):
    """Each paper on its own row, in date order, coloured by family; returns the Figure."""
    import matplotlib.pyplot as plt

    papers = sorted(papers, key=lambda p: (p.date, p.name))
    if ax is None:
        _, ax = plt.subplots(figsize=(11, 0.2 * len(papers) + 1.0))
    for row, p in enumerate(papers):
        color = FAMILIES[p.family]
        ax.scatter(p.date, row, s=36, color=color, zorder=3)
        ax.annotate(f"{p.name}  (ch. {p.chapter:02d})", (p.date + 0.06, row), va="center", fontsize=8)
    for family, color in FAMILIES.items():
        ax.scatter([], [], color=color, label=family)
    ax.legend(loc="lower left", fontsize=8, frameon=False)
    ax.invert_yaxis()
    ax.set_yticks([])
    years = range(min(p.year for p in papers), max(p.year for p in papers) + 1)
    ax.set_xticks(list(years))
    ax.set_xlim(min(years) - 0.1, max(years) + 1.0)
    ax.grid(axis="x", alpha=0.3)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    ax.set_title("The vision-language models this course rebuilds, by first arXiv version")
    ax.figure.tight_layout()
    return ax.figure
