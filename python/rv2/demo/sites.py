"""The phantom world's sites: acquisition style and population of each.

A site is a hospital with its own scanners (contrast, exposure, gamma, blur,
noise) and its own patients (sex ratio, age distribution, race/ethnicity mix,
disease prevalence). "mimic" is the in-distribution site written in the
MIMIC-CXR layout; the others are out-of-distribution test sites written in
another dataset's official layout.
"""
from __future__ import annotations

import dataclasses

GROUPS: tuple[str, ...] = ("Asian", "Black", "Hispanic", "White")

# Prevalence of each finding the world renders (before site scaling).
FINDINGS: tuple[str, ...] = ("Cardiomegaly", "Pleural Effusion", "Pneumothorax", "Consolidation",
                             "Edema", "Atelectasis", "Support Devices")


@dataclasses.dataclass(frozen=True)
class Site:
    name: str
    layout: str                    # "mimic" or "chexpert"
    # acquisition style
    contrast: float = 1.0          # gain around mid-grey
    exposure: float = 0.0          # additive offset
    gamma: float = 1.0
    blur: float = 0.0              # gaussian sigma in pixels at 64 px (scaled with size)
    noise: float = 0.02            # gaussian sigma of the acquisition noise
    # population
    p_female: float = 0.5
    age_mean: float = 60.0
    age_sd: float = 16.0
    race_mix: tuple[float, float, float, float] = (0.1, 0.2, 0.1, 0.6)  # GROUPS order
    p_other_race: float = 0.03     # "OTHER"/"UNKNOWN" subjects (excluded by the paper's rules)
    prevalence: tuple[tuple[str, float], ...] = (
        ("Cardiomegaly", 0.20), ("Pleural Effusion", 0.20), ("Pneumothorax", 0.10),
        ("Consolidation", 0.14), ("Edema", 0.14), ("Atelectasis", 0.18),
        ("Support Devices", 0.10))
    p_normal: float = 0.35         # studies forced to No Finding
    p_non_pa: float = 0.08         # AP (portable) frontal studies (kept, excluded by --views PA)
    p_lateral: float = 0.25        # studies that also get a LATERAL image

    def prevalence_of(self, finding: str) -> float:
        return dict(self.prevalence)[finding]


SITES: dict[str, Site] = {
    # In-distribution: a large academic hospital, mostly White patients.
    "mimic": Site("mimic", "mimic", contrast=1.0, exposure=0.0, gamma=1.0, blur=0.3, noise=0.02,
                  p_female=0.52, age_mean=60, age_sd=17,
                  race_mix=(0.07, 0.20, 0.10, 0.63)),
    # Out-of-distribution: another scanner fleet (flatter, brighter, noisier, blurrier) and an
    # older population with more Asian and Hispanic patients.
    "chexpert": Site("chexpert", "chexpert", contrast=0.8, exposure=0.06, gamma=0.85, blur=0.7,
                     noise=0.035, p_female=0.42, age_mean=63, age_sd=15,
                     race_mix=(0.22, 0.07, 0.18, 0.53), p_other_race=0.0,
                     prevalence=(("Cardiomegaly", 0.16), ("Pleural Effusion", 0.28),
                                 ("Pneumothorax", 0.12), ("Consolidation", 0.10),
                                 ("Edema", 0.20), ("Atelectasis", 0.22),
                                 ("Support Devices", 0.18)),
                     p_normal=0.3, p_non_pa=0.1),
    # Out-of-distribution, NIH layout: sharper, higher-contrast, less noisy scanners; younger
    # outpatients. The dataset records no race (the world still draws its markers).
    "nih": Site("nih", "nih", contrast=1.15, exposure=-0.03, gamma=1.05, blur=0.0, noise=0.015,
                p_female=0.44, age_mean=50, age_sd=16, race_mix=(0.10, 0.25, 0.10, 0.55),
                p_other_race=0.0,
                prevalence=(("Cardiomegaly", 0.14), ("Pleural Effusion", 0.22),
                            ("Pneumothorax", 0.14), ("Consolidation", 0.12),
                            ("Edema", 0.10), ("Atelectasis", 0.22), ("Support Devices", 0.06)),
                p_normal=0.45, p_non_pa=0.2, p_lateral=0.0),
}


def get_site(name: str) -> Site:
    if name not in SITES:
        raise KeyError(f"unknown phantom site {name!r}; known: {sorted(SITES)}")
    return SITES[name]
